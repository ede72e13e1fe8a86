//! What crosses the network at a split point, and where to split (SPEC §1).
//!
//! - [`ActivationCodec`]: encodes one request's activation (`tokens x features` floats) into
//!   self-describing bytes and decodes them on the other side. Shape, rank, scales and the
//!   identity of any shared basis travel inside the bytes, so a decoder never guesses.
//! - [`CodecId`]: which codec, with its parameter: a typed value from the device's choice to
//!   the wire to the server's codec registry (never re-parsed from a string on the way).
//! - [`SplitStrategy`]: given the current network and server conditions, picks the split
//!   point and the codec setting a device uses for its next requests.
//!
//! Implementations live in `collab-policies` (`svd/`, `codec/` and `split/`).

use std::fmt::{self, Debug};
use std::str::FromStr;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::{Error, Result};

/// The longest codec family name a [`CodecId`] may carry, in bytes (ids come off the network).
pub const MAX_FAMILY_LEN: usize = 48;

/// A codec's identity: its family (`int8`, `tpca`, a user's `top-k`, ...) and the one
/// parameter every family here has, the rank (kept coefficients; `None` where the family has
/// none).
///
/// It travels as a value from the split strategy's choice to the wire to the server's codec
/// registry. Its text form, for reports and command lines, is `family` or `family-r<rank>`
/// (`int8`, `tpca-r72`); [`FromStr`] reads it back.
///
/// Invariant (checked by [`CodecId::new`] and on deserialisation, so a peer cannot send
/// anything else): the family is 1 to [`MAX_FAMILY_LEN`] bytes of lower-case ASCII letters,
/// digits, `-`, `_` and `.`, and does not end in `-r<digits>` (that is the rank's place).
///
/// ```
/// use collab_core::split::CodecId;
/// let id: CodecId = "tpca-r72".parse()?;
/// assert_eq!((id.family(), id.rank()), ("tpca", Some(72)));
/// assert_eq!(id.to_string(), "tpca-r72");
/// assert!(CodecId::new("Bad Name", None).is_err());
/// # Ok::<(), collab_core::Error>(())
/// ```
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "RawCodecId")]
pub struct CodecId {
    family: String,
    rank: Option<u32>,
}

/// The unchecked serde form of a [`CodecId`].
#[derive(Deserialize)]
struct RawCodecId {
    family: String,
    rank: Option<u32>,
}

impl TryFrom<RawCodecId> for CodecId {
    type Error = Error;

    fn try_from(raw: RawCodecId) -> Result<Self> {
        Self::new(raw.family, raw.rank)
    }
}

impl CodecId {
    /// The family name of server-only requests in a [`SplitChoice`]: the model's raw input
    /// crosses the network.
    pub const RAW: &str = "raw";
    /// The family name of device-only choices: nothing crosses the network.
    pub const NONE: &str = "none";

    /// An id of `family` at `rank`.
    ///
    /// # Errors
    /// [`Error::Config`] naming the family if it breaks the invariant above.
    pub fn new(family: impl Into<String>, rank: Option<u32>) -> Result<Self> {
        let family = family.into();
        let allowed =
            |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'-' | b'_' | b'.');
        let bad = if family.is_empty() || family.len() > MAX_FAMILY_LEN {
            Some(format!("1 to {MAX_FAMILY_LEN} bytes"))
        } else if !family.bytes().all(allowed) {
            Some("lower-case ASCII letters, digits, '-', '_' and '.'".to_owned())
        } else if split_rank(&family).1.is_some() {
            Some("no `-r<digits>` ending (the rank is given apart)".to_owned())
        } else {
            None
        };
        match bad {
            Some(rule) => Err(Error::Config(format!(
                "codec family {:?} is not a valid name: it must be {rule}",
                family.chars().take(2 * MAX_FAMILY_LEN).collect::<String>()
            ))),
            None => Ok(Self { family, rank }),
        }
    }

    /// The id of a family with no rank.
    ///
    /// # Errors
    /// As [`CodecId::new`].
    pub fn plain(family: impl Into<String>) -> Result<Self> {
        Self::new(family, None)
    }

    /// The server-only id ([`CodecId::RAW`]).
    pub fn raw() -> Self {
        Self {
            family: Self::RAW.into(),
            rank: None,
        }
    }

    /// The device-only id ([`CodecId::NONE`]).
    pub fn none() -> Self {
        Self {
            family: Self::NONE.into(),
            rank: None,
        }
    }

    /// The family name.
    pub fn family(&self) -> &str {
        &self.family
    }

    /// The rank, if the id has one.
    pub fn rank(&self) -> Option<u32> {
        self.rank
    }

    /// The same family at `rank`.
    pub fn with_rank(&self, rank: Option<u32>) -> Self {
        Self {
            family: self.family.clone(),
            rank,
        }
    }
}

