//! What a server checks of a request, in two steps:
//!
//! 1. [`check_request`], on the connection task, cheap and allocation-free beyond the codec
//!    it builds: the split point exists, the budget and loss limit are usable, the codec id
//!    names a family the server's [`CodecRegistry`] builds at that split (with the bases it
//!    holds), and the shape the payload declares ([`ActivationCodec::declared_shape`], read
//!    from its header) is one the model takes at that split (an image model's token count
//!    unless tokens were merged, at most the model's positions for text; the model's
//!    features); a server-only payload is exactly the image's bytes, or token ids the model
//!    takes. So a decoder is only ever run on sizes the model bounds: a few bytes declaring a
//!    huge activation are refused before anything is decoded;
//! 2. [`decode_activation`], on the compute thread: the payload decodes, to the shape it
//!    declared, with finite values and per-token facts ([`TokenMeta`]) that fit it.
//!
//! Every failure is a [`RemoteError::Invalid`] naming the problem.

use collab_core::model::{BertConfig, HostHidden, VitConfig};
use collab_core::split::ActivationCodec;
use collab_policies::codec::{CodecContext, CodecRegistry};
use collab_policies::svd::SplitBases;

use super::message::{InferRequest, RAW_RGB8, RAW_TOKENS, RemoteError, TokenMeta};

/// What a server-only request sends, by the model's family.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum InputFacts {
    /// An image classifier (ViT, DeiT): the cropped image, `3 * side * side` bytes of RGB.
    Image {
        /// Side of the square input image.
        side: usize,
    },
    /// A sentence encoder (BERT, MiniLM): token ids below `vocab`, at most the model's
    /// positions of them.
    Text {
        /// The vocabulary size.
        vocab: usize,
    },
}

/// What the server's model expects of a request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ModelFacts {
    /// The model id devices must announce.
    pub model_id: String,
    /// Blocks `L`.
    pub layers: usize,
    /// Tokens entering the blocks: exactly this many for an image model's unmerged request, at
    /// most this many otherwise (a text model's positions; an image after merging).
    pub tokens: usize,
    /// Hidden features.
    pub features: usize,
    /// What a server-only request sends.
    pub input: InputFacts,
}

impl ModelFacts {
    /// Leading tokens of a request's hidden states that token adapters keep unless the
    /// request says otherwise: the class token of an image model, none for text
    /// ([`ModelConfig::protected_tokens`](collab_core::model::ModelConfig::protected_tokens)).
    pub fn protected(&self) -> usize {
        match self.input {
            InputFacts::Image { .. } => VitConfig::PROTECTED_TOKENS,
            InputFacts::Text { .. } => BertConfig::PROTECTED_TOKENS,
        }
    }
}

/// A request's payload after [`check_request`].
#[derive(Debug)]
pub enum Checked {
    /// Server-only, image model: interleaved 8-bit RGB pixels of the cropped image.
    Pixels(Vec<u8>),
    /// Server-only, text model: the token ids.
    Tokens(Vec<u32>),
    /// An encoded activation entering block `split`, with the codec that decodes it.
    Encoded {
        /// The decoder the registry built for the request's codec id.
        codec: Box<dyn ActivationCodec>,
        /// The payload as received.
        payload: Vec<u8>,
        /// Its per-token facts, if the request gave any.
        meta: Option<TokenMeta>,
    },
}

/// A request's payload after validation and decoding.
#[derive(Clone, Debug, PartialEq)]
pub enum Decoded {
    /// Server-only, image model: interleaved 8-bit RGB pixels of the cropped image.
    Pixels(Vec<u8>),
    /// Server-only, text model: the token ids.
    Tokens(Vec<u32>),
    /// The hidden states entering block `split` (batch 1), with their mask, sizes and
    /// protected tokens.
    Hidden(HostHidden),
}

/// Checks `request` against `facts` and builds its decoder from `codecs`, with `bases` for
/// the calibrated codecs (`cpca`, `mpca`, `tpca`, ...; see [`SplitBases`]). Takes the request
/// to keep its payload without a copy.
///
/// # Errors
/// [`RemoteError::Invalid`] naming what is wrong: a split past the model, a zero budget, a
/// loss limit that is not a finite non-negative number, a server-only request that is not
/// `rgb8` pixels of the model's image size (image model) or `tokens` the model takes (text
/// model), per-token facts at split 0, a codec id whose family the registry does not know (the
/// message names it and the known ones), one that needs a shared basis this server does not
/// hold at that split, or a payload whose header does not read or declares a shape the model
/// does not take at that split.
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
        if request.meta.is_some() {
            return invalid("split 0 (server-only) carries no per-token facts".into());
        }
        return server_only(facts, request);
    }
    let context = CodecContext { split, bases };
    let codec = codecs
        .build(&request.codec, &context)
        .map_err(|e| RemoteError::Invalid(format!("split {split}: {e}")))?;
    let (n, d) = codec
        .declared_shape(&request.payload)
        .map_err(|e| RemoteError::Invalid(format!("split {split}: {e}")))?;
    check_shape(facts, split, (n, d), request.meta.as_ref())?;
    Ok(Checked::Encoded {
        codec,
        payload: request.payload,
        meta: request.meta,
    })
}

