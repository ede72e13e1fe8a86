//! Hand-checked cases of the OTAS serving policies (SPEC §4): adaptive batching (Alg. 1), the
//! DP allocator (Alg. 2), the load-based rule (Alg. 3) and fixed gamma (in [`allocation`]);
//! the randomised conformance suites every allocator and batch former runs are in
//! [`conformance`].
#![allow(clippy::unwrap_used)]

mod allocation;
mod conformance;

use collab_core::adaptive::{BatchFormer, Query};

use super::batching::{AdaptiveBatcher, BatchingParams, FixedSizeBatcher};

pub(super) fn q(id: u64, arrival: f64, deadline: f64, utility: f64) -> Query {
    Query {
        id,
        task: 0,
        arrival,
        deadline,
        utility,
    }
}

/// The ids of each batch, oldest batch first.
fn ids(f: &dyn BatchFormer) -> Vec<Vec<u64>> {
    f.batches()
        .iter()
        .map(|b| b.queries.iter().map(|q| q.id).collect())
        .collect()
}

fn adaptive(epsilon: usize) -> AdaptiveBatcher {
    AdaptiveBatcher::new(BatchingParams {
        epsilon,
        ..BatchingParams::published()
    })
    .unwrap()
}

fn feed(f: &mut dyn BatchFormer, qs: &[Query]) -> Vec<Vec<u64>> {
    for &x in qs {
        f.add(x);
    }
    ids(f)
}

#[test]
fn alg1_stops_scanning_at_a_batch_older_than_delta() {
    // q2's deadline is 1 s later than q1's (eta skip). q3 fits batch [1] on every count, but
    // the scan meets batch [2] first, skips it (deadline), then finds batch [1] 0.6 s older
    // than q3 (> delta = 0.5): it stops and opens a new batch.
    let qs = [
        q(1, 0.0, 1.0, 0.3),
        q(2, 0.3, 2.0, 0.3),
        q(3, 0.6, 1.0, 0.3),
    ];
    assert_eq!(
        feed(&mut adaptive(64), &qs),
        vec![vec![1], vec![2], vec![3]]
    );
    // Within delta (0.45 s after q1), q3 would have joined batch [1].
    let qs = [
        q(1, 0.0, 1.0, 0.3),
        q(2, 0.3, 2.0, 0.3),
        q(3, 0.45, 1.0, 0.3),
    ];
    assert_eq!(feed(&mut adaptive(64), &qs), vec![vec![1, 3], vec![2]]);
}

#[test]
fn alg1_skips_a_full_batch_and_keeps_scanning() {
    // epsilon = 2. q2 differs from q1 in utility by 0.9 > mu: new batch; q3 joins it (full);
    // q4 (utility 0.5) skips the full batch and joins the older [1] (|0.1 - 0.5| <= 0.8).
    let qs = [
        q(1, 0.0, 1.0, 0.1),
        q(2, 0.1, 1.0, 1.0),
        q(3, 0.2, 1.0, 1.0),
        q(4, 0.3, 1.0, 0.5),
    ];
    assert_eq!(feed(&mut adaptive(2), &qs), vec![vec![1, 4], vec![2, 3]]);
    // With room (epsilon = 64), q4 joins the newest batch instead (|1.0 - 0.5| <= 0.8).
    assert_eq!(feed(&mut adaptive(64), &qs), vec![vec![1], vec![2, 3, 4]]);
    // A full newest batch with nothing older: a new batch.
    let qs = [
        q(1, 0.0, 1.0, 0.1),
        q(2, 0.1, 1.0, 0.1),
        q(3, 0.2, 1.0, 0.1),
    ];
    assert_eq!(feed(&mut adaptive(2), &qs), vec![vec![1, 2], vec![3]]);
}

