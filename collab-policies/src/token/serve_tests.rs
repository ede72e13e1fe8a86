//! Tests of the OTAS serving loop with a simulated executor: batch time = the profile's
//! prediction, and a query is answered correctly when a hash of its id falls below the
//! profiled accuracy (deterministic, so runs repeat exactly).
#![allow(clippy::unwrap_used)]

use collab_core::Result;
use collab_core::adaptive::{
    Batch, Gamma, LoadInfo, ProfileTable, Query, TokenAllocator, TokenProfile,
};
use proptest::prelude::*;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::allocate::{DpAllocator, DpParams};
use super::batching::{AdaptiveBatcher, BatchingParams};
use super::fixed::FixedGamma;
use super::load_rule::{LoadRule, RateTable};
use super::serve::{BatchExecutor, BatchRun, Outcome, ServeConfig, serve};

const GAMMAS: [Gamma; 5] = [-20, -10, 0, 4, 8];

/// Two tasks; merging is faster and less accurate, prompting slower and more accurate.
fn profile() -> ProfileTable {
    ProfileTable::from_fn(
        GAMMAS.to_vec(),
        vec![1, 8, 64],
        2,
        |_, g| Some((0.8 + f64::from(g) / 100.0).clamp(0.0, 1.0)),
        |_, g, b| Some(0.02 * (1.0 + f64::from(g) / 25.0) * (0.5 + 0.5 / (b as f64).sqrt())),
    )
    .unwrap()
}

#[derive(Debug)]
struct Simulated<'a> {
    profile: &'a ProfileTable,
}

fn unit(id: u64) -> f64 {
    (collab_core::seed::splitmix64(id) >> 11) as f64 / (1u64 << 53) as f64
}

impl BatchExecutor for Simulated<'_> {
    fn run(&mut self, batch: &Batch, gamma: Gamma, _: &LoadInfo) -> Result<BatchRun> {
        let seconds = self.profile.batch_time(batch, gamma).unwrap_or(1.0);
        let correct = batch
            .queries
            .iter()
            .map(|q| unit(q.id) < self.profile.accuracy(q.task, gamma).unwrap_or(0.0))
            .collect();
        Ok(BatchRun { correct, seconds })
    }
}

/// Poisson arrivals at `rate`/s for `seconds`, SPEC §4's budgets and utilities on two tasks.
fn queries(rate: f64, seconds: f64, seed: u64) -> Vec<Query> {
    let mut rng = StdRng::seed_from_u64(seed);
    let (mut t, mut out) = (0.0, Vec::new());
    loop {
        t += -(1.0 - rng.random::<f64>()).ln() / rate;
        if t >= seconds {
            return out;
        }
        let (budget, utility) =
            [(0.6, 1.0), (1.0, 0.2), (0.6, 0.3), (1.0, 0.01)][rng.random_range(0..4)];
        out.push(Query {
            id: out.len() as u64,
            task: rng.random_range(0..2),
            arrival: t,
            deadline: t + budget,
            utility,
        });
    }
}

fn run(qs: &[Query], allocator: &mut dyn TokenAllocator) -> super::serve::RunLog {
    let p = profile();
    let mut former = AdaptiveBatcher::new(BatchingParams::published()).unwrap();
    let mut exec = Simulated { profile: &p };
    serve(
        qs,
        &mut former,
        allocator,
        &p,
        &mut exec,
        &ServeConfig::default(),
    )
    .unwrap()
}

fn dp() -> DpAllocator {
    let rule = LoadRule::new(RateTable::published().scaled(0.2).unwrap(), 0.8).unwrap();
    DpAllocator::new(DpParams::published(), rule).unwrap()
}

fn check_exactly_once(qs: &[Query], log: &super::serve::RunLog) {
    let mut ids: Vec<u64> = log.outcomes.iter().map(|(q, _)| q.id).collect();
    ids.sort_unstable();
    assert_eq!(
        ids,
        (0..qs.len() as u64).collect::<Vec<_>>(),
        "each query exactly once"
    );
    let ran: usize = log.batches.iter().map(|b| b.size).sum();
    let evicted = log
        .outcomes
        .iter()
        .filter(|(_, o)| *o == Outcome::Evicted)
        .count();
    assert_eq!(ran + evicted, qs.len());
    assert!(log.batches.iter().all(|b| b.size <= 64));
    let u: f64 = log
        .outcomes
        .iter()
        .filter(|(_, o)| *o == Outcome::CorrectInTime)
        .map(|(q, _)| q.utility)
        .sum();
    assert!((log.utility() - u).abs() < 1e-9);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]
    #[test]
    fn every_query_ends_in_exactly_one_outcome(rate in 5.0..200.0f64, seed in 0u64..1000, which in 0usize..3) {
        let qs = queries(rate, 4.0, seed);
        let mut alloc: Box<dyn TokenAllocator> = match which {
            0 => Box::new(dp()),
            1 => Box::new(FixedGamma::new(0)),
            _ => Box::new(FixedGamma::new(-20)),
        };
        let log = run(&qs, alloc.as_mut());
        check_exactly_once(&qs, &log);
        // The loop never starts a batch before the previous one finished.
        for w in log.batches.windows(2) {
            prop_assert!(w[1].start >= w[0].start + w[0].seconds - 1e-9);
        }
    }
}

#[test]
fn under_overload_dp_allocation_beats_every_fixed_gamma() {
    // ~110 queries/s against a gamma-0 capacity of about 70/s at batch 64.
    let qs = queries(110.0, 20.0, 3);
    let otas = run(&qs, &mut dp()).utility();
    for g in GAMMAS {
        let fixed = run(&qs, &mut FixedGamma::new(g)).utility();
        assert!(otas > fixed, "dp {otas:.2} vs fixed {g}: {fixed:.2}");
    }
}

#[test]
fn at_low_load_nothing_is_late_or_evicted() {
    let qs = queries(5.0, 10.0, 9);
    let log = run(&qs, &mut dp());
    check_exactly_once(&qs, &log);
    assert_eq!(log.share(Outcome::Late) + log.share(Outcome::Evicted), 0.0);
}

#[test]
fn bad_inputs_are_typed_errors() {
    let p = profile();
    let mut former = AdaptiveBatcher::new(BatchingParams::published()).unwrap();
    let mut exec = Simulated { profile: &p };
    let mut qs = queries(20.0, 1.0, 1);
    qs.swap(0, 1);
    let e = serve(
        &qs,
        &mut former,
        &mut dp(),
        &p,
        &mut exec,
        &ServeConfig::default(),
    );
    assert!(e.unwrap_err().to_string().contains("sorted"));
    let mut qs = queries(20.0, 1.0, 1);
    qs[2].deadline = f64::INFINITY;
    let e = serve(
        &qs,
        &mut former,
        &mut dp(),
        &p,
        &mut exec,
        &ServeConfig::default(),
    );
    assert!(e.unwrap_err().to_string().contains("finite"));

    #[derive(Debug)]
    struct Short;
    impl BatchExecutor for Short {
        fn run(&mut self, _: &Batch, _: Gamma, _: &LoadInfo) -> Result<BatchRun> {
            Ok(BatchRun {
                correct: vec![],
                seconds: 0.01,
            })
        }
    }
    let qs = queries(20.0, 1.0, 1);
    let mut former = AdaptiveBatcher::new(BatchingParams::published()).unwrap();
    let e = serve(
        &qs,
        &mut former,
        &mut dp(),
        &p,
        &mut Short,
        &ServeConfig::default(),
    );
    assert!(e.unwrap_err().to_string().contains("answered 0"));
}
