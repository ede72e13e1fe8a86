//! Unit tests of the suite itself: it passes good policies and catches bad ones.

use collab_core::batch::{BatchPolicy, QueueView};
use collab_core::seed::parse_u64;

use super::*;
use crate::batch::{PerSplit, SharedModel};

/// Admits one more than it may at the start position (over budget when the queue allows).
#[derive(Debug)]
struct Greedy(PerSplit);

impl BatchPolicy for Greedy {
    fn name(&self) -> String {
        "greedy".into()
    }

    fn budget(&self) -> usize {
        self.0.budget()
    }

    fn start(&mut self, queues: &QueueView<'_>, now: f64) -> Option<usize> {
        self.0.start(queues, now)
    }

    fn admit(&mut self, p: usize, running: usize, queues: &QueueView<'_>, now: f64) -> usize {
        self.0.admit(p, running, queues, now) + 1
    }
}

/// Never starts a pass.
#[derive(Debug)]
struct Lazy(usize);

impl BatchPolicy for Lazy {
    fn name(&self) -> String {
        "lazy".into()
    }

    fn budget(&self) -> usize {
        self.0
    }

    fn start(&mut self, _queues: &QueueView<'_>, _now: f64) -> Option<usize> {
        None
    }

    fn admit(&mut self, _p: usize, _r: usize, _q: &QueueView<'_>, _now: f64) -> usize {
        0
    }
}

#[test]
fn the_suite_catches_contract_breaches() {
    let heavy = Scenario::random(7, Load::Heavy);
    let greedy = |b| Greedy(PerSplit::new(b).expect("budget"));
    let err = check_policy(greedy, &heavy, true).expect_err("over-admitting is a violation");
    assert!(err.contains("policy_violations"), "{err}");
    let err = check_policy(Lazy, &heavy, true).expect_err("idle with work queued");
    assert!(err.contains("idle with"), "{err}");
    // An idle policy still drains: every request expires and is answered once.
    let report = check_policy(Lazy, &heavy, false).expect("drains by expiry");
    assert_eq!(report.stats.deadline_missed, report.stats.accepted);
}

#[test]
fn a_fixed_seed_passes_every_load() {
    for load in Load::ALL {
        let shared = |b| SharedModel::new(b).expect("budget");
        check_rounds(shared, load, 42, 4, true).unwrap_or_else(|e| panic!("{e}"));
    }
}

#[test]
fn seeds_parse_in_decimal_and_hex() {
    assert_eq!(parse_u64(" 42 "), Some(42));
    assert_eq!(parse_u64("0x2A"), Some(42));
    assert_eq!(parse_u64("x"), None);
    assert_ne!(round_seed(1, Load::Light, 0), round_seed(1, Load::Light, 1));
}
