//! Split strategies named in a pipeline config: [`SplitStrategyConfig`], registered with
//! `typetag`, and the built-in `kind = "selector"`.

use std::fmt::Debug;
use std::sync::Arc;

use collab_core::Result;
use collab_core::cost::CostModel;
use collab_core::split::SplitStrategy;
use serde::{Deserialize, Serialize};

use super::{
    AccuracyTable, Fallback, FastestWithinLoss, Hysteresis, SelectorConfig, SplitSelector,
};

/// What a device knows when it builds its split strategy: the model's facts, the cost models
/// of both sides and the accuracy table (already reduced to the codecs the device can encode).
#[derive(Clone, Debug)]
pub struct StrategyContext {
    /// The model's sizes and the deployment's fixed facts.
    pub selector: SelectorConfig,
    /// The device's cost model (measured and scaled to the device).
    pub device: Arc<dyn CostModel>,
    /// The server's cost model.
    pub server: Arc<dyn CostModel>,
    /// The accuracy table.
    pub table: AccuracyTable,
}

/// What a deployment names to get a device's [`SplitStrategy`]: a serde value registered with
/// `typetag`, so a pipeline config names ours (`[device.split] kind = "selector"`) and a
/// user's the same way once their crate is linked in.
///
/// ```
/// use collab_core::split::{CodecId, Conditions, SplitChoice, SplitStrategy};
/// use collab_policies::split::{SplitStrategyConfig, StrategyContext};
/// use serde::{Deserialize, Serialize};
///
/// /// Sends the raw input whatever the conditions: the server-only baseline.
/// #[derive(Debug)]
/// struct ServerOnly;
///
/// impl SplitStrategy for ServerOnly {
///     fn name(&self) -> String { "server-only".into() }
///     fn choose(&self, _: &Conditions) -> collab_core::Result<SplitChoice> {
///         Ok(SplitChoice { split: 0, codec: CodecId::raw(), rho: 0.0, bytes: 0,
///                          latency: 0.0, loss: 0.0 })
///     }
/// }
///
/// #[derive(Debug, Serialize, Deserialize)]
/// struct ServerOnlyConfig {}
///
/// #[typetag::serde(name = "always-server")]
/// impl SplitStrategyConfig for ServerOnlyConfig {
///     fn build(&self, _: &StrategyContext) -> collab_core::Result<Box<dyn SplitStrategy>> {
///         Ok(Box::new(ServerOnly))
///     }
/// }
///
/// let config: Box<dyn SplitStrategyConfig> =
///     serde_json::from_str(r#"{ "kind": "always-server" }"#)?;
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[typetag::serde(tag = "kind")]
pub trait SplitStrategyConfig: Debug + Send + Sync {
    /// The strategy, for the device `context` describes.
    ///
    /// # Errors
    /// [`collab_core::Error::Config`] naming what does not fit (a table of another model, a
    /// bad field).
    fn build(&self, context: &StrategyContext) -> Result<Box<dyn SplitStrategy>>;
}

fn default_tolerance() -> f64 {
    0.1
}

fn yes() -> bool {
    true
}

/// The SPEC §1 [`SplitSelector`] over the context's table and cost models (`kind =
/// "selector"`), wrapped as a device runs it by default: with `fallback` (default true) the
/// fastest split within the loss limit when none meets the deadline, and with a `tolerance`
/// (default 0.1; 0 re-selects on every change) the [`Hysteresis`] that keeps a choice until
/// the conditions move.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SelectorStrategy {
    /// Relative change of bandwidth or server queue that triggers re-selection.
    #[serde(default = "default_tolerance")]
    pub tolerance: f64,
    /// Whether to fall back on the fastest split within the loss limit.
    #[serde(default = "yes")]
    pub fallback: bool,
}

impl Default for SelectorStrategy {
    fn default() -> Self {
        Self {
            tolerance: default_tolerance(),
            fallback: true,
        }
    }
}

#[typetag::serde(name = "selector")]
impl SplitStrategyConfig for SelectorStrategy {
    fn build(&self, context: &StrategyContext) -> Result<Box<dyn SplitStrategy>> {
        let selector = Arc::new(SplitSelector::new(
            context.device.clone(),
            context.server.clone(),
            context.table.clone(),
            context.selector.clone(),
        )?);
        Ok(if self.fallback {
            let fallback = Fallback::new(selector.clone(), FastestWithinLoss::new(selector));
            Box::new(Hysteresis::new(fallback).with_tolerance(self.tolerance))
        } else {
            Box::new(Hysteresis::new(selector).with_tolerance(self.tolerance))
        })
    }
}
