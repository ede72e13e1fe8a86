//! Data-dependent prompt initialisation: the mean patch token entering each block.

use std::sync::Mutex;

use candle_core::Tensor;
use collab_core::model::{Hidden, Input, Transformer};
use collab_core::token::{IdentityAdapter, TokenAdapter};
use collab_core::{Backend, Error, Result};

use super::cerr;
use crate::token::prompt::{PromptAdapter, PromptSet};
use crate::token::tasks::LabelledImages;

/// Examples the means are measured on (the first of the training data).
const EXAMPLES: usize = 16;

/// Wraps an adapter and records, at each block's input, the mean over the batch of the tokens
/// after the protected ones (patch tokens and any earlier prompts), detached from the graph.
#[derive(Debug)]
struct MeanRecorder<'a, B: Backend<Tensor = Tensor>> {
    inner: &'a dyn TokenAdapter<B>,
    means: Mutex<Vec<Option<Tensor>>>,
}

impl<B: Backend<Tensor = Tensor>> TokenAdapter<B> for MeanRecorder<'_, B> {
    fn name(&self) -> String {
        format!("mean-recorder({})", self.inner.name())
    }

    fn gamma(&self, layer: usize) -> i32 {
        self.inner.gamma(layer)
    }

    fn before_attention(&self, backend: &B, layer: usize, hidden: Hidden<B>) -> Result<Hidden<B>> {
        let (_, n, _) = hidden.dims3(backend)?;
        let p = hidden.protected.min(n);
        if n > p {
            let mean = hidden
                .x
                .narrow(1, p, n - p)
                .and_then(|t| t.mean(1))
                .and_then(|t| t.mean(0))
                .map(|t| t.detach())
                .map_err(cerr("mean token"))?;
            let mut means = self
                .means
                .lock()
                .map_err(|_| Error::InvalidInput("mean recorder poisoned".into()))?;
            if let Some(slot) = means.get_mut(layer) {
                *slot = Some(mean);
            }
        }
        self.inner.before_attention(backend, layer, hidden)
    }

    fn before_mlp(
        &self,
        backend: &B,
        layer: usize,
        hidden: Hidden<B>,
        keys: &B::Tensor,
    ) -> Result<Hidden<B>> {
        self.inner.before_mlp(backend, layer, hidden, keys)
    }
}

/// The mean token `[d]` entering each block of `model` on the first examples of `data`, with
/// `inherited` prompts (if any) in place.
///
/// # Errors
/// Backend errors; [`Error::InvalidInput`] for empty data.
pub(super) fn layer_means<B: Backend<Tensor = Tensor>>(
    model: &Transformer<B>,
    data: &LabelledImages,
    inherited: Option<&PromptSet<B>>,
) -> Result<Vec<Tensor>> {
    let backend = model.backend();
    let n = data.len().min(EXAMPLES);
    if n == 0 {
        return Err(Error::InvalidInput("no training examples".into()));
    }
    let idx: Vec<usize> = (0..n).collect();
    let (images, _) = data.batch(backend, &idx)?;
    let prompts = match inherited {
        Some(set) => Some(PromptAdapter::uniform(backend, set, n)?),
        None => None,
    };
    let inner: &dyn TokenAdapter<B> = match &prompts {
        Some(p) => p,
        None => &IdentityAdapter,
    };
    let layers = model.num_blocks();
    let recorder = MeanRecorder {
        inner,
        means: Mutex::new(vec![None; layers]),
    };
    let hidden = model.embed(&Input::Images(images))?;
    model.run_blocks_with(hidden, 0..layers, &recorder)?;
    let means = recorder
        .means
        .into_inner()
        .map_err(|_| Error::InvalidInput("mean recorder poisoned".into()))?;
    means
        .into_iter()
        .enumerate()
        .map(|(l, m)| m.ok_or_else(|| Error::InvalidInput(format!("block {l} saw no tokens"))))
        .collect()
}
