//! Unit tests of the shared-model policy: the share computation, the round robin of the
//! priority, reservations for later positions, and joining across positions in a worker.

use std::collections::VecDeque;

use collab_core::batch::{BatchPolicy, Outcome, QueueView, Queued};
use proptest::prelude::*;

use super::*;
use crate::batch::Worker;
use crate::batch::conformance::{Call, MockExecutor};

fn queues(lens: &[usize]) -> Vec<VecDeque<Queued>> {
    let mut id = 0;
    lens.iter()
        .map(|&n| {
            (0..n)
                .map(|_| {
                    id += 1;
                    Queued {
                        id,
                        arrival: 0.0,
                        deadline: 100.0,
                    }
                })
                .collect()
        })
        .collect()
}

#[test]
fn prioritised_queue_takes_the_major_share_and_the_rest_is_proportional() {
    // B = 8, major 0.75: priority 6; the other 2 split 10:20 -> 0.67 and 1.33, largest
    // remainder gives the second unit to the first queue.
    assert_eq!(shares(&[10, 30, 20, 0], 1, 8, 0.75), vec![1, 6, 1, 0]);
    // B = 16, major 0.5: priority 8; the other 8 split 10:30 -> 2 and 6.
    assert_eq!(shares(&[10, 0, 30, 40], 3, 16, 0.5), vec![2, 0, 6, 8]);
    // ceil: B = 5, major 0.75 -> 4 (3.75 rounded up).
    assert_eq!(shares(&[9, 9], 0, 5, 0.75), vec![4, 1]);
    // major share 1: the prioritised queue may take everything.
    assert_eq!(shares(&[9, 9], 1, 4, 1.0), vec![0, 4]);
}

#[test]
fn shares_are_capped_by_length_and_leftovers_redistributed() {
    // The short prioritised queue leaves its unused share to the others.
    assert_eq!(shares(&[2, 10], 0, 8, 0.75), vec![2, 6]);
    // Others shorter than their share: the leftover goes back to the prioritised queue.
    assert_eq!(shares(&[1, 100, 1], 1, 10, 0.75), vec![1, 8, 1]);
    assert_eq!(shares(&[1, 100, 0], 1, 10, 0.5), vec![1, 9, 0]);
    // Everything fits.
    assert_eq!(shares(&[0, 3, 1], 1, 10, 0.75), vec![0, 3, 1]);
    // Largest remainder: 9 split 1:9 -> 0.9 and 8.1, the unit left goes to the 0.9.
    assert_eq!(shares(&[1, 6, 9], 1, 12, 0.25), vec![1, 3, 8]);
}

proptest! {
    #[test]
    fn shares_respect_budget_lengths_and_fill_what_they_can(
        lens in proptest::collection::vec(0usize..20, 1..8),
        prio in 0usize..8,
        budget in 1usize..40,
        major in 0.01f64..=1.0,
    ) {
        let prio = prio % lens.len();
        let s = shares(&lens, prio, budget, major);
        prop_assert_eq!(s.len(), lens.len());
        prop_assert!(s.iter().zip(&lens).all(|(s, l)| s <= l));
        let total: usize = lens.iter().sum();
        prop_assert_eq!(s.iter().sum::<usize>(), budget.min(total));
        if lens[prio] > 0 {
            let major = ((major * budget as f64).ceil() as usize).clamp(1, budget);
            prop_assert!(s[prio] >= major.min(lens[prio]));
        }
    }
}

#[test]
fn priority_rotates_round_robin_over_non_empty_queues() {
    let mut p = SharedModel::new(4).expect("budget");
    let q = queues(&[3, 0, 2, 5]);
    let view = QueueView::new(&q);
    let mut seen = Vec::new();
    for _ in 0..4 {
        p.start(&view, 0.0);
        seen.push(p.priority());
    }
    assert_eq!(seen, vec![Some(0), Some(2), Some(3), Some(0)]);
}

