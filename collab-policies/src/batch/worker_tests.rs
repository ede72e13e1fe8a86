//! Unit tests of the worker: rejection, expiry, failures, rogue policies, stamping.

use collab_core::batch::{BatchPolicy, Outcome, QueueView};

use crate::batch::conformance::{Call, MockExecutor};
use crate::batch::{Executor, PerSplit, ServerOnly, SharedModel, Work, Worker};

fn shared(budget: usize) -> SharedModel {
    SharedModel::new(budget).expect("budget >= 1")
}

#[test]
fn invalid_requests_are_rejected_at_once() {
    let mut w = Worker::new(shared(4), MockExecutor::new(3, 4), |_, _| 0.0);
    let bad_entry = w.enqueue(1, 4, 0.0, 1.0, 1).expect_err("entry past L");
    assert!(matches!(bad_entry.outcome, Outcome::Invalid(ref m) if m.contains("entry 4")));
    w.enqueue(1, 2, 0.0, 1.0, 1).expect("valid");
    let dup = w.enqueue(1, 0, 0.0, 1.0, 1).expect_err("duplicate");
    assert!(matches!(dup.outcome, Outcome::Invalid(ref m) if m.contains("already")));
    for deadline in [f64::NAN, f64::INFINITY, -0.5] {
        let r = w.enqueue(2, 0, 0.0, deadline, 2).expect_err("bad deadline");
        assert_eq!(r.finished, 0.0);
    }
    assert_eq!(w.stats().invalid, 5);
    assert_eq!(w.stats().accepted, 1);
    assert_eq!(w.queued(), 1);

    let mut so = Worker::new(
        ServerOnly::new(2).expect("budget"),
        MockExecutor::new(3, 2),
        |_, _| 0.0,
    );
    let r = so
        .enqueue(7, 1, 0.0, 1.0, 7)
        .expect_err("server-only takes entry 0 only");
    assert!(matches!(r.outcome, Outcome::Invalid(ref m) if m.contains("server-only")));
    so.enqueue(8, 0, 0.0, 1.0, 8).expect("entry 0");
}

#[test]
fn an_id_may_be_reused_once_answered() {
    let mut w = Worker::new(shared(4), MockExecutor::new(0, 4), |_, _| 0.0);
    w.enqueue(1, 0, 0.0, 1.0, 1).expect("valid");
    // L = 0: position 0 is the head; one step answers.
    let step = w.step(0.0);
    assert_eq!(
        step.work,
        Work::Ran {
            position: 0,
            batch: 1
        }
    );
    assert_eq!(step.responses[0].outcome, Outcome::Done(1));
    w.enqueue(1, 0, 0.0, 1.0, 1).expect("id 1 is free again");
}

#[test]
fn hopeless_requests_in_any_queue_are_answered_deadline_missed() {
    // remaining(p, b) = 1 s per position left.
    let rem = |p: usize, _b: usize| (4 - p) as f64;
    let mut w = Worker::new(shared(4), MockExecutor::new(3, 4), rem);
    w.enqueue(1, 0, 0.0, 10.0, 1).expect("valid"); // needs 4 s
    w.enqueue(2, 2, 0.0, 2.5, 2).expect("valid"); // needs 2 s: hopeless after t = 0.5
    w.enqueue(3, 3, 0.0, 0.5, 3).expect("valid"); // needs 1 s: hopeless at once
    let step = w.step(0.0);
    assert_eq!(step.responses.len(), 1);
    assert_eq!(step.responses[0].id, 3);
    assert_eq!(step.responses[0].outcome, Outcome::DeadlineMissed);
    assert_eq!(step.responses[0].finished, 0.0);
    // The pass began at 0; at t = 1 request 2 (queue 2, not the current position) expires.
    let step = w.step(1.0);
    assert_eq!(
        step.work,
        Work::Ran {
            position: 1,
            batch: 1
        }
    );
    assert_eq!(step.responses.len(), 1);
    assert_eq!(step.responses[0].id, 2);
    assert_eq!(w.stats().deadline_missed, 2);
    assert_eq!(w.queued(), 0);
}

#[test]
fn an_executor_failure_fails_the_batch_and_spares_the_queues() {
    // Every call fails: the first batch is answered Failed, the queued requests stay.
    let exec = MockExecutor::new(2, 2).with_failures(1.0, 0);
    let mut w = Worker::new(PerSplit::new(2).expect("budget"), exec, |_, _| 0.0);
    for id in 1..=3 {
        w.enqueue(id, 0, 0.0, 5.0, id).expect("valid");
    }
    let step = w.step(0.0);
    let failed: Vec<u64> = step.responses.iter().map(|r| r.id).collect();
    assert_eq!(failed, vec![1, 2]);
    assert!(
        step.responses
            .iter()
            .all(|r| matches!(&r.outcome, Outcome::Failed(m) if m.contains("injected")))
    );
    assert_eq!((w.queued(), w.running()), (1, 0));
    assert_eq!(w.position(), None);
    assert_eq!(w.stats().failed, 2);
}