/// `name` split into a family and a trailing `-r<digits>` rank, if it has one.
fn split_rank(name: &str) -> (&str, Option<u32>) {
    match name.rsplit_once("-r") {
        Some((family, r))
            if !family.is_empty() && !r.is_empty() && r.bytes().all(|b| b.is_ascii_digit()) =>
        {
            match r.parse() {
                Ok(rank) => (family, Some(rank)),
                Err(_) => (name, None),
            }
        }
        _ => (name, None),
    }
}

impl fmt::Display for CodecId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.rank {
            Some(r) => write!(f, "{}-r{r}", self.family),
            None => f.write_str(&self.family),
        }
    }
}

impl FromStr for CodecId {
    type Err = Error;

    /// Reads `family` or `family-r<rank>`.
    ///
    /// # Errors
    /// As [`CodecId::new`].
    fn from_str(s: &str) -> Result<Self> {
        let (family, rank) = split_rank(s);
        Self::new(family, rank)
    }
}

/// One request's activation at a split point: `tokens x features` values, row-major.
#[derive(Clone, Debug, PartialEq)]
pub struct Activation {
    /// Rows (tokens).
    pub tokens: usize,
    /// Columns (hidden features).
    pub features: usize,
    /// `tokens * features` values, row-major.
    pub values: Vec<f32>,
}

impl Activation {
    /// An activation from its values.
    ///
    /// # Errors
    /// [`Error::InvalidInput`] if `values.len() != tokens * features` or a size is zero.
    pub fn new(tokens: usize, features: usize, values: Vec<f32>) -> Result<Self> {
        if tokens == 0 || features == 0 || values.len() != tokens * features {
            return Err(Error::InvalidInput(format!(
                "activation of {tokens} x {features} needs {} values, got {}",
                tokens * features,
                values.len()
            )));
        }
        Ok(Self {
            tokens,
            features,
            values,
        })
    }

    /// Bytes the activation takes as plain `f32`: the reference for the truncation ratio.
    pub fn f32_bytes(&self) -> usize {
        self.values.len() * 4
    }
}

/// The truncation ratio rho of SPEC §1, measured in bytes: the fraction of the activation's
/// `f32` bytes that the encoding removes (0.7 = 70% fewer bytes). Negative when the encoding
/// is larger than the plain activation.
pub fn truncation_ratio(encoded_bytes: usize, tokens: usize, features: usize) -> f64 {
    1.0 - encoded_bytes as f64 / (4.0 * tokens as f64 * features as f64)
}