#[test]
fn pass_starts_at_earliest_positive_share_and_reserves_for_later_positions() {
    let mut p = SharedModel::new(8).expect("budget");
    // Priority goes to queue 0 first (round robin from 0): 6, the other 2 split 4:4.
    let q = queues(&[10, 0, 4, 4]);
    let view = QueueView::new(&q);
    assert_eq!(p.start(&view, 0.0), Some(0));
    assert_eq!(p.current_shares(), &[6, 0, 1, 1]);
    // Position 0 may take everything but the 2 reserved for positions 2 and 3.
    assert_eq!(p.admit(0, 0, &view, 0.0), 6);
    assert_eq!(p.admit(1, 6, &view, 0.0), 0);
    assert_eq!(p.admit(2, 6, &view, 0.0), 1);
    assert_eq!(p.admit(3, 7, &view, 0.0), 1);

    // Next pass: priority moves to queue 2 (its 4), the other 4 split 10:4 -> 3 and 1.
    assert_eq!(p.start(&view, 0.0), Some(0));
    assert_eq!(p.priority(), Some(2));
    assert_eq!(p.current_shares(), &[3, 0, 4, 1]);
    // Suppose queue 0 shrank to 1 (expiries) before the pass admitted from it: a later queue
    // may use the capacity it left, never what is reserved further on.
    let shrunk = queues(&[1, 0, 4, 4]);
    let view = QueueView::new(&shrunk);
    assert_eq!(p.admit(0, 0, &view, 0.0), 1);
    assert_eq!(p.admit(2, 1, &view, 0.0), 4);
    assert_eq!(p.admit(3, 5, &view, 0.0), 3);
}

#[test]
fn a_short_earliest_queue_gets_no_share_and_the_pass_starts_later() {
    // B = 4, major 0.75: priority (queue 0 by round robin) 3, the last unit goes to the
    // longer other queue.
    let mut p = SharedModel::new(4).expect("budget");
    let q = queues(&[5, 1, 10]);
    let view = QueueView::new(&q);
    assert_eq!(p.start(&view, 0.0), Some(0));
    assert_eq!(p.current_shares(), &[3, 0, 1]);
    let mut p = SharedModel::new(4).expect("budget");
    let q = queues(&[1, 0, 10, 10]);
    // Priority 0 first ([1, 0, 2, 1]); then priority 2 leaves nothing to queue 0.
    assert_eq!(p.start(&QueueView::new(&q), 0.0), Some(0));
    assert_eq!(p.current_shares(), &[1, 0, 2, 1]);
    assert_eq!(p.start(&QueueView::new(&q), 0.0), Some(2));
    assert_eq!(p.current_shares(), &[0, 0, 3, 1]);
}

#[test]
fn config_is_validated() {
    assert!(SharedModel::new(0).is_err());
    let p = SharedModel::new(4).expect("budget");
    assert!(p.clone().with_major_share(0.0).is_err());
    assert!(p.clone().with_major_share(1.5).is_err());
    assert!(p.clone().with_major_share(f64::NAN).is_err());
    assert_eq!(p.with_major_share(1.0).expect("valid").major_share(), 1.0);
}

#[test]
fn a_request_entering_at_block_3_joins_a_batch_begun_at_block_1() {
    let policy = SharedModel::new(8).expect("budget");
    let mut w = Worker::new(policy, MockExecutor::new(6, 8), |_, _| 0.0);
    w.enqueue(1, 1, 0.0, 10.0, 1).expect("valid");
    w.enqueue(2, 1, 0.0, 10.0, 2).expect("valid");
    w.step(0.0); // joins 1 and 2, runs block 1
    w.step(0.1); // block 2
    w.enqueue(3, 3, 0.2, 10.0, 3).expect("valid");
    w.step(0.2); // joins 3, runs block 3
    let calls = w.executor_mut().take_calls();
    assert!(
        calls.contains(&Call::Join {
            position: 3,
            ids: vec![3],
            batch: 3
        }),
        "{calls:?}"
    );
    let mut done = Vec::new();
    for k in 0..4 {
        done.extend(w.step(0.3 + 0.1 * k as f64).responses);
    }
    let ids: Vec<u64> = done.iter().map(|r| r.id).collect();
    assert_eq!(ids, vec![1, 2, 3]);
    assert!(done.iter().all(|r| r.outcome == Outcome::Done(r.id)));
    assert_eq!(w.stats().passes, 1);
    assert_eq!(w.stats().max_batch, 3);
    assert!(w.is_empty());
}
