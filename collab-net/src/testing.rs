//! Test aids shared by this crate's unit tests, its loopback integration tests and anyone
//! testing a server or device of their own: a model small enough to run in milliseconds, and a
//! cost model in which every stage takes the same time (for split selectors). The model's
//! weights are seeded random, so it says nothing about accuracy.

use collab_backends::candle::CandleBackend;
use collab_core::Result;
use collab_core::cost::{CostModel, Workload};
use collab_core::model::weights::SeededRandom;
use collab_core::model::{EncoderConfig, ModelConfig, NormPlacement, Transformer, VitConfig};

/// Side of the tiny ViT's square input images.
pub const TINY_SIDE: usize = 32;

/// A 3-block ViT on 32 x 32 images (17 tokens of 32 features, 10 classes) with weights drawn
/// from `seed`.
///
/// # Errors
/// Whatever building the model reports (it does not for this configuration).
pub fn tiny_vit(seed: u64) -> Result<Transformer<CandleBackend>> {
    let cfg = ModelConfig::Vit(VitConfig {
        encoder: EncoderConfig {
            hidden: 32,
            layers: 3,
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
