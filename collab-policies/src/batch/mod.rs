//! Batch scheduling for the shared-model server (SPEC §2) and its baselines, with the
//! synchronous worker that runs them.
//!
//! - [`Worker`]: one model (an [`Executor`]), one FIFO queue per entry position, a
//!   [`BatchPolicy`] deciding who joins the running batch where; one [`Worker::step`] per
//!   block, no clock and no async, so a server and a discrete-event simulator drive it alike;
//! - [`SharedModel`]: the paper's policy: requests entering at different blocks share the
//!   later blocks' batches; queues take turns as the prioritised one, the others share the
//!   rest of the budget in proportion to their lengths;
//! - [`PerSplit`]: the Graft-style baseline, each split point's queue batched on its own;
//! - [`ModelExecutor`]: the real executor, one complete Transformer run block by block;
//! - [`ServerOnly`]: the baseline where the server runs the whole model from the raw input;
//! - [`SharedModelConfig`], [`PerSplitConfig`], [`ServerOnlyConfig`]: the three as
//!   [`BatchPolicyConfig`]s, named in a pipeline config by `kind` (`shared`, `per-split`,
//!   `server-only`) next to any policy a user registers;
//! - [`conformance`]: the suite every policy must pass, as [`batch_policy_conformance!`].
//!
//! The trait and the request/response types live in [`collab_core::batch`].
//!
//! [`batch_policy_conformance!`]: crate::batch_policy_conformance

mod config;
pub mod conformance;
mod executor;
mod model;
mod per_split;
mod server_only;
mod shared;
mod step;
mod worker;

pub use collab_core::batch::{
    BatchPolicy, BatchPolicyConfig, Outcome, QueueView, Queued, Response,
};
pub use config::{DEFAULT_BUDGET, PerSplitConfig, ServerOnlyConfig, SharedModelConfig};
pub use executor::{Executor, Remaining};
pub use model::{ModelExecutor, Payload};
pub use per_split::PerSplit;
pub use server_only::ServerOnly;
pub use shared::{DEFAULT_MAJOR_SHARE, SharedModel, shares};
pub use step::{Stats, Step, Work};
pub use worker::Worker;

/// Rejects a budget batch size of 0 for `policy`.
fn check_budget(policy: &str, budget: usize) -> collab_core::Result<()> {
    if budget == 0 {
        return Err(collab_core::Error::Config(format!(
            "{policy}: the budget batch size must be at least 1"
        )));
    }
    Ok(())
}

#[cfg(test)]
#[path = "worker_tests.rs"]
mod worker_tests;
