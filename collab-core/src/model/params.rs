//! Parameter groups shared by the model's parts: linear layers and layer norms.

use super::weights::{Init, WeightSource};
use crate::{Backend, Result};

/// Standard deviation for seeded random weights (timm's truncated-normal init uses 0.02).
pub(crate) const INIT_STD: f32 = 0.02;

/// A linear layer `y = x w^T + b`, `w` stored `[out, in]` as in PyTorch checkpoints.
#[derive(Clone, Debug)]
pub struct Linear<B: Backend> {
    /// Weight `[out, in]`.
    pub w: B::Tensor,
    /// Bias `[out]`.
    pub b: Option<B::Tensor>,
}

impl<B: Backend> Linear<B> {
    /// Loads `{prefix}.weight` `[out, in]` and `{prefix}.bias` `[out]`.
    pub(crate) fn load(
        backend: &B,
        src: &dyn WeightSource,
        prefix: &str,
        inp: usize,
        out: usize,
    ) -> Result<Self> {
        let w = src.tensor(
            &format!("{prefix}.weight"),
            &[out, inp],
            Init::Normal(INIT_STD),
        )?;
        let b = src.tensor(&format!("{prefix}.bias"), &[out], Init::Zeros)?;
        Ok(Self {
            w: backend.linear_weight(w, &[out, inp])?,
            b: Some(backend.from_vec(b, &[out])?),
        })
    }

    /// Applies the layer to `x [.., in]`.
    ///
    /// # Errors
    /// Backend errors (shape mismatch).
    pub fn forward(&self, backend: &B, x: &B::Tensor) -> Result<B::Tensor> {
        backend.linear(x, &self.w, self.b.as_ref())
    }

    /// Applies the layer to `x [.., in]`, then GELU ([`Backend::linear_gelu_erf`]).
    ///
    /// # Errors
    /// Backend errors (shape mismatch).
    pub fn forward_gelu_erf(&self, backend: &B, x: &B::Tensor) -> Result<B::Tensor> {
        backend.linear_gelu_erf(x, &self.w, self.b.as_ref())
    }
}

/// Layer normalisation over the last dimension.
#[derive(Clone, Debug)]
pub struct LayerNorm<B: Backend> {
    /// Scale.
    pub gamma: B::Tensor,
    /// Shift.
    pub beta: B::Tensor,
    /// Epsilon inside the square root.
    pub eps: f32,
}

impl<B: Backend> LayerNorm<B> {
    /// Loads `{prefix}.weight` and `{prefix}.bias`, both `[dim]`.
    pub(crate) fn load(
        backend: &B,
        src: &dyn WeightSource,
        prefix: &str,
        dim: usize,
        eps: f32,
    ) -> Result<Self> {
        let g = src.tensor(&format!("{prefix}.weight"), &[dim], Init::Ones)?;
        let b = src.tensor(&format!("{prefix}.bias"), &[dim], Init::Zeros)?;
        Ok(Self {
            gamma: backend.from_vec(g, &[dim])?,
            beta: backend.from_vec(b, &[dim])?,
            eps,
        })
    }

    /// Normalises `x [.., dim]`.
    ///
    /// # Errors
    /// Backend errors (shape mismatch).
    pub fn forward(&self, backend: &B, x: &B::Tensor) -> Result<B::Tensor> {
        backend.layer_norm(x, &self.gamma, &self.beta, self.eps)
    }
}