/// Encodes and decodes one request's activation at a split point.
///
/// Contract: `decode(encode(x))` has `x`'s shape; `encode(x).len() == encoded_len(x.tokens,
/// x.features)` exactly; `decode` rejects bytes that another codec (or another basis) produced
/// with [`Error::Codec`] rather than returning garbage; [`ActivationCodec::declared_shape`]
/// reads, without decoding, the shape `decode` would return. A server asks for the declared
/// shape first and decodes only payloads whose shape its model takes, so a decoder is only ever
/// handed sizes the model bounds (the bytes themselves come off the network).
///
/// A codec that sends the first token only and decodes the rest as zeros (lossy on purpose, to
/// keep the example short); note the decoder bounding every size before it allocates:
///
/// ```
/// use collab_core::split::{Activation, ActivationCodec};
/// use collab_core::{Error, Result};
///
/// #[derive(Debug)]
/// struct FirstToken;
///
/// impl ActivationCodec for FirstToken {
///     fn name(&self) -> String {
///         "first-token".into()
///     }
///     fn encoded_len(&self, _tokens: usize, features: usize) -> usize {
///         8 + 4 * features
///     }
///     fn encode(&self, x: &Activation) -> Result<Vec<u8>> {
///         let mut out = Vec::with_capacity(self.encoded_len(x.tokens, x.features));
///         out.extend_from_slice(&(x.tokens as u32).to_le_bytes());
///         out.extend_from_slice(&(x.features as u32).to_le_bytes());
///         for v in &x.values[..x.features] {
///             out.extend_from_slice(&v.to_le_bytes());
///         }
///         Ok(out)
///     }
///     fn declared_shape(&self, bytes: &[u8]) -> Result<(usize, usize)> {
///         let bad = || Error::codec("first-token", "bad payload");
///         let word = |i: usize| -> Option<usize> {
///             Some(u32::from_le_bytes(bytes.get(i..i + 4)?.try_into().ok()?) as usize)
///         };
///         let (tokens, features) = (word(0).ok_or_else(bad)?, word(4).ok_or_else(bad)?);
///         // Bound the sizes by the bytes present.
///         if tokens == 0 || features == 0 || bytes.len() != 8 + 4 * features || tokens > 4096 {
///             return Err(bad());
///         }
///         Ok((tokens, features))
///     }
///     fn decode(&self, bytes: &[u8]) -> Result<Activation> {
///         let (tokens, features) = self.declared_shape(bytes)?;
///         let mut values = vec![0.0; tokens * features];
///         for (j, c) in bytes[8..].chunks_exact(4).enumerate() {
///             values[j] = f32::from_le_bytes([c[0], c[1], c[2], c[3]]);
///         }
///         Activation::new(tokens, features, values)
///     }
/// }
///
/// let x = Activation::new(2, 2, vec![1.0, 2.0, 3.0, 4.0])?;
/// let wire = FirstToken.encode(&x)?;
/// assert_eq!(wire.len(), FirstToken.encoded_len(2, 2));
/// assert_eq!(FirstToken.decode(&wire)?.values, vec![1.0, 2.0, 0.0, 0.0]);
/// assert_eq!(FirstToken.declared_shape(&wire)?, (2, 2));
/// assert!(FirstToken.decode(&wire[..5]).is_err());
/// # Ok::<(), collab_core::Error>(())
/// ```
pub trait ActivationCodec: Debug + Send + Sync {
    /// A short name with its setting, e.g. `svd-r24`, `pca-int8-r64`, `int8`.
    fn name(&self) -> String;

    /// The exact number of bytes `encode` produces for a `tokens x features` activation.
    fn encoded_len(&self, tokens: usize, features: usize) -> usize;

    /// Encodes `x`.
    ///
    /// # Errors
    /// [`Error::Codec`] if the codec cannot take `x` (a basis fitted for other features, or a
    /// numerical failure).
    fn encode(&self, x: &Activation) -> Result<Vec<u8>>;

    /// The `(tokens, features)` that [`ActivationCodec::decode`] returns for `bytes`, read
    /// from the payload's own header without decoding it: cheap, and without allocating in
    /// proportion to the sizes the bytes declare (they are untrusted).
    ///
    /// Contract (checked by the conformance suite): `declared_shape(&encode(x)?)` is
    /// `(x.tokens, x.features)`; whenever `decode(bytes)` succeeds, `declared_shape(bytes)`
    /// succeeds with the decoded shape. A server refuses a payload whose declared shape its
    /// model does not take before decoding it, and refuses one that decodes to another shape
    /// than it declared.
    ///
    /// # Errors
    /// [`Error::Codec`] for bytes too short to hold the header, another codec's tag, or sizes
    /// that are zero or disagree with the length.
    fn declared_shape(&self, bytes: &[u8]) -> Result<(usize, usize)>;

    /// Decodes bytes produced by [`ActivationCodec::encode`] of the same codec.
    ///
    /// # Errors
    /// [`Error::Codec`] naming what is wrong: truncated bytes, another codec's tag, a basis
    /// that does not match, sizes that disagree with the length.
    fn decode(&self, bytes: &[u8]) -> Result<Activation>;
}

/// The network and server conditions a split choice depends on.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Conditions {
    /// Uplink bandwidth, bytes per second.
    pub bandwidth: f64,
    /// Round-trip time, seconds.
    pub rtt: f64,
    /// The server's current queueing estimate, seconds.
    pub server_queue: f64,
    /// The request's latency budget, seconds.
    pub deadline: f64,
    /// The largest accuracy loss the user accepts (0.01 = one point of accuracy).
    pub max_loss: f64,
}

/// A split configuration and what it is predicted to cost.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SplitChoice {
    /// Split point k: the device runs blocks `0..k` (k = 0: server-only; k = L: device-only).
    pub split: usize,
    /// The codec and its rank ([`CodecId::raw`] for server-only, [`CodecId::none`] for
    /// device-only).
    pub codec: CodecId,
    /// The truncation ratio in bytes.
    pub rho: f64,
    /// Bytes sent to the server.
    pub bytes: usize,
    /// Predicted end-to-end latency, seconds.
    pub latency: f64,
    /// Predicted accuracy loss.
    pub loss: f64,
}

