//! The hidden states that flow between blocks, and across the network at a split point.

use crate::{Backend, Error, Result};

/// Hidden states of a batch: `x` is `[batch, tokens, hidden]`.
///
/// Alongside the values it carries what later blocks need to treat tokens correctly:
/// - `mask` `[batch, tokens]`: 1 for real tokens, 0 for padding (BERT batches of unequal
///   lengths); `None` means every token is real;
/// - `sizes` `[batch, tokens]`: how many input tokens each token stands for after merging
///   (ToMe); `None` means all ones. Attention adds `log(size)` to each key's logit
///   (proportional attention) and pooling weights tokens by size;
/// - `protected`: how many leading tokens a token adapter must keep (the class token).
#[derive(Clone, Debug)]
pub struct Hidden<B: Backend> {
    /// Values `[batch, tokens, hidden]`.
    pub x: B::Tensor,
    /// Padding mask `[batch, tokens]`, or `None` when no token is padding.
    pub mask: Option<B::Tensor>,
    /// Token sizes `[batch, tokens]`, or `None` when every token has size 1.
    pub sizes: Option<B::Tensor>,
    /// Leading tokens that adapters must not remove or merge.
    pub protected: usize,
}

impl<B: Backend> Hidden<B> {
    /// Plain hidden states with no padding and unit sizes.
    pub fn new(x: B::Tensor, protected: usize) -> Self {
        Self {
            x,
            mask: None,
            sizes: None,
            protected,
        }
    }

    /// `[batch, tokens, hidden]`.
    ///
    /// # Errors
    /// [`Error::Shape`] if `x` is not 3-D.
    pub fn dims3(&self, backend: &B) -> Result<(usize, usize, usize)> {
        match backend.dims(&self.x)[..] {
            [b, n, d] => Ok((b, n, d)),
            ref other => Err(Error::shape(
                "hidden",
                format!("hidden states must be [batch, tokens, hidden], got {other:?}"),
            )),
        }
    }

    /// The additive attention bias `[batch, 1, 1, tokens]` for the keys: `-1e9` on padding,
    /// plus `log(size)` when tokens have been merged. `None` when neither applies.
    ///
    /// # Errors
    /// Backend errors.
    pub fn attention_bias(&self, backend: &B) -> Result<Option<B::Tensor>> {
        let (b, n, _) = self.dims3(backend)?;
        let mask_bias = match &self.mask {
            Some(m) => Some(backend.affine(m, 1e9, -1e9)?),
            None => None,
        };
        let size_bias = match &self.sizes {
            Some(s) => Some(backend.log(s)?),
            None => None,
        };
        let bias = match (mask_bias, size_bias) {
            (Some(m), Some(s)) => backend.add(&m, &s)?,
            (Some(m), None) => m,
            (None, Some(s)) => s,
            (None, None) => return Ok(None),
        };
        Ok(Some(backend.reshape(&bias, &[b, 1, 1, n])?))
    }

    /// The per-token pooling weight `[batch, tokens, 1]`: mask times size, or `None` if all
    /// tokens weigh one.
    ///
    /// # Errors
    /// Backend errors.
    pub fn token_weights(&self, backend: &B) -> Result<Option<B::Tensor>> {
        let (b, n, _) = self.dims3(backend)?;
        let w = match (&self.mask, &self.sizes) {
            (Some(m), Some(s)) => backend.mul(m, s)?,
            (Some(m), None) => m.clone(),
            (None, Some(s)) => s.clone(),
            (None, None) => return Ok(None),
        };
        Ok(Some(backend.reshape(&w, &[b, n, 1])?))
    }

    /// Bytes of the values if sent as `f32` (what would cross the network uncompressed).
    ///
    /// # Errors
    /// [`Error::Shape`] if `x` is not 3-D.
    pub fn f32_bytes(&self, backend: &B) -> Result<usize> {
        let (b, n, d) = self.dims3(backend)?;
        Ok(b * n * d * 4)
    }
}

/// Hidden states in host memory, between two backends: what one side of a split hands to the
/// other (the device's backend and the cloud's need not be the same kind).
///
/// Invariant (checked by [`Hidden::to_host`] and [`HostHidden::to_backend`]): `x` holds
/// `batch * tokens * hidden` values, and `mask` and `sizes`, when present, `batch * tokens`.
#[derive(Clone, Debug, PartialEq)]
pub struct HostHidden {
    /// `[batch, tokens, hidden]`.
    pub dims: [usize; 3],
    /// The values, row-major.
    pub x: Vec<f32>,
    /// Padding mask `[batch, tokens]`.
    pub mask: Option<Vec<f32>>,
    /// Token sizes `[batch, tokens]`.
    pub sizes: Option<Vec<f32>>,
    /// Leading tokens that adapters must not remove or merge.
    pub protected: usize,
}

impl<B: Backend> Hidden<B> {
    /// Copies the hidden states to host memory.
    ///
    /// # Errors
    /// [`Error::Shape`] if `x` is not 3-D or a mask or size tensor does not have `batch *
    /// tokens` values; backend errors.
    pub fn to_host(&self, backend: &B) -> Result<HostHidden> {
        let (b, n, d) = self.dims3(backend)?;
        let per_token = |t: &Option<B::Tensor>, what: &str| -> Result<Option<Vec<f32>>> {
            let Some(t) = t else { return Ok(None) };
            let v = backend.to_vec(t)?;
            if v.len() != b * n {
                return Err(Error::shape(
                    "hidden",
                    format!("{what} has {} values for {b} x {n} tokens", v.len()),
                ));
            }
            Ok(Some(v))
        };
        Ok(HostHidden {
            dims: [b, n, d],
            x: backend.to_vec(&self.x)?,
            mask: per_token(&self.mask, "mask")?,
            sizes: per_token(&self.sizes, "sizes")?,
            protected: self.protected,
        })
    }
}

impl HostHidden {
    /// The hidden states on `backend`.
    ///
    /// # Errors
    /// [`Error::Shape`] if a buffer's length does not match `dims`; backend errors.
    pub fn to_backend<B: Backend>(&self, backend: &B) -> Result<Hidden<B>> {
        let [b, n, _] = self.dims;
        let per_token = |v: &Option<Vec<f32>>| -> Result<Option<B::Tensor>> {
            v.as_ref()
                .map(|v| backend.from_vec(v.clone(), &[b, n]))
                .transpose()
        };
        Ok(Hidden {
            x: backend.from_vec(self.x.clone(), &self.dims)?,
            mask: per_token(&self.mask)?,
            sizes: per_token(&self.sizes)?,
            protected: self.protected,
        })
    }
}
