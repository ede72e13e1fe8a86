//! Codecs by identity: the registry that turns a [`CodecId`] into an [`ActivationCodec`], on
//! the device (to encode) and on the server (to decode), and that a user extends with their
//! own codec families.
//!
//! - [`CodecFactory`]: builds the codecs of one or more families from an id and what both
//!   sides hold at the split ([`CodecContext`]). Registered with `typetag`, so a pipeline
//!   config names a user's factory (`codecs = [{ kind = "top-k" }]`) as it names ours;
//! - [`BuiltinCodecs`]: every family of [`crate::svd`] (`f32`, `int8`, `tpca`, `svd-int8`, ...);
//! - [`CodecRegistry`]: family name to factory; [`CodecRegistry::build`] refuses an unknown
//!   family with an error naming it and the families it knows;
//! - [`conformance`]: the suite every codec must pass, as [`codec_conformance!`].
//!
//! [`codec_conformance!`]: crate::codec_conformance

mod builtin;
pub mod conformance;
mod registry;

pub use builtin::BuiltinCodecs;
pub use registry::CodecRegistry;

use std::fmt::Debug;

use collab_core::Result;
use collab_core::split::{ActivationCodec, CodecId};

use crate::svd::SplitBases;

/// What both sides of a split hold that a codec may need, at one split point.
#[derive(Clone, Copy, Debug, Default)]
pub struct CodecContext<'a> {
    /// The split point `k` (the device ran blocks `0..k`).
    pub split: usize,
    /// The calibrated bases both sides loaded, if any (see [`SplitBases`]).
    pub bases: Option<&'a SplitBases>,
}

/// Builds the codecs of some families: what a user implements to add a codec to collab.
///
/// `build` is called on the device with the id its split strategy chose (to encode) and on the
/// server with the id a request carries (to decode), so it must take any id of its families
/// that the other side may send: the server's id comes off the network. A codec whose payload
/// carries its own rank decodes any rank with one decoder.
///
/// ```
/// use collab_core::split::{Activation, ActivationCodec, CodecId};
/// use collab_policies::codec::{CodecContext, CodecFactory, CodecRegistry};
/// use serde::{Deserialize, Serialize};
///
/// /// Sends the activation as little-endian f32, unchanged.
/// #[derive(Debug)]
/// struct Verbatim;
///
/// impl ActivationCodec for Verbatim {
///     fn name(&self) -> String { "verbatim".into() }
///     fn encoded_len(&self, tokens: usize, features: usize) -> usize { 8 + 4 * tokens * features }
///     fn encode(&self, x: &Activation) -> collab_core::Result<Vec<u8>> {
///         let mut out = Vec::with_capacity(self.encoded_len(x.tokens, x.features));
///         out.extend((x.tokens as u32).to_le_bytes());
///         out.extend((x.features as u32).to_le_bytes());
///         out.extend(x.values.iter().flat_map(|v| v.to_le_bytes()));
///         Ok(out)
///     }
///     fn declared_shape(&self, b: &[u8]) -> collab_core::Result<(usize, usize)> {
///         let bad = || collab_core::Error::codec("verbatim", "damaged payload");
///         let word = |i: usize| -> collab_core::Result<usize> {
///             let w = b.get(i..i + 4).ok_or_else(bad)?;
///             Ok(u32::from_le_bytes([w[0], w[1], w[2], w[3]]) as usize)
///         };
///         let (n, d) = (word(0)?, word(4)?);
///         // Bound the sizes by the bytes actually present.
///         if n == 0 || n.checked_mul(d).and_then(|v| v.checked_mul(4)) != Some(b.len() - 8) {
///             return Err(bad());
///         }
///         Ok((n, d))
///     }
///     fn decode(&self, b: &[u8]) -> collab_core::Result<Activation> {
///         let (n, d) = self.declared_shape(b)?;
///         let values = b[8..].chunks_exact(4)
///             .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect();
///         Activation::new(n, d, values)
///     }
/// }
///
/// #[derive(Debug, Serialize, Deserialize)]
/// struct VerbatimCodecs {}
///
/// #[typetag::serde(name = "verbatim")]
/// impl CodecFactory for VerbatimCodecs {
///     fn families(&self) -> Vec<String> { vec!["verbatim".into()] }
///     fn build(&self, _: &CodecId, _: &CodecContext<'_>)
///         -> collab_core::Result<Box<dyn ActivationCodec>> {
///         Ok(Box::new(Verbatim))
///     }
/// }
///
/// let registry = CodecRegistry::builtin().with(VerbatimCodecs {})?;
/// let codec = registry.build(&"verbatim".parse()?, &CodecContext::default())?;
/// let x = Activation::new(2, 3, vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.0])?;
/// assert_eq!(codec.decode(&codec.encode(&x)?)?, x);
/// # Ok::<(), collab_core::Error>(())
/// ```
#[typetag::serde(tag = "kind")]
pub trait CodecFactory: Debug + Send + Sync {
    /// The family names this factory builds (each [`CodecId::family`] it takes).
    fn families(&self) -> Vec<String>;

    /// The codec `id` names, with what the sides hold at `context.split`.
    ///
    /// # Errors
    /// [`collab_core::Error::Config`] naming what is missing or wrong: a rank the family needs
    /// and the id lacks, a shared basis the context does not hold at the split.
    fn build(&self, id: &CodecId, context: &CodecContext<'_>) -> Result<Box<dyn ActivationCodec>>;
}
