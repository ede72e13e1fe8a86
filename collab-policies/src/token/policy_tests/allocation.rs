//! Hand-checked allocations (SPEC §4): the DP (Alg. 2) against the load-based rule (Alg. 3),
//! each branch of the rule, its rate table, and fixed gamma.

use collab_core::adaptive::{
    Allocation, Batch, Gamma, LoadInfo, ProfileTable, Query, TokenAllocator, TokenProfile,
};

use super::q;
use crate::token::allocate::{DpAllocator, DpParams};
use crate::token::fixed::FixedGamma;
use crate::token::load_rule::{LoadRule, RateTable};

/// One task, per-sample time independent of batch size: gamma -5: 0.1 s, accuracy 0.5;
/// 0: 0.2 s, 0.8; +4: 0.3 s, 0.9.
fn three_gammas() -> ProfileTable {
    let stats = |g: Gamma| match g {
        -5 => (0.1, 0.5),
        0 => (0.2, 0.8),
        _ => (0.3, 0.9),
    };
    ProfileTable::from_fn(
        vec![-5, 0, 4],
        vec![1],
        1,
        |_, g| Some(stats(g).1),
        |_, g, _| Some(stats(g).0),
    )
    .unwrap()
}

/// Single-query batches (deadline, utility); arrivals 0.
fn singles(spec: &[(f64, f64)]) -> Vec<Batch> {
    spec.iter()
        .enumerate()
        .map(|(i, &(d, u))| Batch::new(vec![q(i as u64, 0.0, d, u)]))
        .collect()
}

/// The DP route (3 batches > beta = 2, uptime past the initial stage) at a rate the
/// published table maps to gamma 0.
fn dp_vs_rule(batches: &[Batch]) -> (Allocation, Allocation) {
    let p = three_gammas();
    let load = LoadInfo {
        rate: 370.0,
        uptime: 5.0,
    };
    let mut dp = DpAllocator::new(
        DpParams {
            beta: 2,
            initial_stage: 2.0,
        },
        LoadRule::published(),
    )
    .unwrap();
    let a = dp.allocate(0.0, batches, &p, &load);
    let r = LoadRule::published().allocate(0.0, batches, &p, &load);
    a.verify(0.0, batches, &p).unwrap();
    r.verify(0.0, batches, &p).unwrap();
    assert!(a.late(batches).is_empty());
    (a, r)
}

#[test]
fn alg2_lowers_an_early_batch_to_save_a_valuable_one() {
    // A (due 0.35, utility 0.1), B (due 0.45, utility 1.0), C (due 10, utility 0.1).
    // Rule: A at the mapped 0 (ends 0.2, 0.08); B is valuable so +4: ends 0.5, late (0);
    // C at 0 (0.08): 0.16. DP: A at -5 (ends 0.1, 0.05), B at +4 (ends 0.4, 0.9), C at +4
    // (0.09): 1.04 -- A at 0 would leave B only gamma -5 or 0 (at most 0.97 in all).
    let batches = singles(&[(0.35, 0.1), (0.45, 1.0), (10.0, 0.1)]);
    let (a, r) = dp_vs_rule(&batches);
    assert_eq!(a.choices, vec![Some(-5), Some(4), Some(4)]);
    assert!(
        (a.expected_utility - 1.04).abs() < 1e-12,
        "{}",
        a.expected_utility
    );
    assert_eq!(r.choices, vec![Some(0), Some(4), Some(0)]);
    assert_eq!(r.late(&batches), vec![1]);
    assert!(
        (r.expected_utility - 0.16).abs() < 1e-12,
        "{}",
        r.expected_utility
    );
    assert_eq!(a.next(), Some((0, -5)));
}

#[test]
fn alg2_skips_an_early_batch_to_save_a_valuable_one() {
    // A (due 0.15, utility 0.1) fits only at -5 (0.05), after which B (due 0.35, utility 1.0)
    // fits at most at 0 (0.8): 0.85. Skipping A lets B run at +4 (0.9), then C at +4 (0.09):
    // 0.99. The rule cannot skip: A at -5 (cannot finish at 0), B at +4 (valuable) ends 0.4,
    // late; C at 0: 0.05 + 0.08 = 0.13.
    let batches = singles(&[(0.15, 0.1), (0.35, 1.0), (10.0, 0.1)]);
    let (a, r) = dp_vs_rule(&batches);
    assert_eq!(a.choices, vec![None, Some(4), Some(4)]);
    assert_eq!(a.skipped(), vec![0]);
    assert_eq!(a.start, vec![None, Some(0.0), Some(0.3)]);
    assert!(
        (a.expected_utility - 0.99).abs() < 1e-12,
        "{}",
        a.expected_utility
    );
    assert_eq!(r.choices, vec![Some(-5), Some(4), Some(0)]);
    assert!(
        (r.expected_utility - 0.13).abs() < 1e-12,
        "{}",
        r.expected_utility
    );
    assert!(a.expected_utility > r.expected_utility);
}

