//! Token adapters: how many tokens each layer adds or merges, and the hook points where they do.
//!
//! The generic Transformer calls an adapter at two points inside every block (OTAS, SPEC §4):
//! - [`TokenAdapter::before_attention`]: at the block's input, before the attention norm, where
//!   prompt tokens are prepended (gamma > 0, VPT-deep style);
//! - [`TokenAdapter::before_mlp`]: after the attention residual and before the MLP, with the
//!   attention keys `[batch, heads, tokens, head_dim]`, where ToMe merges tokens (gamma < 0).
//!
//! Contract: an adapter returns hidden states of the same batch size and hidden size; it keeps
//! `hidden.protected` leading tokens in place; if it changes the token count it also returns
//! `mask` and `sizes` of the new length (or `None`). Every request of a batch gets the same
//! gamma.

use std::fmt::Debug;

use crate::model::Hidden;
use crate::{Backend, Result};

/// Changes the tokens inside each block.
///
/// An adapter that drops the last token of every input before block 0's MLP (a stand-in for a
/// real merge; ToMe in `collab_policies::token` merges by similarity):
///
/// ```
/// use collab_backends::reference::ReferenceBackend;
/// use collab_core::model::Hidden;
/// use collab_core::token::TokenAdapter;
/// use collab_core::{Backend, Result};
///
/// #[derive(Debug)]
/// struct DropLast;
///
/// impl<B: Backend> TokenAdapter<B> for DropLast {
///     fn name(&self) -> String {
///         "drop-last".into()
///     }
///     fn gamma(&self, layer: usize) -> i32 {
///         if layer == 0 { -1 } else { 0 }
///     }
///     fn before_mlp(&self, be: &B, layer: usize, h: Hidden<B>, _keys: &B::Tensor) -> Result<Hidden<B>> {
///         if layer != 0 {
///             return Ok(h);
///         }
///         let tokens = be.dims(&h.x)[1];
///         let protected = h.protected;
///         Ok(Hidden::new(be.narrow(&h.x, 1, 0, tokens - 1)?, protected))
///     }
/// }
///
/// let be = ReferenceBackend::new();
/// let h = Hidden::new(be.zeros(&[1, 4, 2])?, 1);
/// let keys = be.zeros(&[1, 1, 4, 2])?;
/// let out = DropLast.before_mlp(&be, 0, h, &keys)?;
/// assert_eq!(be.dims(&out.x), vec![1, 3, 2]);
/// assert_eq!(TokenAdapter::<ReferenceBackend>::gamma(&DropLast, 0), -1);
/// # Ok::<(), collab_core::Error>(())
/// ```
pub trait TokenAdapter<B: Backend>: Debug + Send + Sync {
    /// A short name for reports.
    fn name(&self) -> String;

    /// Token change at block `layer` (0-based): `> 0` adds that many tokens, `< 0` merges that
    /// many away, `0` leaves the count alone. Schedulers and cost models read this.
    fn gamma(&self, layer: usize) -> i32;

    /// Called at the start of block `layer`, before the attention norm.
    ///
    /// # Errors
    /// Backend errors, or a shape error if `hidden` does not fit the adapter.
    fn before_attention(&self, backend: &B, layer: usize, hidden: Hidden<B>) -> Result<Hidden<B>> {
        let _ = (backend, layer);
        Ok(hidden)
    }

    /// Called after the attention residual and before the MLP of block `layer`, with that
    /// block's attention keys `[batch, heads, tokens, head_dim]`.
    ///
    /// # Errors
    /// Backend errors, or a shape error if `hidden` does not fit the adapter.
    fn before_mlp(
        &self,
        backend: &B,
        layer: usize,
        hidden: Hidden<B>,
        keys: &B::Tensor,
    ) -> Result<Hidden<B>> {
        let _ = (backend, layer, keys);
        Ok(hidden)
    }
}

/// The adapter that changes nothing (gamma = 0 everywhere).
#[derive(Clone, Copy, Debug, Default)]
pub struct IdentityAdapter;

impl<B: Backend> TokenAdapter<B> for IdentityAdapter {
    fn name(&self) -> String {
        "identity".into()
    }

    fn gamma(&self, _layer: usize) -> i32 {
        0
    }
}
