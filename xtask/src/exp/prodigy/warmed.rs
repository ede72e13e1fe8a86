//! The models of `exp prodigy` for one task: the task model ("Unwarmed": a linear probe, then
//! every parameter fine-tuned without merging) and the models warmed up from it at a merging
//! number, each trained once and saved as a safetensors checkpoint with timm's tensor names
//! beside a JSON sidecar of the settings that made it and the seconds it took. With `--reuse`
//! a checkpoint whose sidecar matches the run's settings is loaded instead of trained.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, Result};
use collab_backends::candle::CandleBackend;
use collab_core::Backend;
use collab_core::model::{ModelConfig, Transformer};
use collab_policies::prodigy::serving::{ModelSource, WarmedRepository};
use collab_policies::prodigy::warmup::{warm_up, with_task_head};
use collab_policies::token::tasks::LabelledImages;
use collab_policies::token::train::train_prompts;
use collab_policies::train::{TrainConfig, TrainableModel};
use serde::{Deserialize, Serialize};

/// The serving backend (fast fused kernels) and the training one (every primitive
/// backpropagates).
pub(crate) type Be = CandleBackend;

/// What a checkpoint's sidecar records.
#[derive(Debug, Serialize, Deserialize)]
struct Sidecar {
    settings: String,
    seconds: f64,
    losses: Vec<f64>,
}

/// The training settings of one task's models.
#[derive(Clone, Debug)]
pub(crate) struct Settings {
    pub(crate) task: String,
    /// Warm-up fine-tuning (epochs, batch, lr, seed).
    pub(crate) warm: TrainConfig,
    /// The task model's fine-tuning at r = 0.
    pub(crate) task_epochs: usize,
    /// The linear probe's epochs (lr 3e-2, as `exp token-train`).
    pub(crate) head_epochs: usize,
    pub(crate) train_examples: usize,
}

impl Settings {
    fn key(&self, source: ModelSource) -> String {
        let w = &self.warm;
        let task = format!(
            "task={} train={} head_epochs={} task_epochs={} batch={} lr={} seed={}",
            self.task,
            self.train_examples,
            self.head_epochs,
            self.task_epochs,
            w.batch,
            w.lr,
            w.seed
        );
        match source {
            ModelSource::Unwarmed => task,
            ModelSource::Warmed { r } => format!("{task} | warm r={r} epochs={}", w.epochs),
            // Ensembles are averaged in the run from the warmed models, never reused.
            ModelSource::Ensemble { r } => format!("{task} | ensemble r={r}"),
        }
    }
}

/// One task's checkpoints under `<models>/prodigy/<task>/`.
#[derive(Debug)]
pub(crate) struct Store {
    pub(crate) dir: PathBuf,
    pub(crate) settings: Settings,
    reuse: bool,
    /// The task model's config (its classifier has the task's classes).
    config: Option<ModelConfig>,
}

impl Store {
    pub(crate) fn new(settings: Settings, reuse: bool) -> Result<Self> {
        let dir = collab_core::fixtures::models_dir()
            .join("prodigy")
            .join(&settings.task);
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        Ok(Self {
            dir,
            settings,
            reuse,
            config: None,
        })
    }

    pub(crate) fn path(&self, source: ModelSource) -> PathBuf {
        WarmedRepository::path_of(&self.dir, source)
    }

    fn sidecar_path(&self, source: ModelSource) -> PathBuf {
        self.path(source).with_extension("json")
    }

    /// The seconds a reusable checkpoint of `source` took, if there is one.
    fn cached(&self, source: ModelSource) -> Option<f64> {
        if !self.reuse || !self.path(source).exists() {
            return None;
        }
        let text = std::fs::read_to_string(self.sidecar_path(source)).ok()?;
        let s: Sidecar = serde_json::from_str(&text).ok()?;
        (s.settings == self.settings.key(source)).then_some(s.seconds)
    }

