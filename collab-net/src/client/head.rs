//! The device's part of the model, synchronous (it runs on a blocking thread): prepare the
//! input (crop an image; token ids as they are), and depending on the [`Plan`] nothing more
//! (server-only), the embedding, blocks `0..k` and the encoding (split), or the whole model
//! (device-only).

use std::time::{Duration, Instant};

use collab_core::Backend;
use collab_core::input::ImagePreprocess;
use collab_core::model::{Hidden, Input, ModelConfig, Transformer};
use collab_core::split::Activation;
use collab_core::token::{IdentityAdapter, TokenAdapter};
use collab_policies::codec::{CodecContext, CodecRegistry};
use collab_policies::svd::SplitBases;

use super::error::ClientError;
use super::plan::{Plan, top_k};
use crate::wire::TokenMeta;

/// Classes a device-only answer reports (as the server's answers do).
pub(super) const TOP_K: usize = 5;

/// One request's input on the device.
#[derive(Clone, Debug, PartialEq)]
pub enum DeviceInput {
    /// A decoded RGB image, for an image classifier (resized and centre-cropped here).
    Image(image::RgbImage),
    /// Token ids of one text, `[CLS]` and `[SEP]` included, for a sentence encoder.
    Tokens(Vec<u32>),
}

/// What the device's part produced.
#[derive(Clone, Debug, PartialEq)]
pub(super) struct HeadOutput {
    /// The request payload (empty for device-only).
    pub(super) payload: Vec<u8>,
    /// The activation's per-token facts, when they are not the default.
    pub(super) meta: Option<TokenMeta>,
    /// The classes, for a device-only classifier (empty otherwise).
    pub(super) top: Vec<(u32, f32)>,
    /// The embedding, for a device-only encoder (empty otherwise).
    pub(super) embedding: Vec<f32>,
    /// Model compute and encoding time, what a slower device would stretch (the crop is not
    /// included: the cost profiles do not count it either).
    pub(super) compute: Duration,
}

/// The side an image model takes.
///
/// # Errors
/// [`ClientError::Local`] for a model that does not take images.
pub(super) fn image_side<B: Backend>(model: &Transformer<B>) -> Result<u32, ClientError> {
    match model.config() {
        ModelConfig::Vit(v) => u32::try_from(v.image_size)
            .map_err(|_| ClientError::Local(format!("image size {} too large", v.image_size))),
        ModelConfig::Bert(_) => Err(ClientError::Local(
            "this model takes text (token ids), not an image".into(),
        )),
    }
}

/// Runs the device's part of `plan` on `input`, then as the plan says; `adapter` (if any)
/// changes the tokens inside the device's blocks (ToMe merging, prompts), and the merged sizes
/// cross the split with the activation.
///
/// # Errors
/// [`ClientError::Local`] for an input the model does not take (an image for a text model or
/// the reverse, an empty image or text), a compute or encoding failure, or a codec that
/// `codecs` cannot build at the split with `bases`.
pub(super) fn run_head<B: Backend>(
    model: &Transformer<B>,
    input: &DeviceInput,
    plan: &Plan,
    codecs: &CodecRegistry,
    bases: Option<&SplitBases>,
    adapter: Option<&dyn TokenAdapter<B>>,
) -> Result<HeadOutput, ClientError> {
    let adapter = adapter.unwrap_or(&IdentityAdapter);
    let mut out = HeadOutput {
        payload: vec![],
        meta: None,
        top: vec![],
        embedding: vec![],
        compute: Duration::ZERO,
    };
    let be = model.backend();
    let model_input = match input {
        DeviceInput::Image(image) => {
            let side = image_side(model)?;
            let pre = ImagePreprocess::imagenet(side);
            let crop = pre.crop_rgb(image)?;
            if *plan == Plan::ServerOnly {
                out.payload = crop.into_raw();
                return Ok(out);
            }
            let s = side as usize;
            let pixels = pre.normalize(crop.as_raw())?;
            Input::Images(be.from_vec(pixels, &[1, 3, s, s])?)
        }
        DeviceInput::Tokens(ids) => {
            if let ModelConfig::Vit(_) = model.config() {
                return Err(ClientError::Local(
                    "this model takes images, not token ids".into(),
                ));
            }
            if ids.is_empty() {
                return Err(ClientError::Local("an empty text".into()));
            }
            if *plan == Plan::ServerOnly {
                out.payload = ids.iter().flat_map(|t| t.to_le_bytes()).collect();
                return Ok(out);
            }
            Input::Tokens(vec![ids.clone()])
        }
    };
    let start = Instant::now();
    match plan {
        Plan::ServerOnly => {}
        Plan::DeviceOnly => {
            let layers = model.num_blocks();
            let hidden = model.run_blocks_with(model.embed(&model_input)?, 0..layers, adapter)?;
            let output = be.to_vec(&model.head(&hidden)?)?;
            match model.config() {
                ModelConfig::Vit(_) => out.top = top_k(&output, TOP_K),
                ModelConfig::Bert(_) => out.embedding = output,
            }
        }
        Plan::Split { split, codec } => {
            let split = *split;
            let hidden = model.run_blocks_with(model.embed(&model_input)?, 0..split, adapter)?;
            let (_, tokens, features) = hidden.dims3(be)?;
            let activation = Activation::new(tokens, features, be.to_vec(&hidden.x)?)?;
            let context = CodecContext { split, bases };
            out.payload = codecs.build(codec, &context)?.encode(&activation)?;
            out.meta = token_meta(model, &hidden)?;
        }
    }
    out.compute = start.elapsed();
    Ok(out)
}

/// The per-token facts of `hidden` (batch 1) when they are not what the server assumes (no
/// padding, unit sizes, the model family's protected tokens).
fn token_meta<B: Backend>(
    model: &Transformer<B>,
    hidden: &Hidden<B>,
) -> Result<Option<TokenMeta>, ClientError> {
    let be = model.backend();
    let default_protected = model.config().protected_tokens();
    if hidden.mask.is_none() && hidden.sizes.is_none() && hidden.protected == default_protected {
        return Ok(None);
    }
    let mask = match &hidden.mask {
        Some(m) => Some(be.to_vec(m)?.iter().map(|&v| u8::from(v > 0.5)).collect()),
        None => None,
    };
    let sizes = match &hidden.sizes {
        Some(s) => Some(be.to_vec(s)?),
        None => None,
    };
    Ok(Some(TokenMeta {
        protected: u32::try_from(hidden.protected).unwrap_or(u32::MAX),
        mask,
        sizes,
    }))
}
