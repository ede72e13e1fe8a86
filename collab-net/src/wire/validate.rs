//! What a server checks before it queues a request: the split point exists, the codec is one
//! it can decode, the payload decodes to exactly the shape the model expects at that split,
//! and the budget is usable. Every failure is a [`RemoteError::Invalid`] naming the problem.

use std::str::FromStr;

use collab_core::split::{Activation, ActivationCodec};
use collab_policies::svd::{BasisNeed, Family, SplitBases};

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

/// A request's payload after validation.
#[derive(Clone, Debug, PartialEq)]
pub enum Decoded {
    /// Server-only: interleaved 8-bit RGB pixels of the cropped image.
    Pixels(Vec<u8>),
    /// The activation entering block `split`.
    Activation(Activation),
}

/// Checks `request` against `facts` and decodes its payload, with `bases` for the calibrated
/// codecs (`cpca`, `mpca`, `tpca`, ...; see [`SplitBases`]).
///
/// # Errors
/// [`RemoteError::Invalid`] naming what is wrong: a split past the model, a zero budget, a
/// loss limit that is not a finite non-negative number, an unknown codec or one that needs a
/// shared basis this server does not hold at that split, a payload that does not decode (one
/// encoded with other bases than the server's among them), or a decoded shape other than
/// `tokens x features`.
pub fn check_request(
    facts: &ModelFacts,
    bases: Option<&SplitBases>,
    request: &InferRequest,
) -> Result<Decoded, RemoteError> {
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
        if request.codec != RAW_RGB8 {
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
        return Ok(Decoded::Pixels(request.payload.clone()));
    }
    let family = Family::from_str(&request.codec)
        .map_err(|e| RemoteError::Invalid(format!("split {split}: {e}")))?;
    let Some(shared) = SplitBases::lookup(bases, split, family) else {
        let held = match bases {
            None => "it was started without --bases".to_owned(),
            Some(b) => format!(
                "its bases cover splits {:?}{}",
                b.splits().collect::<Vec<_>>(),
                if family.basis_need() == BasisNeed::Weight {
                    " and no weight bases"
                } else {
                    ""
                }
            ),
        };
        return invalid(format!(
            "codec `{family}` at split {split} needs a shared basis this server does not hold \
             ({held}); f32, f16, bf16, int8 and svd[-f16|-bf16|-int8] need none"
        ));
    };
    // The rank travels in the payload's header; the codec built here only reads it.
    let codec: Box<dyn ActivationCodec> = family
        .build_with(1, shared)
        .map_err(|e| RemoteError::Invalid(e.to_string()))?;
    let activation = codec
        .decode(&request.payload)
        .map_err(|e| RemoteError::Invalid(format!("split {split}: {e}")))?;
    if (activation.tokens, activation.features) != (facts.tokens, facts.features) {
        return invalid(format!(
            "split {split}: payload decodes to {} x {}, the model expects {} x {}",
            activation.tokens, activation.features, facts.tokens, facts.features
        ));
    }
    if activation.values.iter().any(|v| !v.is_finite()) {
        return invalid(format!("split {split}: activation holds non-finite values"));
    }
    Ok(Decoded::Activation(activation))
}