#[test]
fn alg2_hands_short_queues_and_the_initial_stage_to_the_rule() {
    let p = three_gammas();
    let batches = singles(&[(0.15, 0.1), (0.35, 1.0), (10.0, 0.1)]);
    let rule = LoadRule::published().allocate(
        0.0,
        &batches,
        &p,
        &LoadInfo {
            rate: 370.0,
            uptime: 5.0,
        },
    );
    let mut published = DpAllocator::published();
    assert_eq!(published.params(), &DpParams::published());
    assert_eq!(
        (
            DpParams::published().beta,
            DpParams::published().initial_stage
        ),
        (5, 2.0)
    );
    // 3 batches <= beta = 5.
    let load = LoadInfo {
        rate: 370.0,
        uptime: 5.0,
    };
    assert_eq!(published.allocate(0.0, &batches, &p, &load), rule);
    // Past beta but in the initial stage (uptime 1.9 < 2 s).
    let mut dp = DpAllocator::new(
        DpParams {
            beta: 2,
            initial_stage: 2.0,
        },
        LoadRule::published(),
    )
    .unwrap();
    let early = LoadInfo {
        rate: 370.0,
        uptime: 1.9,
    };
    assert_eq!(dp.allocate(0.0, &batches, &p, &early), rule);
    assert_ne!(dp.allocate(0.0, &batches, &p, &load), rule);
    // Nothing to allocate; a batch past its deadline is skipped.
    assert_eq!(dp.solve(0.0, &[], &p), Allocation::empty());
    let late = dp.solve(1.0, &singles(&[(0.5, 1.0)]), &p);
    assert_eq!((late.choices, late.expected_utility), (vec![None], 0.0));
}

/// One task over the published gammas: per-sample time 0.02 + 0.0005 gamma (0.01 s at -20,
/// 0.024 s at +8), accuracy 0.7 + 0.01 gamma. Task 1 lacks gammas 0 and +2 (no prompts);
/// task 2 runs only at +4 and +8.
fn published_gammas() -> ProfileTable {
    let runs = |t: usize, g: Gamma| match t {
        1 => g != 0 && g != 2,
        2 => g >= 4,
        _ => true,
    };
    ProfileTable::from_fn(
        vec![-20, -15, -10, -5, 0, 2, 4, 8],
        vec![1],
        3,
        |t, g| runs(t, g).then(|| 0.7 + 0.01 * f64::from(g)),
        |_, g, _| Some(0.02 + 0.0005 * f64::from(g)),
    )
    .unwrap()
}

fn one(task: usize, deadline: f64, utility: f64) -> Batch {
    Batch::new(vec![Query {
        id: 0,
        task,
        arrival: 0.0,
        deadline,
        utility,
    }])
}

#[test]
fn alg3_branches() {
    let p = published_gammas();
    let rule = LoadRule::published();
    let at = |b: &Batch, clock: f64, rate: f64| rule.choose(clock, b, &p, rate);
    // Mapped: rate 360 -> 0; rate 500 -> -10; rate 100 -> +8.
    assert_eq!(at(&one(0, 1.0, 0.5), 0.0, 360.0), Some(0));
    assert_eq!(at(&one(0, 1.0, 0.5), 0.0, 500.0), Some(-10));
    assert_eq!(at(&one(0, 1.0, 0.5), 0.0, 100.0), Some(8));
    // High utility (> kappa = 0.8): the largest; exactly kappa is not above it.
    assert_eq!(at(&one(0, 1.0, 0.9), 0.0, 500.0), Some(8));
    assert_eq!(at(&one(0, 1.0, 0.8), 0.0, 500.0), Some(-10));
    // Cannot finish at the mapped 0 (0.02 s, due in 0.015 s): the smallest, even when valuable.
    assert_eq!(at(&one(0, 0.015, 0.9), 0.0, 360.0), Some(-20));
    // ...where the running clock counts: due at 1.015 and starting at 1.0.
    assert_eq!(at(&one(0, 1.015, 0.5), 1.0, 360.0), Some(-20));
    assert_eq!(at(&one(0, 1.025, 0.5), 1.0, 360.0), Some(0));
    // Not runnable at the mapped gamma: nearest below (task 1: 0 -> -5), else above (task 2).
    assert_eq!(at(&one(1, 1.0, 0.5), 0.0, 360.0), Some(-5));
    assert_eq!(at(&one(2, 1.0, 0.5), 0.0, 360.0), Some(4));
    assert_eq!(
        at(&one(2, 0.001, 0.5), 0.0, 360.0),
        Some(4),
        "its smallest runnable"
    );
    assert_eq!(at(&one(7, 1.0, 0.5), 0.0, 360.0), None, "unknown task");
}

#[test]
fn alg3_allocation_advances_the_clock_and_never_skips() {
    let p = published_gammas();
    // Two batches due at 0.029: the first runs at the mapped 0 (ends 0.02); the second cannot
    // finish at 0 (0.04) and drops to -20 (ends 0.03: late). Task 7 runs nowhere: skipped.
    let batches = vec![one(0, 0.029, 0.5), one(0, 0.029, 0.5), one(7, 1.0, 1.0)];
    let a = LoadRule::published().allocate(
        0.0,
        &batches,
        &p,
        &LoadInfo {
            rate: 360.0,
            uptime: 0.0,
        },
    );
    a.verify(0.0, &batches, &p).unwrap();
    assert_eq!(a.choices, vec![Some(0), Some(-20), None]);
    assert_eq!(a.late(&batches), vec![1]);
    assert!((a.expected_utility - 0.5 * 0.7).abs() < 1e-12);
}

