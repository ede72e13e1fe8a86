//! PRODIGY (SPEC §5): models fine-tuned with token merging in the loop ("warmed") so that they
//! stay accurate when served at large merging numbers, chosen under time and storage budgets,
//! and averaged in weight space for the numbers in between.
//!
//! - [`planner`]: Alg. 4, which merging numbers to fine-tune under a time budget alpha and a
//!   storage budget beta, from measured per-number fine-tuning times, sizes and profiled
//!   accuracies;
//! - [`warmup`]: fine-tuning every parameter with ToMe at `r` in every forward pass, task
//!   heads, and accuracy at a serving merging number;
//! - [`ensemble`]: Alg. 5, the accuracy-weighted parameter average of warmed models for a
//!   serving number, and the knapsack that keeps the ensembles worth their storage;
//! - [`serving`]: the offline table of each task's best model per merging number, the
//!   profile a serving loop plans with, and the reduction scheduler (a `TokenAllocator`);
//! - [`live`]: the scheduler on a live server (`kind = "prodigy"` in `[server.tokens]`).

pub mod ensemble;
pub mod live;
pub mod planner;
pub mod serving;
pub mod warmup;

#[cfg(test)]
mod live_tests;
#[cfg(test)]
mod serving_tests;
#[cfg(test)]
mod tests;
