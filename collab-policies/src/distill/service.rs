//! The built-in [`Personaliser`]: what the cloud runs when a device asks over the network for
//! a student of its own (SPEC §6).

use candle_core::Tensor;
use collab_core::distill::{Distiller, Personaliser, Upload};
use collab_core::model::Transformer;
use collab_core::{Backend, Error, Result};

use super::train::distil;
use crate::token::tasks::LabelledImages;
use crate::train::{TrainConfig, TrainableModel};

/// Selects public samples from a device's upload with a [`Distiller`], distils a copy of the
/// base student (the AllDistill one) on them towards the teacher's features, and answers its
/// checkpoint. The base student never changes; each device gets its own copy.
pub struct SelectiveDistillation<B: Backend<Tensor = Tensor>> {
    distiller: Box<dyn Distiller>,
    base: Transformer<B>,
    public: LabelledImages,
    targets: Vec<Vec<f32>>,
    public_probs: Vec<Vec<f32>>,
    cfg: TrainConfig,
}

impl<B: Backend<Tensor = Tensor>> std::fmt::Debug for SelectiveDistillation<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SelectiveDistillation")
            .field("distiller", &self.distiller.name())
            .field("public", &self.public.len())
            .field("cfg", &self.cfg)
            .finish_non_exhaustive()
    }
}

impl<B: Backend<Tensor = Tensor>> SelectiveDistillation<B> {
    /// The service over the cloud's public samples: `public` as the student sees them, the
    /// teacher's feature vector `targets[i]` and class probabilities `public_probs[i]` of
    /// sample `i`; `base` on a backend that trains (`CandleBackend::differentiable()`).
    ///
    /// # Errors
    /// [`Error::InvalidInput`] for no public samples or lists of unequal lengths; a
    /// configuration that cannot train.
    pub fn new(
        distiller: Box<dyn Distiller>,
        base: Transformer<B>,
        public: LabelledImages,
        targets: Vec<Vec<f32>>,
        public_probs: Vec<Vec<f32>>,
        cfg: TrainConfig,
    ) -> Result<Self> {
        cfg.check()?;
        if public.is_empty() || targets.len() != public.len() || public_probs.len() != public.len()
        {
            return Err(Error::InvalidInput(format!(
                "{} public samples with {} targets and {} probability vectors",
                public.len(),
                targets.len(),
                public_probs.len()
            )));
        }
        Ok(Self {
            distiller,
            base,
            public,
            targets,
            public_probs,
            cfg,
        })
    }
}

impl<B: Backend<Tensor = Tensor>> Personaliser for SelectiveDistillation<B>
where
    Transformer<B>: Send + Sync,
{
    fn name(&self) -> String {
        format!("selective-distillation({})", self.distiller.name())
    }

    fn personalise(&self, upload: &Upload) -> Result<Vec<u8>> {
        upload.check()?;
        let chosen = self
            .distiller
            .select(upload, &self.public_probs, self.cfg.seed)?;
        if chosen.is_empty() {
            return Err(Error::InvalidInput(format!(
                "`{}` selected no public samples for this upload",
                self.distiller.name()
            )));
        }
        let student = TrainableModel::new(self.base.clone())?;
        distil(
            &student,
            &self.public,
            &self.targets,
            &chosen,
            &self.cfg,
            "personalise",
        )?;
        student.model().to_safetensors_bytes()
    }
}
