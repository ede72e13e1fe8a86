//! Model heads: the ViT classifier on the class token, and BERT mean pooling.

use super::hidden::Hidden;
use super::params::{LayerNorm, Linear};
use crate::{Backend, Result};

/// ViT head: final LayerNorm, class token, linear classifier. Output `[batch, classes]`.
#[derive(Clone, Debug)]
pub struct ClassifierHead<B: Backend> {
    /// Final norm.
    pub norm: LayerNorm<B>,
    /// Classifier `[classes, d]`.
    pub fc: Linear<B>,
}

impl<B: Backend> ClassifierHead<B> {
    /// Logits `[batch, classes]` from the class token of `h`.
    ///
    /// # Errors
    /// Backend errors.
    pub fn forward(&self, backend: &B, h: &Hidden<B>) -> Result<B::Tensor> {
        let (b, _, d) = h.dims3(backend)?;
        let cls = backend.narrow(&h.x, 1, 0, 1)?;
        let cls = backend.reshape(&cls, &[b, d])?;
        let cls = self.norm.forward(backend, &cls)?;
        self.fc.forward(backend, &cls)
    }
}

/// BERT head: mean over real tokens (weighted by token size after merging), optionally
/// L2-normalised. Output `[batch, d]`.
#[derive(Clone, Copy, Debug)]
pub struct MeanPoolHead {
    /// L2-normalise the pooled vector.
    pub normalize: bool,
}

impl MeanPoolHead {
    /// The pooled (optionally normalised) embedding `[batch, d]`.
    ///
    /// # Errors
    /// Backend errors.
    pub fn forward<B: Backend>(&self, backend: &B, h: &Hidden<B>) -> Result<B::Tensor> {
        let (b, n, d) = h.dims3(backend)?;
        let pooled = match h.token_weights(backend)? {
            Some(w) => {
                let s = backend.sum_keepdim(&backend.mul(&h.x, &w)?, 1)?;
                backend.div(&s, &backend.sum_keepdim(&w, 1)?)?
            }
            None => backend.affine(&backend.sum_keepdim(&h.x, 1)?, 1.0 / n as f32, 0.0)?,
        };
        let pooled = backend.reshape(&pooled, &[b, d])?;
        if !self.normalize {
            return Ok(pooled);
        }
        let sq = backend.sum_keepdim(&backend.mul(&pooled, &pooled)?, 1)?;
        let norm = backend.affine(&backend.sqrt(&sq)?, 1.0, 1e-12)?;
        backend.div(&pooled, &norm)
    }
}