/// The checks of a server-only request: the raw input the model's family takes.
fn server_only(facts: &ModelFacts, request: InferRequest) -> Result<Checked, RemoteError> {
    let invalid = |m: String| Err(RemoteError::Invalid(m));
    let (family, n) = (request.codec.family(), request.payload.len());
    match facts.input {
        InputFacts::Image { side } => {
            if family != RAW_RGB8 {
                return invalid(format!(
                    "split 0 (server-only) takes codec `{RAW_RGB8}`, got `{}`",
                    request.codec
                ));
            }
            let want = 3 * side * side;
            if n != want {
                return invalid(format!(
                    "`{RAW_RGB8}` payload of {n} bytes; a {side} x {side} RGB image is {want}"
                ));
            }
            Ok(Checked::Pixels(request.payload))
        }
        InputFacts::Text { vocab } => {
            if family != RAW_TOKENS {
                return invalid(format!(
                    "split 0 (server-only) takes codec `{RAW_TOKENS}`, got `{}`",
                    request.codec
                ));
            }
            if n == 0 || n % 4 != 0 || n / 4 > facts.tokens {
                return invalid(format!(
                    "`{RAW_TOKENS}` payload of {n} bytes: 1 to {} token ids of 4 bytes each",
                    facts.tokens
                ));
            }
            let ids: Vec<u32> = request
                .payload
                .chunks_exact(4)
                .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect();
            if let Some(bad) = ids.iter().find(|&&t| t as usize >= vocab) {
                return invalid(format!("token id {bad} outside the vocabulary of {vocab}"));
            }
            Ok(Checked::Tokens(ids))
        }
    }
}

/// Decodes a checked payload entering block `split` and checks it, with its per-token facts
/// `meta`, against `facts`.
///
/// # Errors
/// [`RemoteError::Invalid`] naming what is wrong: a payload that does not decode (one encoded
/// with other bases than the server's among them), a declared shape the model does not take
/// (another feature width, or a token count it does not take: an image model's unmerged
/// request must have exactly its tokens), a decoded shape other than the declared one,
/// non-finite values, or per-token facts that do not fit the tokens (a mask or sizes of
/// another length, a mask value other than 0 and 1, a size that is not finite or outside
/// `1..=tokens`, more protected tokens than tokens).
pub fn decode_activation(
    facts: &ModelFacts,
    split: usize,
    codec: &dyn ActivationCodec,
    payload: &[u8],
    meta: Option<&TokenMeta>,
) -> Result<HostHidden, RemoteError> {
    let invalid = |m: String| Err(RemoteError::Invalid(format!("split {split}: {m}")));
    let codec_error = |e: collab_core::Error| RemoteError::Invalid(format!("split {split}: {e}"));
    // Checked on arrival already; asked again so that this function bounds what it decodes
    // on its own.
    let declared = codec.declared_shape(payload).map_err(codec_error)?;
    check_shape(facts, split, declared, meta)?;
    let a = codec.decode(payload).map_err(codec_error)?;
    let n = a.tokens;
    if (n, a.features) != declared || a.values.len() != n * a.features {
        return invalid(format!(
            "payload decodes to {n} x {} ({} values) but declares {} x {}",
            a.features,
            a.values.len(),
            declared.0,
            declared.1
        ));
    }
    if a.values.iter().any(|v| !v.is_finite()) {
        return invalid("activation holds non-finite values".into());
    }
    let (mut mask, mut sizes, mut protected) = (None, None, facts.protected().min(n));
    if let Some(m) = meta {
        protected = m.protected as usize;
        if protected > n {
            return invalid(format!("{protected} protected tokens of {n}"));
        }
        if let Some(v) = &m.mask {
            // Padding goes at the end, after at least one real token (as batches are
            // joined, and as ToMe merges them).
            let real = v.iter().take_while(|&&b| b == 1).count();
            if v.len() != n || real == 0 || v[real..].iter().any(|&b| b != 0) {
                return invalid(format!(
                    "a mask of {} values for {n} tokens: each 0 or 1, ones first, at least one",
                    v.len()
                ));
            }
            mask = Some(v.iter().map(|&b| f32::from(b)).collect());
        }
        if let Some(v) = &m.sizes {
            let size_ok = |s: &f32| s.is_finite() && (1.0..=facts.tokens as f32).contains(s);
            if v.len() != n || !v.iter().all(size_ok) {
                return invalid(format!(
                    "{} token sizes (each in 1..={}) for {n} tokens",
                    v.len(),
                    facts.tokens
                ));
            }
            sizes = Some(v.clone());
        }
    }
    Ok(HostHidden {
        dims: [1, n, a.features],
        x: a.values,
        mask,
        sizes,
        protected,
    })
}

/// Whether an activation of `tokens x features` entering block `split`, with per-token facts
/// `meta`, is a shape the model takes: its features, and exactly its tokens for an image
/// model's unmerged request, else 1 to its tokens.
fn check_shape(
    facts: &ModelFacts,
    split: usize,
    (n, d): (usize, usize),
    meta: Option<&TokenMeta>,
) -> Result<(), RemoteError> {
    let exact =
        matches!(facts.input, InputFacts::Image { .. }) && meta.is_none_or(|m| m.sizes.is_none());
    let tokens_ok = if exact {
        n == facts.tokens
    } else {
        (1..=facts.tokens).contains(&n)
    };
    if d == facts.features && tokens_ok {
        return Ok(());
    }
    let want = if exact {
        format!("{}", facts.tokens)
    } else {
        format!("1 to {}", facts.tokens)
    };
    Err(RemoteError::Invalid(format!(
        "split {split}: payload declares {n} x {d}, the model expects {want} x {}",
        facts.features
    )))
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
        Checked::Tokens(t) => Ok(Decoded::Tokens(t)),
        Checked::Encoded {
            codec,
            payload,
            meta,
        } => decode_activation(facts, split, codec.as_ref(), &payload, meta.as_ref())
            .map(Decoded::Hidden),
    }
}
