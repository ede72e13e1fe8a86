//! {{name}}: a split strategy for collab devices.
//!
//! A [`SplitStrategy`] picks, for each request, the block to split the model at and the codec
//! for the activation, from the measured conditions (bandwidth, RTT, server queue, deadline,
//! accuracy budget). [`BandwidthStep`] is an example to replace: below a bandwidth it splits
//! late with a small codec, above it early. [`BandwidthStepConfig`] is registered with
//! `typetag` as kind `{{name}}`, so a pipeline file's `[device.split]` names it.

use collab_core::split::{CodecId, Conditions, SplitChoice, SplitStrategy};
use collab_core::{Error, Result};
use collab_policies::split::{SplitStrategyConfig, StrategyContext};
use serde::{Deserialize, Serialize};

/// Below `threshold` bytes/s of uplink, `low`; at or above it, `high` (each a split and a codec).
#[derive(Debug, Clone)]
pub struct BandwidthStep {
    /// The uplink bandwidth (bytes/s) at which the choice changes.
    pub threshold: f64,
    /// The split and codec on a slow link.
    pub low: (usize, CodecId),
    /// The split and codec on a fast link.
    pub high: (usize, CodecId),
}

impl SplitStrategy for BandwidthStep {
    fn name(&self) -> String {
        format!(
            "{{name}}({} B/s: {} {} / {} {})",
            self.threshold, self.low.0, self.low.1, self.high.0, self.high.1
        )
    }

    fn choose(&self, c: &Conditions) -> Result<SplitChoice> {
        if c.bandwidth.is_nan() {
            return Err(Error::InvalidInput("bandwidth is NaN".into()));
        }
        let (split, codec) = if c.bandwidth < self.threshold {
            &self.low
        } else {
            &self.high
        };
        Ok(SplitChoice {
            split: *split,
            codec: codec.clone(),
            rho: 0.0,
            bytes: 0,
            latency: 0.0,
            loss: 0.0,
        })
    }
}

/// The strategy's config: what a pipeline file's `[device.split]` holds for kind `{{name}}`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BandwidthStepConfig {
    /// The bandwidth at which the choice changes, Mbit/s.
    pub threshold_mbit: f64,
    /// Split on a slow link.
    pub low_split: usize,
    /// Codec id on a slow link (`int8`, `tpca-r32`, ...).
    pub low_codec: String,
    /// Split on a fast link.
    pub high_split: usize,
    /// Codec id on a fast link.
    pub high_codec: String,
}

#[typetag::serde(name = "{{name}}")]
impl SplitStrategyConfig for BandwidthStepConfig {
    fn build(&self, context: &StrategyContext) -> Result<Box<dyn SplitStrategy>> {
        let layers = context.selector.layers;
        for split in [self.low_split, self.high_split] {
            if split == 0 || split >= layers {
                return Err(Error::Config(format!(
                    "{{name}}: split {split} must be in 1..{layers}"
                )));
            }
        }
        if !(self.threshold_mbit > 0.0) {
            return Err(Error::Config(
                "{{name}}: threshold_mbit must be positive".into(),
            ));
        }
        Ok(Box::new(BandwidthStep {
            threshold: self.threshold_mbit * 1e6 / 8.0,
            low: (self.low_split, self.low_codec.parse()?),
            high: (self.high_split, self.high_codec.parse()?),
        }))
    }
}

/// Keeps this crate's `typetag` registrations in a program that names its kinds only in a
/// config file: call it once at start-up (a linker drops a library nothing refers to, and its
/// registrations with it).
pub fn register() {}