#[test]
fn alg1_skips_a_batch_whose_deadline_is_more_than_eta_away() {
    // q2's deadline is 0.6 s after q1's: new batch. q3 (deadline 1.0) skips [2] (0.6 > 0.5) and
    // joins [1]; q4 (deadline 1.5) would fit [1] too (0.5 away), but the scan reaches [2] first
    // (0.1 away) and joins it.
    let qs = [
        q(1, 0.0, 1.0, 0.3),
        q(2, 0.1, 1.6, 0.3),
        q(3, 0.2, 1.0, 0.3),
        q(4, 0.3, 1.5, 0.3),
    ];
    let mut f = adaptive(64);
    assert_eq!(feed(&mut f, &qs), vec![vec![1, 3], vec![2, 4]]);
    // A batch's deadline is its earliest: [2, 4] is due at 1.5.
    assert_eq!(f.batches()[1].deadline(), 1.5);
    assert_eq!(f.batches()[1].arrival(), 0.1);
}

#[test]
fn alg1_skips_a_batch_whose_first_utility_is_more_than_mu_away() {
    // q2 (utility 1.0) is 0.9 from q1 (0.1): new batch. q3 (0.15) is 0.85 from [2]'s first:
    // skip, joins [1]. q4 (0.25) is 0.75 from [2]'s first (1.0), so it joins [2] although it
    // is closer to [1]: only the first query's utility counts, newest batch first.
    let qs = [
        q(1, 0.0, 1.0, 0.1),
        q(2, 0.1, 1.0, 1.0),
        q(3, 0.2, 1.0, 0.15),
        q(4, 0.3, 1.0, 0.25),
    ];
    assert_eq!(feed(&mut adaptive(64), &qs), vec![vec![1, 3], vec![2, 4]]);
}

#[test]
fn formers_take_and_evict() {
    let mut f = FixedSizeBatcher::new(2).unwrap();
    let qs: Vec<Query> = (1..=5)
        .map(|i| q(i, 0.1 * i as f64, 1.0 + 0.1 * i as f64, 0.3))
        .collect();
    assert_eq!(feed(&mut f, &qs), vec![vec![1, 2], vec![3, 4], vec![5]]);
    assert_eq!(f.take(0).unwrap().queries.len(), 2);
    assert!(f.take(5).is_none());
    f.add(q(6, 0.6, 1.6, 0.3));
    assert_eq!(ids(&f), vec![vec![3, 4], vec![5, 6]]);
    // Deadlines 1.3, 1.4 | 1.5, 1.6: evicting at 1.5 removes 3, 4 (batch dropped) and 5 (deadline
    // equal to now).
    let gone: Vec<u64> = f.evict_expired(1.5).iter().map(|q| q.id).collect();
    assert_eq!(gone, vec![3, 4, 5]);
    assert_eq!(ids(&f), vec![vec![6]]);
    assert_eq!(f.name(), "fixed(2)");
    assert!(FixedSizeBatcher::new(0).is_err());

    let mut a = AdaptiveBatcher::published();
    feed(&mut a, &qs);
    assert_eq!(ids(&a), vec![vec![1, 2, 3, 4, 5]]);
    assert_eq!(a.evict_expired(1.25).len(), 2);
    assert_eq!(ids(&a), vec![vec![3, 4, 5]]);
    assert_eq!(a.take(0).unwrap().len(), 3);
    assert!(a.batches().is_empty());
}

#[test]
fn batching_params_are_checked() {
    assert_eq!(
        AdaptiveBatcher::published().params(),
        &BatchingParams::published()
    );
    let p = BatchingParams::published();
    assert_eq!((p.delta, p.epsilon, p.eta, p.mu), (0.5, 64, 0.5, 0.8));
    for bad in [
        BatchingParams { epsilon: 0, ..p },
        BatchingParams { delta: -1.0, ..p },
        BatchingParams { eta: f64::NAN, ..p },
        BatchingParams { mu: -0.1, ..p },
    ] {
        assert!(AdaptiveBatcher::new(bad).is_err(), "{bad:?}");
    }
}
