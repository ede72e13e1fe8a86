//! A discrete-event simulation of one serving [`Worker`]: devices split a model at their own
//! blocks and send requests at seeded Poisson times; the server's [`BatchPolicy`] decides
//! which queued requests share each block's batch; the clock advances by each step's cost.
//!
//! Two clocks, one simulation:
//! - [`WallClock`] with the real model ([`ModelExecutor`]): each step really runs and takes
//!   its measured wall time (what `exp collabtrans-throughput` does on this machine);
//! - [`ProfileClock`] with [`ReplayExecutor`]: nothing is computed; a step at block `p` on a
//!   batch of `b` costs what the per-block × batch-size profile says. A profile measured on a
//!   GPU by `cargo xtask exp block-profile`, or estimated by [`crate::estimate`], replays here
//!   in milliseconds per trial.
//!
//! [`Worker`]: collab_policies::batch::Worker
//! [`BatchPolicy`]: collab_core::batch::BatchPolicy
//! [`ModelExecutor`]: collab_policies::batch::ModelExecutor

mod clock;
mod cost;
mod replay;
mod trial;

pub use clock::{ProfileClock, StepClock, WallClock};
pub use cost::{capacity_guess, device_seconds, remaining};
pub use replay::ReplayExecutor;
pub use trial::{DevicePlan, Load, MAX_ARRIVALS, Trial, run_trial};
