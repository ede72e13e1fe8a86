//! The device's part of the model, synchronous (it runs on a blocking thread): crop, and
//! depending on the [`Plan`] nothing more (server-only), the embedding, blocks `0..k` and the
//! encoding (split), or the whole model (device-only).

use std::time::{Duration, Instant};

use collab_core::Backend;
use collab_core::input::ImagePreprocess;
use collab_core::model::{Input, ModelConfig, Transformer};
use collab_core::split::Activation;
use collab_policies::codec::{CodecContext, CodecRegistry};
use collab_policies::svd::SplitBases;

use super::error::ClientError;
use super::plan::{Plan, top_k};

/// Classes a device-only answer reports (as the server's answers do).
pub(super) const TOP_K: usize = 5;

/// What the device's part produced.
#[derive(Clone, Debug, PartialEq)]
pub(super) struct HeadOutput {
    /// The request payload (empty for device-only).
    pub(super) payload: Vec<u8>,
    /// The classes, for device-only (empty otherwise).
    pub(super) top: Vec<(u32, f32)>,
    /// Model compute and encoding time, what a slower device would stretch (the crop is not
    /// included: the cost profiles do not count it either).
    pub(super) compute: Duration,
}

/// The input side of a ViT model.
///
/// # Errors
/// [`ClientError::Local`] for a model that does not take images.
pub(super) fn image_side<B: Backend>(model: &Transformer<B>) -> Result<u32, ClientError> {
    match model.config() {
        ModelConfig::Vit(v) => u32::try_from(v.image_size)
            .map_err(|_| ClientError::Local(format!("image size {} too large", v.image_size))),
        ModelConfig::Bert(_) => Err(ClientError::Local(
            "the device classifies images; this model takes text".into(),
        )),
    }
}

/// Runs the device's part of `plan` on one decoded RGB image: resize and centre-crop
/// ([`ImagePreprocess::imagenet`] at the model's side), then as the plan says.
///
/// # Errors
/// [`ClientError::Local`] for an empty image, a compute or encoding failure, or a codec that
/// `codecs` cannot build at the split with `bases`.
pub(super) fn run_head<B: Backend>(
    model: &Transformer<B>,
    image: &image::RgbImage,
    plan: &Plan,
    codecs: &CodecRegistry,
    bases: Option<&SplitBases>,
) -> Result<HeadOutput, ClientError> {
    let side = image_side(model)?;
    let pre = ImagePreprocess::imagenet(side);
    let crop = pre.crop_rgb(image)?;
    if *plan == Plan::ServerOnly {
        return Ok(HeadOutput {
            payload: crop.into_raw(),
            top: vec![],
            compute: Duration::ZERO,
        });
    }
    let start = Instant::now();
    let be = model.backend();
    let s = side as usize;
    let pixels = pre.normalize(crop.as_raw())?;
    let input = Input::Images(be.from_vec(pixels, &[1, 3, s, s])?);
    let mut out = HeadOutput {
        payload: vec![],
        top: vec![],
        compute: Duration::ZERO,
    };
    match plan {
        Plan::ServerOnly => {}
        Plan::DeviceOnly => {
            let logits = be.to_vec(&model.forward(&input)?)?;
            out.top = top_k(&logits, TOP_K);
        }
        Plan::Split { split, codec } => {
            let split = *split;
            let hidden = model.run_blocks(model.embed(&input)?, 0..split)?;
            let (_, tokens, features) = hidden.dims3(be)?;
            let activation = Activation::new(tokens, features, be.to_vec(&hidden.x)?)?;
            let context = CodecContext { split, bases };
            out.payload = codecs.build(codec, &context)?.encode(&activation)?;
        }
    }
    out.compute = start.elapsed();
    Ok(out)
}
