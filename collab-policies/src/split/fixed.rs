//! [`FixedSplit`]: the same split and codec whatever the conditions (a baseline, a test aid,
//! or the choice of a deployment that measured its own).

use collab_core::split::{CodecId, Conditions, SplitChoice, SplitStrategy};
use collab_core::{Error, Result};
use serde::{Deserialize, Serialize};

use super::{SplitStrategyConfig, StrategyContext};

/// Always `split` with `codec` (`kind = "fixed"` in a pipeline file, `codec` in its text form:
/// `split = 6`, `codec = "int8"`). Split 0 sends the raw input ([`CodecId::raw`]) and split
/// `L` nothing ([`CodecId::none`]) whatever `codec` says. Its predicted latency and loss are 0:
/// it predicts nothing.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FixedSplit {
    split: usize,
    codec: CodecId,
}

impl FixedSplit {
    /// Split `split` with `codec` on a model of `layers` blocks.
    ///
    /// # Errors
    /// [`Error::Config`] for a split past the model.
    pub fn new(split: usize, codec: CodecId, layers: usize) -> Result<Self> {
        if split > layers {
            return Err(Error::Config(format!(
                "fixed split {split} is past the model's {layers} blocks"
            )));
        }
        let codec = match split {
            0 => CodecId::raw(),
            k if k == layers => CodecId::none(),
            _ => codec,
        };
        Ok(Self { split, codec })
    }
}

impl SplitStrategy for FixedSplit {
    fn name(&self) -> String {
        format!("fixed({}, {})", self.split, self.codec)
    }

    fn choose(&self, _: &Conditions) -> Result<SplitChoice> {
        Ok(SplitChoice {
            split: self.split,
            codec: self.codec.clone(),
            rho: 0.0,
            bytes: 0,
            latency: 0.0,
            loss: 0.0,
        })
    }
}

/// Config of [`FixedSplit`] (`kind = "fixed"`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FixedSplitConfig {
    /// The split point.
    pub split: usize,
    /// The codec between 0 and `L`, as text (`int8`, `svd-int8-r24`); default `f32`.
    #[serde(default = "f32_name")]
    pub codec: String,
}

fn f32_name() -> String {
    "f32".into()
}

#[typetag::serde(name = "fixed")]
impl SplitStrategyConfig for FixedSplitConfig {
    fn build(&self, context: &StrategyContext) -> Result<Box<dyn SplitStrategy>> {
        let codec: CodecId = self.codec.parse()?;
        Ok(Box::new(FixedSplit::new(
            self.split,
            codec,
            context.selector.layers,
        )?))
    }
}
