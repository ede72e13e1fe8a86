//! The conformance suite every [`BatchPolicy`] must pass (SPEC §2).
//!
//! Each round draws a [`Scenario`] from a seed: a budget (1 to 12), a mock model of 0 to 6
//! blocks ([`MockExecutor`]: the payload and the output are the request id), and 150 requests
//! with Poisson arrivals, random entries and deadlines, some of them impossible to meet, some
//! invalid (entry past `L`, NaN/infinite/negative deadline, the id of a request still held).
//! A simulated clock drives a [`Worker`](crate::batch::Worker) running the policy until every
//! request is answered, each step advancing the clock by its simulated cost. The checks:
//!
//! - the running batch never exceeds the budget, and the policy never breaks its contract
//!   (`Stats::policy_violations == 0`);
//! - every accepted request is answered exactly once, and nothing else is answered;
//! - requests join only at their own entry, in arrival order within each queue, and none is
//!   passed over by a later request of its queue;
//! - a request joins only while it can still meet its deadline; those that cannot are
//!   answered `DeadlineMissed` (impossible deadlines always are) and counted;
//! - invalid requests and entries the policy does not accept are answered `Invalid` at once,
//!   valid ones never;
//! - when an executor call fails, exactly the requests in that batch are answered `Failed`,
//!   and everything else is still served;
//! - the head's outputs go to the right requests, in batch order; the counters add up; and
//!   (for work-conserving policies) the worker is never idle while requests are queued.
//!
//! # Using it
//!
//! `batch_policy_conformance!(name, |budget| constructor)` expands to a module `name` with one
//! `#[test]` per [`Load`]; the closure builds the policy for a budget:
//!
//! ```
//! use collab_policies::batch::SharedModel;
//! collab_policies::batch_policy_conformance!(shared, |b| SharedModel::new(b).expect("budget >= 1"));
//! # fn main() {}
//! ```
//!
//! Each test runs [`DEFAULT_ROUNDS`] rounds (override with `COLLAB_CONFORMANCE_ROUNDS`) from a
//! seed taken from the clock and printed; set `COLLAB_CONFORMANCE_SEED` to that seed to replay
//! a failure. [`check_policy`] runs one scenario (for property tests).
//!
//! [`BatchPolicy`]: collab_core::batch::BatchPolicy

mod check;
mod mock;
mod scenario;

use collab_core::batch::BatchPolicy;

pub use check::{Report, check_policy};
pub use mock::{Call, MockBatch, MockExecutor};
pub use scenario::{Arrival, BLOCK_FIXED, BLOCK_PER_ITEM, Load, Scenario, block_time, remaining};

pub use collab_core::seed::{ROUNDS_ENV, SEED_ENV, seed_from_env_or_time};

/// Rounds per test in [`batch_policy_conformance!`](crate::batch_policy_conformance).
pub const DEFAULT_ROUNDS: usize = 16;

/// Holds a batch policy to the conformance suite: `batch_policy_conformance!(name, make)`
/// expands to a module `name` with one `#[test]` per [`Load`], where `make` is a closure
/// `Fn(usize) -> P` building the policy for a budget. The policy must be work-conserving
/// (start a pass whenever a queue is non-empty); add `, idle_ok` to waive that check.
#[macro_export]
macro_rules! batch_policy_conformance {
    ($modname:ident, $make:expr $(,)?) => {
        $crate::batch_policy_conformance!(@impl $modname, $make, true);
    };
    ($modname:ident, $make:expr, idle_ok $(,)?) => {
        $crate::batch_policy_conformance!(@impl $modname, $make, false);
    };
    (@impl $modname:ident, $make:expr, $conserving:expr) => {
        mod $modname {
            #[allow(unused_imports)]
            use super::*;

            fn run(load: $crate::batch::conformance::Load) {
                $crate::batch::conformance::run_test($make, load, $conserving);
            }

            #[test]
            fn light() {
                run($crate::batch::conformance::Load::Light);
            }

            #[test]
            fn heavy() {
                run($crate::batch::conformance::Load::Heavy);
            }

            #[test]
            fn failing() {
                run($crate::batch::conformance::Load::Failing);
            }

            #[test]
            fn hostile() {
                run($crate::batch::conformance::Load::Hostile);
            }
        }
    };
}

/// Runs `rounds` scenarios of kind `load` derived from `seed`; `Err` is the failure report
/// (with the seed to replay and each failing scenario).
pub fn check_rounds<P: BatchPolicy>(
    make: impl Fn(usize) -> P,
    load: Load,
    seed: u64,
    rounds: usize,
    work_conserving: bool,
) -> Result<Vec<Report>, String> {
    let mut reports = Vec::with_capacity(rounds);
    let mut failures = Vec::new();
    for round in 0..rounds {
        let scenario = Scenario::random(round_seed(seed, load, round), load);
        match check_policy(&make, &scenario, work_conserving) {
            Ok(r) => reports.push(r),
            Err(e) => failures.push(format!("round {round}, {scenario:?}:\n{e}")),
        }
    }
    if failures.is_empty() {
        Ok(reports)
    } else {
        Err(format!(
            "batch policy conformance `{}` failed {} of {rounds} rounds (seed {seed}; replay \
             with {SEED_ENV}={seed}):\n{}",
            load.name(),
            failures.len(),
            failures.join("\n")
        ))
    }
}

/// The body of each test of [`batch_policy_conformance!`](crate::batch_policy_conformance):
/// picks and prints the seed, runs the rounds, and panics with the failure report.
pub fn run_test<P: BatchPolicy>(make: impl Fn(usize) -> P, load: Load, work_conserving: bool) {
    let (seed, rounds) = match (seed_from_env_or_time(), rounds_from_env()) {
        (Ok(s), Ok(r)) => (s, r),
        (Err(e), _) | (_, Err(e)) => panic!("{e}"),
    };
    println!(
        "batch conformance / {}: seed {seed}, {rounds} rounds (replay with {SEED_ENV}={seed})",
        load.name()
    );
    match check_rounds(make, load, seed, rounds, work_conserving) {
        Ok(reports) => {
            let answered: usize = reports.iter().map(|r| r.stats.accepted).sum();
            let policy = reports
                .first()
                .map(|r| r.policy.clone())
                .unwrap_or_default();
            println!(
                "batch conformance / {}: `{policy}` passed, {answered} requests answered",
                load.name()
            );
        }
        Err(report) => panic!("{report}"),
    }
}

/// The number of rounds from [`ROUNDS_ENV`] if set, else [`DEFAULT_ROUNDS`].
///
/// # Errors
/// When the variable is set but is not a count.
pub fn rounds_from_env() -> Result<usize, String> {
    collab_core::seed::rounds_from_env(DEFAULT_ROUNDS)
}

fn round_seed(seed: u64, load: Load, round: usize) -> u64 {
    collab_core::seed::round_seed(seed, load as u64, round)
}

#[cfg(test)]
mod tests;
