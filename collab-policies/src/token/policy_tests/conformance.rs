//! Conformance suites of the OTAS serving policies (SPEC §4), run as proptests over seeded
//! random profiles, batches and query streams.
//!
//! Every [`TokenAllocator`] (DP, load rule, fixed, PRODIGY's reduction scheduler): the allocation passes
//! [`Allocation::verify`] (order is the deadline-sorted permutation; choices are profiled,
//! runnable gammas; start/finish follow sequential execution from `now` with the profile's
//! batch times; the reported expected utility equals the recomputed utility of the plan's
//! on-time batches). The DP additionally never runs a batch predicted to miss its deadline; the
//! load rule and fixed gamma never skip a runnable batch, nor the scheduler one runnable at a
//! gamma <= 0.
//!
//! Every [`BatchFormer`] (adaptive, fixed size): across random adds, takes and evictions,
//! every query added is in exactly one batch or was returned exactly once; batches are
//! non-empty, within their size limit and FIFO; arrival/deadline are the members' minima;
//! evictions return exactly the expired queries; and each add puts the query where the literal
//! statement of its rule (Alg. 1, or fill-the-newest) says.

use std::collections::BTreeMap;

use collab_core::adaptive::{
    Allocation, Batch, BatchFormer, LoadInfo, ProfileTable, Query, TokenAllocator, TokenProfile,
};
use proptest::prelude::*;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::super::allocate::{DpAllocator, DpParams};
use super::super::batching::{AdaptiveBatcher, BatchingParams, FixedSizeBatcher};
use super::super::fixed::FixedGamma;
use super::super::load_rule::LoadRule;
use crate::prodigy::serving::ReductionScheduler;

const ALL_GAMMAS: [i32; 8] = [-20, -15, -10, -5, 0, 2, 4, 8];

/// A random profile: a non-empty subset of the published gammas and of sizes 1..64, 1-4 tasks,
/// some (task, gamma) pairs without accuracy or time.
fn random_profile(rng: &mut StdRng) -> ProfileTable {
    let mut gammas: Vec<i32> = ALL_GAMMAS
        .into_iter()
        .filter(|_| rng.random_bool(0.7))
        .collect();
    if gammas.is_empty() {
        gammas.push(0);
    }
    let mut sizes: Vec<usize> = [1, 2, 4, 8, 16, 32, 64]
        .into_iter()
        .filter(|_| rng.random_bool(0.5))
        .collect();
    if sizes.is_empty() {
        sizes.push(rng.random_range(1..=64));
    }
    let tasks = rng.random_range(1..=4);
    let acc: Vec<Vec<Option<f64>>> = (0..tasks)
        .map(|_| {
            gammas
                .iter()
                .map(|_| rng.random_bool(0.9).then(|| rng.random::<f64>()))
                .collect()
        })
        .collect();
    let base: Vec<Vec<f64>> = (0..tasks)
        .map(|_| {
            gammas
                .iter()
                .map(|&g| rng.random_range(0.001..0.02) * (1.0 + f64::from(g) / 40.0))
                .collect()
        })
        .collect();
    let missing: Vec<Vec<bool>> = (0..tasks)
        .map(|_| gammas.iter().map(|_| rng.random_bool(0.05)).collect())
        .collect();
    let gi = |g: i32| gammas.iter().position(|&x| x == g).unwrap_or(0);
    ProfileTable::from_fn(
        gammas.clone(),
        sizes,
        tasks,
        |t, g| acc[t][gi(g)],
        |t, g, b| (!missing[t][gi(g)]).then(|| base[t][gi(g)] * (0.3 + 0.7 / (b as f64).sqrt())),
    )
    .expect("valid random profile")
}

/// 0-24 random batches of 1-8 queries around `now`: the SPEC's query types (0.6 s or 1 s
/// budgets), some already late, some of a task the profile does not know.
fn random_batches(rng: &mut StdRng, tasks: usize, now: f64) -> Vec<Batch> {
    let mut id = 0;
    (0..rng.random_range(0..=24))
        .map(|_| {
            let queries = (0..rng.random_range(1..=8))
                .map(|_| {
                    id += 1;
                    let arrival = now - rng.random_range(0.0..0.8);
                    let budget = if rng.random_bool(0.5) { 0.6 } else { 1.0 };
                    let unknown = usize::from(rng.random_bool(0.05));
                    Query {
                        id,
                        task: rng.random_range(0..tasks + unknown),
                        arrival,
                        deadline: arrival + budget * rng.random_range(0.5..1.5),
                        utility: [0.3, 0.01, 1.0, 0.2, rng.random()][rng.random_range(0..5)],
                    }
                })
                .collect();
            Batch::new(queries)
        })
        .collect()
}