#[test]
fn rate_table_thresholds() {
    let t = RateTable::published();
    let cases = [
        (0.0, 8),
        (279.9, 8),
        (280.0, 4),
        (319.0, 4),
        (320.0, 2),
        (349.9, 2),
        (350.0, 0),
        (379.0, 0),
        (380.0, -5),
        (449.0, -5),
        (450.0, -10),
        (519.0, -10),
        (520.0, -15),
        (999.0, -15),
        (1000.0, -20),
        (5000.0, -20),
        (f64::NAN, -20),
    ];
    for (rate, g) in cases {
        assert_eq!(t.gamma_for(rate), g, "rate {rate}");
    }
    // Half the throughput: every threshold halves.
    let h = t.scaled(0.5).unwrap();
    assert_eq!(h.thresholds[0], (140.0, 8));
    assert_eq!(h.thresholds[6], (500.0, -15));
    assert_eq!(
        (h.gamma_for(139.0), h.gamma_for(140.0), h.gamma_for(500.0)),
        (8, 4, -20)
    );
    assert_eq!(t.scaled(2.0).unwrap().gamma_for(999.0), -10);
    for bad in [0.0, -1.0, f64::NAN, f64::INFINITY] {
        assert!(t.scaled(bad).is_err(), "factor {bad}");
    }
    t.validate().unwrap();
    let unsorted = RateTable {
        thresholds: vec![(300.0, 4), (200.0, 8)],
        otherwise: 0,
    };
    assert!(LoadRule::new(unsorted, 0.8).is_err());
    assert!(LoadRule::new(t.clone(), f64::NAN).is_err());
    assert_eq!(LoadRule::published().kappa(), 0.8);
}

#[test]
fn fixed_gamma_runs_everything_at_its_gamma_or_the_nearest() {
    let p = published_gammas();
    let batches = vec![
        one(0, 1.0, 0.5),
        one(1, 1.0, 0.5),
        one(2, 1.0, 0.5),
        one(7, 1.0, 0.5),
    ];
    let load = LoadInfo {
        rate: 0.0,
        uptime: 0.0,
    };
    let a = FixedGamma::new(2).allocate(0.0, &batches, &p, &load);
    a.verify(0.0, &batches, &p).unwrap();
    assert_eq!(a.choices, vec![Some(2), Some(-5), Some(4), None]);
    let b = FixedGamma::new(3).allocate(0.0, &batches, &p, &load);
    assert_eq!(
        b.choices,
        vec![Some(2), Some(-5), Some(4), None],
        "3 is not profiled"
    );
    assert_eq!(FixedGamma::new(-5).name(), "fixed(-5)");
    assert_eq!(p.nearest_runnable(&batches[0], -30), Some(-20));
}

#[test]
fn profiled_rate_table_follows_measured_throughput() {
    // Per-sample times at batch sizes 1 and 8 for gammas -10, 0, 4 (throughput = 1 / time).
    // Gamma 4 (the largest) comes first; gamma 0, measured slower than gamma 4 (noise), gets
    // gamma 4's threshold so that thresholds stay ascending.
    let times = |g: Gamma, b: usize| match (g, b) {
        (-10, 1) => 0.05,
        (-10, _) => 0.025, // 40/s
        (0, 1) => 0.1,
        (0, _) => 0.09, // 11.1/s, below gamma 4's 12.5/s: never chosen
        (_, 1) => 0.1,
        (_, _) => 0.08, // 12.5/s
    };
    let p = ProfileTable::from_fn(
        vec![-10, 0, 4],
        vec![1, 8],
        1,
        |_, _| Some(0.5),
        |_, g, b| Some(times(g, b)),
    )
    .unwrap();
    let t = RateTable::profiled(&p, 0, 0.8).unwrap();
    assert_eq!(t.otherwise, -10);
    // Gamma 0 (11.1/s at best) is no faster than gamma 4 (12.5/s): left out, never chosen.
    assert_eq!(t.thresholds.len(), 1);
    assert_eq!(t.thresholds[0].1, 4);
    assert!((t.thresholds[0].0 - 0.8 * 12.5).abs() < 1e-9);
    t.validate().unwrap();
    LoadRule::new(t.clone(), LoadRule::PUBLISHED_KAPPA).unwrap();
    assert_eq!(
        (t.gamma_for(9.0), t.gamma_for(10.5), t.gamma_for(100.0)),
        (4, -10, -10)
    );
    for bad in [0.0, 1.5, f64::NAN] {
        assert!(RateTable::profiled(&p, 0, bad).is_err(), "headroom {bad}");
    }
    assert!(RateTable::profiled(&p, 3, 0.8).is_err(), "no such task");
}