/// Returns one output too few from the head.
#[derive(Debug)]
struct ShortHead;

impl Executor for ShortHead {
    type Payload = u64;
    type Batch = Vec<u64>;
    type Output = u64;

    fn layers(&self) -> usize {
        1
    }

    fn join(
        &mut self,
        batch: Option<Vec<u64>>,
        items: Vec<u64>,
        _position: usize,
    ) -> collab_core::Result<Vec<u64>> {
        let mut b = batch.unwrap_or_default();
        b.extend(items);
        Ok(b)
    }

    fn run_block(&mut self, batch: Vec<u64>, _block: usize) -> collab_core::Result<Vec<u64>> {
        Ok(batch)
    }

    fn finish(&mut self, mut batch: Vec<u64>) -> collab_core::Result<Vec<u64>> {
        batch.pop();
        Ok(batch)
    }
}

#[test]
fn a_head_with_the_wrong_number_of_outputs_fails_the_batch() {
    let mut w = Worker::new(shared(4), ShortHead, |_, _| 0.0);
    w.enqueue(1, 0, 0.0, 5.0, 1).expect("valid");
    w.enqueue(2, 0, 0.0, 5.0, 2).expect("valid");
    assert!(w.step(0.0).responses.is_empty());
    let mut step = w.step(1.0);
    step.set_finished(1.5);
    assert_eq!(step.responses.len(), 2);
    assert!(step.responses.iter().all(|r| r.finished == 1.5
        && matches!(&r.outcome, Outcome::Failed(m) if m.contains("1 outputs for a batch of 2"))));
}

/// Breaks every rule: starts at empty or absent positions and admits far too many.
#[derive(Debug)]
struct Rogue {
    starts: Vec<Option<usize>>,
}

impl BatchPolicy for Rogue {
    fn name(&self) -> String {
        "rogue".into()
    }

    fn budget(&self) -> usize {
        2
    }

    fn start(&mut self, _queues: &QueueView<'_>, _now: f64) -> Option<usize> {
        self.starts.pop().unwrap_or(Some(0))
    }

    fn admit(&mut self, _p: usize, _r: usize, _q: &QueueView<'_>, _now: f64) -> usize {
        usize::MAX
    }
}

#[test]
fn a_rogue_policy_is_clamped_and_counted_never_a_panic() {
    let policy = Rogue {
        starts: vec![Some(0), Some(99), Some(2)],
    };
    let mut w = Worker::new(policy, MockExecutor::new(3, 2), |_, _| 0.0);
    for id in 1..=5 {
        w.enqueue(id, 0, 0.0, 100.0, id).expect("valid");
    }
    assert_eq!(w.step(0.0).work, Work::Idle); // start at empty queue 2
    assert_eq!(w.step(0.0).work, Work::Idle); // start at absent queue 99
    assert_eq!(w.stats().policy_violations, 2);
    let mut done = 0;
    for k in 0..20 {
        done += w.step(k as f64).responses.len();
    }
    assert_eq!(done, 5);
    assert_eq!(w.stats().max_batch, 2);
    assert!(
        w.executor().errors().is_empty(),
        "{:?}",
        w.executor().errors()
    );
    assert!(w.stats().policy_violations > 2);
}

#[test]
fn set_finished_stamps_compute_results_only() {
    let rem = |p: usize, _b: usize| (2 - p) as f64;
    let mut w = Worker::new(shared(4), MockExecutor::new(1, 4), rem);
    w.enqueue(1, 1, 0.0, 5.0, 1).expect("valid");
    w.enqueue(2, 0, 0.0, 1.0, 2).expect("valid"); // needs 2 s: hopeless
    let mut step = w.step(0.5);
    step.set_finished(0.7);
    let by_id = |id: u64| step.responses.iter().find(|r| r.id == id);
    assert_eq!(by_id(2).map(|r| r.finished), Some(0.5));
    assert_eq!(
        by_id(1).map(|r| (r.finished, r.met_deadline())),
        Some((0.7, true))
    );
    assert_eq!(
        w.executor_mut().take_calls(),
        vec![
            Call::Join {
                position: 1,
                ids: vec![1],
                batch: 1
            },
            Call::Head { ids: vec![1] }
        ]
    );
}