fn check_allocators(seed: u64) {
    let mut rng = StdRng::seed_from_u64(seed);
    let p = random_profile(&mut rng);
    let now = rng.random_range(0.5..1.5);
    let batches = random_batches(&mut rng, p.tasks(), now);
    let load = LoadInfo {
        rate: rng.random_range(0.0..1200.0),
        uptime: rng.random_range(0.0..5.0),
    };
    let runnable: Vec<bool> = batches
        .iter()
        .map(|b| !p.runnable_gammas(b).is_empty())
        .collect();
    let check = |name: &str, a: &Allocation| {
        if let Err(e) = a.verify(now, &batches, &p) {
            panic!("{name}: {e}\n{a:?}");
        }
    };

    let params = DpParams {
        beta: rng.random_range(0..8),
        initial_stage: 2.0,
    };
    let mut dp = DpAllocator::new(params, LoadRule::published()).expect("dp");
    let solved = dp.solve(now, &batches, &p);
    check("dp solve", &solved);
    assert!(
        solved.late(&batches).is_empty(),
        "dp runs a late batch: {solved:?}"
    );
    assert!(solved.expected_utility >= 0.0);
    let routed = dp.allocate(now, &batches, &p, &load);
    check("dp", &routed);
    let mut rule = LoadRule::published();
    let by_rule = rule.allocate(now, &batches, &p, &load);
    check("load rule", &by_rule);
    if batches.len() > params.beta && load.uptime >= params.initial_stage {
        assert_eq!(routed, solved);
    } else {
        assert_eq!(routed, by_rule);
    }
    for (k, &i) in by_rule.order.iter().enumerate() {
        assert_eq!(
            by_rule.choices[k].is_some(),
            runnable[i],
            "load rule skip of batch {i}"
        );
    }
    let mut scheduler = ReductionScheduler::new(0.9).expect("scheduler");
    let by_scheduler = scheduler.allocate(now, &batches, &p, &load);
    check("prodigy scheduler", &by_scheduler);
    for (k, &i) in by_scheduler.order.iter().enumerate() {
        let merge_runnable = p.runnable_gammas(&batches[i]).iter().any(|&g| g <= 0);
        assert_eq!(
            by_scheduler.choices[k].is_some(),
            merge_runnable,
            "prodigy scheduler skip of batch {i}"
        );
    }
    for g in [-20, -7, 0, 4, 9] {
        let mut fixed = FixedGamma::new(g);
        let a = fixed.allocate(now, &batches, &p, &load);
        check(&fixed.name(), &a);
        for (k, &i) in a.order.iter().enumerate() {
            assert_eq!(a.choices[k], p.nearest_runnable(&batches[i], g));
            assert_eq!(a.choices[k].is_some(), runnable[i]);
        }
    }
}

/// Where Alg. 1 as stated in SPEC §4 puts `r` among `batches`: `Some(i)` or a new batch.
fn alg1_reference(p: &BatchingParams, batches: &[Batch], r: &Query) -> Option<usize> {
    for i in (0..batches.len()).rev() {
        let b = &batches[i];
        if r.arrival - b.arrival() > p.delta {
            break;
        }
        if b.len() >= p.epsilon
            || (b.deadline() - r.deadline).abs() > p.eta
            || (b.queries[0].utility - r.utility).abs() > p.mu
        {
            continue;
        }
        return Some(i);
    }
    None
}