    /// Saves `model` as `source`'s checkpoint with its sidecar.
    pub(crate) fn save(
        &self,
        source: ModelSource,
        model: &Transformer<Be>,
        seconds: f64,
        losses: Vec<f64>,
    ) -> Result<()> {
        model.save_safetensors(&self.path(source))?;
        let side = Sidecar {
            settings: self.settings.key(source),
            seconds,
            losses,
        };
        std::fs::write(
            self.sidecar_path(source),
            serde_json::to_string_pretty(&side)?,
        )?;
        Ok(())
    }

    /// `source`'s checkpoint on `backend`.
    pub(crate) fn load(&self, backend: Be, source: ModelSource) -> Result<Transformer<Be>> {
        let config = self.config.clone().context("the task model comes first")?;
        Transformer::from_safetensors(backend, config, &self.path(source))
            .with_context(|| format!("loading {}", self.path(source).display()))
    }

    /// The task model (trained, or reused): a linear probe on the frozen checkpoint's class
    /// token, then every parameter fine-tuned at r = 0 for `task_epochs`. Returns the seconds
    /// it took.
    pub(crate) fn task_model(&mut self, train: &LabelledImages) -> Result<f64> {
        let source = ModelSource::Unwarmed;
        let base = collab_core::fixtures::deit_tiny(Be::differentiable())?;
        let ModelConfig::Vit(mut v) = base.config().clone() else {
            anyhow::bail!("PRODIGY warms up a ViT");
        };
        v.num_classes = train.classes;
        self.config = Some(ModelConfig::Vit(v));
        if let Some(s) = self.cached(source) {
            println!("{}: task model reused ({s:.0} s)", self.settings.task);
            return Ok(s);
        }
        let start = Instant::now();
        let probe = TrainConfig {
            epochs: self.settings.head_epochs,
            batch: 16,
            lr: 3e-2,
            weight_decay: 1e-4,
            seed: self.settings.warm.seed,
            progress: true,
        };
        let (entry, _) = train_prompts(&base, &self.settings.task, train, 0, None, &probe)?;
        let be = base.backend().clone();
        let weight = be.to_vec(&entry.fc.w)?;
        let bias = match &entry.fc.b {
            Some(b) => be.to_vec(b)?,
            None => vec![0.0; train.classes],
        };
        let model = with_task_head(&base, weight, bias)?;
        let trainable = TrainableModel::new(model)?;
        let cfg = TrainConfig {
            epochs: self.settings.task_epochs,
            ..self.settings.warm.clone()
        };
        let report = warm_up(
            &trainable,
            train,
            0,
            &cfg,
            &format!("{} task", self.settings.task),
        )?;
        let seconds = start.elapsed().as_secs_f64();
        let model = trainable.snapshot(Be::cpu())?;
        self.save(source, &model, seconds, report.losses)?;
        Ok(seconds)
    }

    /// A model warmed up at `r` from the task model (trained, or reused); its seconds.
    pub(crate) fn warmed(&self, train: &LabelledImages, r: usize) -> Result<f64> {
        let source = ModelSource::Warmed { r };
        if let Some(s) = self.cached(source) {
            return Ok(s);
        }
        let trainable =
            TrainableModel::new(self.load(Be::differentiable(), ModelSource::Unwarmed)?)?;
        let label = format!("{} warm", self.settings.task);
        let report = warm_up(&trainable, train, r, &self.settings.warm, &label)?;
        let model = trainable.snapshot(Be::cpu())?;
        self.save(source, &model, report.seconds, report.losses)?;
        Ok(report.seconds)
    }

    /// Seconds per training image of a warm-up at `r`, timed over `steps` optimisation steps
    /// from the task model (nothing is saved).
    pub(crate) fn probe_seconds_per_image(
        &self,
        train: &LabelledImages,
        r: usize,
        steps: usize,
    ) -> Result<f64> {
        let n = (steps * self.settings.warm.batch).min(train.len()).max(1);
        let subset = train.subset(&(0..n).collect::<Vec<_>>());
        let trainable =
            TrainableModel::new(self.load(Be::differentiable(), ModelSource::Unwarmed)?)?;
        let cfg = TrainConfig {
            epochs: 1,
            progress: false,
            ..self.settings.warm.clone()
        };
        let report = warm_up(&trainable, &subset, r, &cfg, "probe")?;
        Ok(report.seconds / n as f64)
    }
}
