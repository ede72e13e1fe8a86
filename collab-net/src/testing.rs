//! Test aids shared by this crate's unit tests, its loopback integration tests and anyone
//! testing a server or device of their own: a model small enough to run in milliseconds, a
//! cost model in which every stage takes the same time, and a split selector for the model
//! built on it. The model's weights are seeded random, so it says nothing about accuracy.

use collab_backends::candle::CandleBackend;
use collab_core::Result;
use collab_core::cost::{CostModel, Workload};
use collab_core::model::weights::SeededRandom;
use collab_core::model::{EncoderConfig, ModelConfig, NormPlacement, Transformer, VitConfig};
use collab_policies::split::{AccuracyEntry, AccuracyTable, SelectorConfig, SplitSelector};

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