/// Drives `f` through 300 random operations, checking the suite's invariants after each.
/// `place` is the reference placement of a new query (see [`alg1_reference`]).
fn check_former(
    f: &mut dyn BatchFormer,
    cap: usize,
    place: &dyn Fn(&[Batch], &Query) -> Option<usize>,
    seed: u64,
) {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut pending: BTreeMap<u64, Query> = BTreeMap::new();
    let mut clock = 0.0;
    assert!(!f.name().is_empty());
    for id in 0..300u64 {
        clock += rng.random_range(0.0..0.05);
        let op = rng.random_range(0..10);
        if op < 8 {
            let budget = if rng.random_bool(0.5) { 0.6 } else { 1.0 };
            let q = Query {
                id,
                task: rng.random_range(0..3),
                arrival: clock,
                deadline: clock + budget * rng.random_range(0.5..1.5),
                utility: [0.3, 0.01, 1.0, 0.2][rng.random_range(0..4)],
            };
            let before = f.batches().to_vec();
            let expected = place(&before, &q);
            f.add(q);
            pending.insert(q.id, q);
            let after = f.batches();
            match expected {
                Some(i) => {
                    assert_eq!(
                        after.len(),
                        before.len(),
                        "query {id} should join batch {i}"
                    );
                    assert_eq!(
                        after[i].queries.last(),
                        Some(&q),
                        "query {id} should join batch {i}"
                    );
                }
                None => {
                    assert_eq!(
                        after.len(),
                        before.len() + 1,
                        "query {id} should open a batch"
                    );
                    assert_eq!(after.last().map(|b| b.queries.as_slice()), Some(&[q][..]));
                }
            }
        } else if op == 8 {
            let i = rng.random_range(0..f.batches().len() + 2);
            let expected = f.batches().get(i).cloned();
            let taken = f.take(i);
            assert_eq!(taken, expected, "take({i})");
            for q in taken.iter().flat_map(|b| &b.queries) {
                assert!(
                    pending.remove(&q.id).is_some(),
                    "query {} returned twice",
                    q.id
                );
            }
        } else {
            let gone = f.evict_expired(clock);
            for q in &gone {
                assert!(
                    q.deadline <= clock,
                    "query {} evicted before its deadline",
                    q.id
                );
                assert!(
                    pending.remove(&q.id).is_some(),
                    "query {} returned twice",
                    q.id
                );
            }
            assert!(
                pending.values().all(|q| q.deadline > clock),
                "an expired query was kept"
            );
        }
        check_batches(f.batches(), cap, &pending);
    }
}

/// Every pending query is in exactly one batch and nothing else is; batches are non-empty,
/// at most `cap` long, in add order (ids increase), with arrival/deadline the members' minima.
fn check_batches(batches: &[Batch], cap: usize, pending: &BTreeMap<u64, Query>) {
    let mut seen: Vec<u64> = Vec::new();
    for b in batches {
        assert!(
            !b.is_empty() && b.len() <= cap,
            "batch of {} (cap {cap})",
            b.len()
        );
        assert!(
            b.queries.windows(2).all(|w| w[0].id < w[1].id),
            "not FIFO: {b:?}"
        );
        let min = |f: fn(&Query) -> f64| b.queries.iter().map(f).fold(f64::INFINITY, f64::min);
        assert_eq!(b.arrival(), min(|q| q.arrival));
        assert_eq!(b.deadline(), min(|q| q.deadline));
        for q in &b.queries {
            assert_eq!(
                pending.get(&q.id),
                Some(q),
                "query {} is not pending as added",
                q.id
            );
            seen.push(q.id);
        }
    }
    seen.sort_unstable();
    let before = seen.len();
    seen.dedup();
    assert_eq!(seen.len(), before, "a query is in two batches");
    assert_eq!(
        seen,
        pending.keys().copied().collect::<Vec<_>>(),
        "queries lost"
    );
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]

    /// The DP's reported utility equals the recomputed utility of its plan and no batch it
    /// runs misses its deadline under the predicted times; every allocator passes `verify`.
    #[test]
    fn allocators_conform(seed in any::<u64>()) {
        check_allocators(seed);
    }

    #[test]
    fn adaptive_batcher_conforms(
        seed in any::<u64>(),
        epsilon in 1usize..8,
        delta in 0.0f64..1.0,
        eta in 0.0f64..1.0,
        mu in 0.0f64..1.0,
    ) {
        let p = BatchingParams { delta, epsilon, eta, mu };
        let mut f = AdaptiveBatcher::new(p).expect("params");
        check_former(&mut f, epsilon, &|b, q| alg1_reference(&p, b, q), seed);
    }

    #[test]
    fn published_adaptive_batcher_conforms(seed in any::<u64>()) {
        let p = BatchingParams::published();
        let mut f = AdaptiveBatcher::published();
        check_former(&mut f, p.epsilon, &|b, q| alg1_reference(&p, b, q), seed);
    }

    #[test]
    fn fixed_size_batcher_conforms(seed in any::<u64>(), size in 1usize..8) {
        let mut f = FixedSizeBatcher::new(size).expect("size");
        let place = |b: &[Batch], _: &Query| {
            b.last().filter(|last| last.len() < size).map(|_| b.len() - 1)
        };
        check_former(&mut f, size, &place, seed);
    }
}
