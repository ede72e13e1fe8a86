//! What crosses the network at a split point, and where to split (SPEC §1).
//!
//! - [`ActivationCodec`]: encodes one request's activation (`tokens x features` floats) into
//!   self-describing bytes and decodes them on the other side. Shape, rank, scales and the
//!   identity of any shared basis travel inside the bytes, so a decoder never guesses.
//! - [`SplitStrategy`]: given the current network and server conditions, picks the split
//!   point and the codec setting a device uses for its next requests.
//!
//! Implementations live in `collab-policies` (`svd/` and `split/`).

use std::fmt::Debug;

use serde::{Deserialize, Serialize};

use crate::{Error, Result};

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
/// with [`Error::Codec`] rather than returning garbage.
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
    /// The codec setting's name (`raw` for server-only, `none` for device-only).
    pub codec: String,
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
pub trait SplitStrategy: Debug + Send + Sync {
    /// A name for reports.
    fn name(&self) -> String;

    /// The configuration for the given conditions.
    ///
    /// # Errors
    /// [`Error::NoPrediction`] if no configuration meets the constraints (the caller may
    /// relax them or reject the request); cost-model errors.
    fn choose(&self, conditions: &Conditions) -> Result<SplitChoice>;
}