/// Picks where to split and how to encode (SPEC §1, "Split selection").
///
/// A device holds one as `Box<dyn SplitStrategy>` and asks it before every request, so a
/// strategy should answer in microseconds (cache what does not change). Behaviour around a
/// strategy (hysteresis, a fallback when nothing fits) belongs in wrappers that implement
/// this trait over another (see `collab_policies::split`), not inside one implementation.
///
/// # Contract
/// - `choose` returns `split <= L` for the model it was built for, `CodecId::raw()` exactly
///   at split 0, `CodecId::none()` exactly at split `L`, and a codec the deployment's codec
///   registry builds in between;
/// - it never panics on any finite or non-finite conditions: bad conditions are
///   [`Error::InvalidInput`];
/// - it is deterministic for equal conditions unless documented otherwise.
///
/// `collab_policies::split::conformance` checks these for any implementation.
///
/// ```
/// use collab_core::split::{CodecId, Conditions, SplitChoice, SplitStrategy};
/// use collab_core::{Error, Result};
///
/// /// Splits after block 4 with int8 activations when the uplink is slow, else sends the input.
/// #[derive(Debug)]
/// struct SlowLinkSplit;
///
/// impl SplitStrategy for SlowLinkSplit {
///     fn name(&self) -> String {
///         "slow-link-split".into()
///     }
///     fn choose(&self, c: &Conditions) -> Result<SplitChoice> {
///         if !c.bandwidth.is_finite() {
///             return Err(Error::InvalidInput("bandwidth is not finite".into()));
///         }
///         let (split, codec) = if c.bandwidth < 1e6 {
///             (4, CodecId::new("int8", None)?)
///         } else {
///             (0, CodecId::raw())
///         };
///         Ok(SplitChoice { split, codec, rho: 0.0, bytes: 0, latency: 0.0, loss: 0.0 })
///     }
/// }
///
/// let c = Conditions { bandwidth: 2e5, rtt: 0.05, server_queue: 0.0, deadline: 0.3, max_loss: 0.01 };
/// assert_eq!(SlowLinkSplit.choose(&c)?.split, 4);
/// assert!(SlowLinkSplit.choose(&Conditions { bandwidth: f64::NAN, ..c }).is_err());
/// # Ok::<(), collab_core::Error>(())
/// ```
pub trait SplitStrategy: Debug + Send + Sync {
    /// A name for reports.
    fn name(&self) -> String;

    /// The configuration for the given conditions.
    ///
    /// # Errors
    /// [`Error::NoPrediction`] if no configuration meets the constraints (the caller may
    /// relax them or reject the request); [`Error::InvalidInput`] for unusable conditions;
    /// cost-model errors.
    fn choose(&self, conditions: &Conditions) -> Result<SplitChoice>;
}

impl<S: SplitStrategy + ?Sized> SplitStrategy for Box<S> {
    fn name(&self) -> String {
        (**self).name()
    }

    fn choose(&self, conditions: &Conditions) -> Result<SplitChoice> {
        (**self).choose(conditions)
    }
}

impl<S: SplitStrategy + ?Sized> SplitStrategy for Arc<S> {
    fn name(&self) -> String {
        (**self).name()
    }

    fn choose(&self, conditions: &Conditions) -> Result<SplitChoice> {
        (**self).choose(conditions)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codec_id_text_round_trips() {
        for (text, family, rank) in [
            ("int8", "int8", None),
            ("int8-r192", "int8", Some(192)),
            ("svd-int8-r55", "svd-int8", Some(55)),
            ("top-k", "top-k", None),
            ("top-k-r9", "top-k", Some(9)),
        ] {
            let id: CodecId = text.parse().expect(text);
            assert_eq!((id.family(), id.rank()), (family, rank), "{text}");
            assert_eq!(id.to_string(), text);
        }
    }

    #[test]
    fn codec_id_refuses_bad_families() {
        for bad in [
            "",
            "Int8",
            "a b",
            "x\u{0}",
            "svd-r3",
            &"a".repeat(MAX_FAMILY_LEN + 1),
        ] {
            let e = CodecId::new(bad, None).expect_err(bad);
            assert!(e.to_string().contains("not a valid name"), "{e}");
        }
    }

    #[test]
    fn codec_id_deserialisation_checks_the_family() {
        let ok: CodecId = serde_json::from_str(r#"{"family":"tpca","rank":72}"#).expect("ok");
        assert_eq!(ok.to_string(), "tpca-r72");
        let bad = serde_json::from_str::<CodecId>(r#"{"family":"../etc","rank":null}"#);
        assert!(bad.is_err());
    }
}
