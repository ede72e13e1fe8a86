//! Elastic serving by token adaptation (OTAS, SPEC §4).
//!
//! - [`tome`], [`schedule`]: ToMe token merging (gamma < 0) with per-layer schedules;
//! - [`prompt`], [`repo`], [`train`], [`tasks`]: learned prompt tokens (gamma > 0), their
//!   repository keyed by (task, prompt count), prompt learning with candle autograd and the
//!   labelled tasks it trains on;
//! - [`conformance`]: the `TokenAdapter` conformance suite every adapter runs;
//! - [`batching`]: adaptive batching (Alg. 1);
//! - [`allocate`], [`load_rule`], [`fixed`]: gamma allocation per batch, by dynamic programming
//!   (Alg. 2), by the load-based rule (Alg. 3) and fixed (the baselines);
//! - [`live`], [`saved`]: per-pass merge plans for a live server (`collab_core::adaptive::PassTokenPolicy`s: fixed
//!   and OTAS allocation from a saved profile) and the profile file they load;
//! - [`serve`]: the serving loop that drives a former, an allocator and a `BatchExecutor`, and
//!   ends every query in exactly one outcome.

pub mod allocate;
pub mod batching;
pub mod conformance;
pub mod fixed;
pub mod live;
pub mod load_rule;
pub mod prompt;
pub mod repo;
pub mod saved;
pub mod schedule;
pub mod serve;
pub mod tasks;
pub mod tome;
pub mod train;

#[cfg(test)]
pub(crate) mod live_tests;
#[cfg(test)]
mod policy_tests;
#[cfg(test)]
mod prompt_tests;
#[cfg(test)]
mod serve_tests;
#[cfg(test)]
mod tome_tests;
#[cfg(test)]
mod train_tests;
