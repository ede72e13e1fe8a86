//! Split selection (SPEC §1): from measured cost profiles, the network, the server's load and
//! an accuracy table, choose the split point and codec setting that keeps the most blocks on
//! the device while meeting the deadline and the accuracy-loss limit.
//!
//! - [`SplitSelector`]: the SPEC §1 rule over an [`AccuracyTable`];
//! - wrappers that add behaviour around any [`SplitStrategy`] (in the manner of tower's
//!   layers): [`Hysteresis`] keeps a choice until the conditions move, [`Fallback`] asks a
//!   second strategy when the first finds nothing, and [`FastestWithinLoss`] is the usual
//!   second; [`device_default`] is the three together, what a device runs unless told
//!   otherwise;
//! - [`FixedSplit`]: one split and codec whatever the conditions (baselines such as
//!   server-only, tests);
//! - [`SplitStrategyConfig`]: a strategy named in a pipeline config (`kind = "selector"` is
//!   [`SelectorStrategy`], `kind = "fixed"` [`FixedSplitConfig`]), registered with `typetag` so a user's own is named the same way;
//! - [`conformance`]: the suite every split strategy must pass, as
//!   [`split_strategy_conformance!`].
//!
//! [`SplitStrategy`]: collab_core::split::SplitStrategy
//! [`split_strategy_conformance!`]: crate::split_strategy_conformance

mod config;
pub mod conformance;
mod device_default;
mod fallback;
mod fastest;
mod fixed;
mod hysteresis;
mod selector;
mod table;

pub use config::{SelectorStrategy, SplitStrategyConfig, StrategyContext};
pub use device_default::{DeviceDefault, device_default};
pub use fallback::Fallback;
pub use fastest::FastestWithinLoss;
pub use fixed::{FixedSplit, FixedSplitConfig};
pub use hysteresis::Hysteresis;
pub use selector::{Candidate, SelectorConfig, SplitSelector};
pub use table::{AccuracyEntry, AccuracyTable};

#[cfg(test)]
mod tests;
