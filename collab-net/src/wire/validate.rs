//! What a server checks of a request, in two steps:
//!
//! 1. [`check_request`], on the connection task, cheap and allocation-free beyond the codec
//!    it builds: the split point exists, the budget and loss limit are usable, and the codec
//!    id names a family the server's [`CodecRegistry`] builds at that split (with the bases it
//!    holds); a server-only payload has exactly the image's bytes;
//! 2. [`decode_activation`], on the compute thread: the payload decodes, to exactly the shape
//!    the model expects at that split, with finite values.
//!
//! Every failure is a [`RemoteError::Invalid`] naming the problem.

use collab_core::split::{Activation, ActivationCodec};
use collab_policies::codec::{CodecContext, CodecRegistry};
use collab_policies::svd::SplitBases;

use super::message::{InferRequest, RAW_RGB8, RemoteError};

/// What the server's model expects of a request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ModelFacts {
    /// The model id devices must announce.
    pub model_id: String,
    /// Blocks `L`.
    pub layers: usize,
    /// Tokens entering the blocks.
    pub tokens: usize,
    /// Hidden features.
    pub features: usize,
    /// Side of the square input image (server-only requests send `3 * side * side` bytes).
    pub image_side: usize,
}

/// A request's payload after [`check_request`].
#[derive(Debug)]
pub enum Checked {
    /// Server-only: interleaved 8-bit RGB pixels of the cropped image.
    Pixels(Vec<u8>),
    /// An encoded activation entering block `split`, with the codec that decodes it.
    Encoded {
        /// The decoder the registry built for the request's codec id.
        codec: Box<dyn ActivationCodec>,
        /// The payload as received.
        payload: Vec<u8>,
    },
}

/// A request's payload after validation and decoding.
#[derive(Clone, Debug, PartialEq)]
pub enum Decoded {
    /// Server-only: interleaved 8-bit RGB pixels of the cropped image.
    Pixels(Vec<u8>),
    /// The activation entering block `split`.
    Activation(Activation),
}

/// Checks `request` against `facts` and builds its decoder from `codecs`, with `bases` for
/// the calibrated codecs (`cpca`, `mpca`, `tpca`, ...; see [`SplitBases`]). Takes the request
/// to keep its payload without a copy.
///
/// # Errors
/// [`RemoteError::Invalid`] naming what is wrong: a split past the model, a zero budget, a
/// loss limit that is not a finite non-negative number, a server-only request that is not
/// `rgb8` pixels of the model's image size, a codec id whose family the registry does not
/// know (the message names it and the known ones), or one that needs a shared basis this
/// server does not hold at that split.
pub fn check_request(
    facts: &ModelFacts,
    codecs: &CodecRegistry,
    bases: Option<&SplitBases>,
    request: InferRequest,
) -> Result<Checked, RemoteError> {
    let invalid = |m: String| Err(RemoteError::Invalid(m));
    let split = request.split as usize;
    if split > facts.layers {
        return invalid(format!(
            "split {split} is past the model's {} blocks (valid: 0..={})",
            facts.layers, facts.layers
        ));
    }
    if request.budget_ms == 0 {
        return invalid("budget_ms is 0: no time to answer".into());
    }
    if !request.max_loss.is_finite() || request.max_loss < 0.0 {
        return invalid(format!(
            "max_loss {} must be a finite number >= 0",
            request.max_loss
        ));
    }
    if split == 0 {
        if request.codec.family() != RAW_RGB8 {
            return invalid(format!(
                "split 0 (server-only) takes codec `{RAW_RGB8}`, got `{}`",
                request.codec
            ));
        }
        let want = 3 * facts.image_side * facts.image_side;
        if request.payload.len() != want {
            return invalid(format!(
                "`{RAW_RGB8}` payload of {} bytes; a {side} x {side} RGB image is {want}",
                request.payload.len(),
                side = facts.image_side
            ));
        }
        return Ok(Checked::Pixels(request.payload));
    }
    let context = CodecContext { split, bases };
    let codec = codecs
        .build(&request.codec, &context)
        .map_err(|e| RemoteError::Invalid(format!("split {split}: {e}")))?;
    Ok(Checked::Encoded {
        codec,
        payload: request.payload,
    })
}

/// Decodes a checked payload entering block `split` and checks its shape against `facts`.
///
/// # Errors
/// [`RemoteError::Invalid`] naming what is wrong: a payload that does not decode (one encoded
/// with other bases than the server's among them), a decoded shape other than `tokens x
/// features`, or non-finite values.
pub fn decode_activation(
    facts: &ModelFacts,
    split: usize,
    codec: &dyn ActivationCodec,
    payload: &[u8],
) -> Result<Activation, RemoteError> {
    let activation = codec
        .decode(payload)
        .map_err(|e| RemoteError::Invalid(format!("split {split}: {e}")))?;
    if (activation.tokens, activation.features) != (facts.tokens, facts.features) {
        return Err(RemoteError::Invalid(format!(
            "split {split}: payload decodes to {} x {}, the model expects {} x {}",
            activation.tokens, activation.features, facts.tokens, facts.features
        )));
    }
    if activation.values.iter().any(|v| !v.is_finite()) {
        return Err(RemoteError::Invalid(format!(
            "split {split}: activation holds non-finite values"
        )));
    }
    Ok(activation)
}

/// Both steps at once, [`check_request`] then [`decode_activation`] (for tests and tools that
/// want the decoded request in one call).
///
/// # Errors
/// As the two steps.
pub fn check_and_decode(
    facts: &ModelFacts,
    codecs: &CodecRegistry,
    bases: Option<&SplitBases>,
    request: InferRequest,
) -> Result<Decoded, RemoteError> {
    let split = request.split as usize;
    match check_request(facts, codecs, bases, request)? {
        Checked::Pixels(p) => Ok(Decoded::Pixels(p)),
        Checked::Encoded { codec, payload } => {
            decode_activation(facts, split, codec.as_ref(), &payload).map(Decoded::Activation)
        }
    }
}
