//! Test aids shared by this crate's unit tests, its loopback integration tests and anyone
//! testing a server or device of their own: a model small enough to run in milliseconds, a
//! cost model in which every stage takes the same time, a split selector for the model built
//! on it, the context a size-only split strategy is built from, and the unsplit answer a
//! served split must reproduce. The model's weights are seeded random, so it says nothing about accuracy.

use std::sync::Arc;

use collab_backends::candle::CandleBackend;
use collab_core::cost::{CostModel, Workload};
use collab_core::input::ImagePreprocess;
use collab_core::model::weights::SeededRandom;
use collab_core::model::{
    EncoderConfig, Input, ModelConfig, NormPlacement, Transformer, VitConfig,
};
use collab_core::{Backend, Result};
use collab_policies::split::{
    AccuracyEntry, AccuracyTable, SelectorConfig, SplitSelector, StrategyContext,
};

/// Side of the tiny ViT's square input images.
pub const TINY_SIDE: usize = 32;
/// Tokens entering the tiny ViT's blocks (16 patches and the class token).
pub const TINY_TOKENS: usize = 17;
/// The tiny ViT's hidden features.
pub const TINY_FEATURES: usize = 32;
/// The tiny ViT's blocks.
pub const TINY_LAYERS: usize = 3;

/// A 3-block ViT on 32 x 32 images (17 tokens of 32 features, 10 classes) with weights drawn
/// from `seed`.
///
/// # Errors
/// Whatever building the model reports (it does not for this configuration).
pub fn tiny_vit(seed: u64) -> Result<Transformer<CandleBackend>> {
    let cfg = ModelConfig::Vit(VitConfig {
        encoder: EncoderConfig {
            hidden: TINY_FEATURES,
            layers: TINY_LAYERS,
            heads: 2,
            intermediate: 64,
            layer_norm_eps: 1e-6,
            norm: NormPlacement::Pre,
        },
        image_size: TINY_SIDE,
        patch_size: 8,
        channels: 3,
        num_classes: 10,
    });
    Transformer::new(CandleBackend::cpu(), cfg, &SeededRandom::new(seed))
}

/// A cost model in which every stage takes `.0` seconds, for split selectors in tests.
#[derive(Clone, Copy, Debug)]
pub struct FlatCost(pub f64);

impl CostModel for FlatCost {
    fn name(&self) -> String {
        format!("flat {} s", self.0)
    }

    fn seconds(&self, _: &Workload) -> Result<f64> {
        Ok(self.0)
    }
}

/// The SPEC §1 selector for [`tiny_vit`], device-only off: every device stage takes
/// `device_stage_s` seconds, every server stage 1 ms, and the table holds `entries` (none:
/// the device chooses between the raw image and `f32`).
///
/// # Errors
/// [`SplitSelector::new`]'s (an entry past the model).
pub fn tiny_selector(device_stage_s: f64, entries: Vec<AccuracyEntry>) -> Result<SplitSelector> {
    let table = AccuracyTable {
        model: "tiny-vit".into(),
        metric: "top1".into(),
        baseline: 1.0,
        tokens: TINY_TOKENS,
        features: TINY_FEATURES,
        layers: TINY_LAYERS,
        entries,
    };
    let config = SelectorConfig {
        layers: TINY_LAYERS,
        tokens: TINY_TOKENS,
        features: TINY_FEATURES,
        raw_input_bytes: 3 * TINY_SIDE * TINY_SIDE,
        response_bytes: 64,
        device_codec_scale: 1.0,
        allow_device_only: false,
    };
    SplitSelector::new(
        std::sync::Arc::new(FlatCost(device_stage_s)),
        std::sync::Arc::new(FlatCost(0.001)),
        table,
        config,
    )
}

/// What a device knows when it builds a split strategy that needs only the model's sizes (a
/// fixed split, a rule on the bandwidth): `model`'s blocks, tokens and features, flat costs
/// (10 ms a device stage, 1 ms a server stage) and an empty accuracy table.
///
/// # Errors
/// [`collab_core::Error::Config`] for a model that is not a ViT classifier.
pub fn flat_strategy_context<B: Backend>(
    model: &Transformer<B>,
    model_id: &str,
) -> Result<StrategyContext> {
    let ModelConfig::Vit(vit) = model.config() else {
        return Err(collab_core::Error::Config(format!(
            "{model_id}: a flat strategy context is for ViT classifiers"
        )));
    };
    let (layers, tokens, features) = (model.num_blocks(), vit.num_tokens(), vit.encoder.hidden);
    Ok(StrategyContext {
        selector: SelectorConfig {
            layers,
            tokens,
            features,
            raw_input_bytes: vit.channels * vit.image_size * vit.image_size,
            response_bytes: 64,
            device_codec_scale: 1.0,
            allow_device_only: false,
        },
        device: Arc::new(FlatCost(0.01)),
        server: Arc::new(FlatCost(0.001)),
        table: AccuracyTable {
            model: model_id.into(),
            metric: "top1".into(),
            baseline: 0.0,
            tokens,
            features,
            layers,
            entries: vec![],
        },
    })
}

/// The whole model's top-1 class for `image` (ImageNet preprocessing at the model's input
/// side): the answer a split served over the network must give.
///
/// # Errors
/// [`collab_core::Error::Config`] for a model that is not a ViT classifier; preprocessing and
/// backend errors.
pub fn unsplit_top1<B: Backend>(model: &Transformer<B>, image: &image::RgbImage) -> Result<u32> {
    let ModelConfig::Vit(vit) = model.config() else {
        return Err(collab_core::Error::Config(
            "unsplit_top1 runs ViT classifiers".into(),
        ));
    };
    let side = vit.image_size;
    let be = model.backend();
    let pixels = ImagePreprocess::imagenet(side as u32).apply(image)?;
    let x = be.from_vec(pixels, &[1, vit.channels, side, side])?;
    let logits = be.to_vec(&model.forward(&Input::Images(x))?)?;
    let best = logits
        .iter()
        .enumerate()
        .max_by(|a, b| a.1.total_cmp(b.1))
        .map_or(0, |(i, _)| i);
    u32::try_from(best).map_err(|_| collab_core::Error::Config("class index past u32".into()))
}
