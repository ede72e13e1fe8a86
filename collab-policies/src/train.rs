//! What every trainer in collab shares: its hyper-parameters ([`TrainConfig`]), progress bars,
//! and [`TrainableModel`], a generic model whose every parameter is a candle [`Var`] (the
//! student of feature distillation, SPEC §6; the warm-up fine-tuning of PRODIGY, SPEC §5).
//!
//! Training runs on a backend whose primitives all backpropagate,
//! `CandleBackend::differentiable()`: the fused CPU kernels of `CandleBackend::cpu()` cut the
//! graph, which shows as parameters without a gradient ([`TrainableModel::check_gradients`]).

use candle_core::backprop::GradStore;
use candle_core::{Tensor, Var};
use collab_core::model::Transformer;
use collab_core::{Backend, Error, Result};
use indicatif::{ProgressBar, ProgressStyle};

/// Training hyper-parameters.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct TrainConfig {
    /// Passes over the training examples.
    pub epochs: usize,
    /// Examples per optimisation step.
    pub batch: usize,
    /// AdamW learning rate.
    pub lr: f64,
    /// AdamW decoupled weight decay.
    pub weight_decay: f64,
    /// Seed of the initialisation and of the per-epoch shuffles.
    pub seed: u64,
    /// Show a progress bar per epoch.
    pub progress: bool,
}

impl Default for TrainConfig {
    fn default() -> Self {
        Self {
            epochs: 5,
            batch: 16,
            lr: 5e-3,
            weight_decay: 1e-4,
            seed: 0,
            progress: false,
        }
    }
}

impl TrainConfig {
    /// Checks that the configuration can train at all.
    ///
    /// # Errors
    /// [`Error::InvalidInput`] for zero epochs or batch, or a learning rate or weight decay
    /// that is not finite and non-negative (the rate positive).
    pub fn check(&self) -> Result<()> {
        if self.epochs == 0
            || self.batch == 0
            || !self.lr.is_finite()
            || self.lr <= 0.0
            || !self.weight_decay.is_finite()
            || self.weight_decay < 0.0
        {
            return Err(Error::InvalidInput(format!(
                "training needs epochs > 0, batch > 0, lr > 0 and weight decay >= 0 \
                 (got {}, {}, {}, {})",
                self.epochs, self.batch, self.lr, self.weight_decay
            )));
        }
        Ok(())
    }

    /// AdamW's parameters from this configuration.
    pub fn adamw(&self) -> candle_nn::ParamsAdamW {
        candle_nn::ParamsAdamW {
            lr: self.lr,
            weight_decay: self.weight_decay,
            ..candle_nn::ParamsAdamW::default()
        }
    }

    /// A progress bar of `len` steps labelled `label`, hidden unless `progress` is set.
    pub fn progress_bar(&self, len: usize, label: String) -> ProgressBar {
        if !self.progress {
            return ProgressBar::hidden();
        }
        let bar = ProgressBar::new(len as u64);
        if let Ok(style) =
            ProgressStyle::with_template("{prefix} [{bar:30}] {pos}/{len} {elapsed} {msg}")
        {
            bar.set_style(style.progress_chars("=> "));
        }
        bar.set_prefix(label);
        bar
    }
}

/// Maps a candle error of a training step into collab's, naming the step.
pub(crate) fn cerr(op: &'static str) -> impl FnOnce(candle_core::Error) -> Error {
    move |e| Error::Backend {
        backend: "candle-autograd".into(),
        op,
        message: e.to_string(),
    }
}

/// A generic model whose every parameter is a [`Var`] under its checkpoint name: forwards
/// through [`model`](Self::model) build the autograd graph, an optimiser over
/// [`vars`](Self::vars) updates the model in place.
///
/// ViT models only, as [`Transformer::for_each_parameter_mut`].
#[derive(Debug)]
pub struct TrainableModel<B: Backend<Tensor = Tensor>> {
    model: Transformer<B>,
    vars: Vec<(String, Var)>,
}

impl<B: Backend<Tensor = Tensor>> TrainableModel<B> {
    /// Makes every parameter of `model` a variable (a copy of its values: the model the
    /// tensors came from, if shared, does not change while this one trains).
    ///
    /// # Errors
    /// [`Error::Config`] for a text model; candle errors.
    pub fn new(mut model: Transformer<B>) -> Result<Self> {
        let mut vars = Vec::new();
        model.for_each_parameter_mut(|name, t| {
            let v = Var::from_tensor(&t.detach()).map_err(cerr("var"))?;
            *t = v.as_tensor().clone();
            vars.push((name.to_string(), v));
            Ok(())
        })?;
        Ok(Self { model, vars })
    }

    /// The model, its parameters the variables.
    pub fn model(&self) -> &Transformer<B> {
        &self.model
    }

    /// Every variable, in load order (what an optimiser takes).
    pub fn vars(&self) -> Vec<Var> {
        self.vars.iter().map(|(_, v)| v.clone()).collect()
    }

    /// The variables with their checkpoint names.
    pub fn named_vars(&self) -> &[(String, Var)] {
        &self.vars
    }

    /// A copy of the current model whose parameters are plain tensors on `backend` (a fast
    /// serving one, or the training one for a frozen snapshot).
    ///
    /// # Errors
    /// As [`Transformer::to_backend`].
    pub fn snapshot<B2: Backend>(&self, backend: B2) -> Result<Transformer<B2>> {
        self.model.to_backend(backend)
    }

    /// Checks that a backward pass reached every parameter.
    ///
    /// # Errors
    /// [`Error::Config`] naming the first parameter without a gradient: the backend cut the
    /// graph (train on `CandleBackend::differentiable()`), or the loss does not depend on it.
    pub fn check_gradients(&self, grads: &GradStore) -> Result<()> {
        match self
            .vars
            .iter()
            .find(|(_, v)| grads.get(v.as_tensor()).is_none())
        {
            Some((name, _)) => Err(Error::Config(format!(
                "no gradient reached `{name}`: train on a backend whose primitives all \
                 backpropagate (CandleBackend::differentiable())"
            ))),
            None => Ok(()),
        }
    }
}
