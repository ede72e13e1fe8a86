//! One round of the suite: a simulated clock drives a [`Worker`] over a [`Scenario`]'s
//! traffic until every request is answered, and every invariant is checked on the way.

use std::collections::{BTreeSet, HashMap};

use collab_core::batch::{BatchPolicy, Outcome, Response};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::mock::{Call, MockExecutor};
use super::scenario::{Scenario, block_time, remaining};
use crate::batch::{Stats, Work, Worker};

/// What a passing round covered.
#[derive(Clone, Debug)]
pub struct Report {
    /// The policy's name.
    pub policy: String,
    /// The worker's counters at the end.
    pub stats: Stats,
    /// Steps simulated.
    pub steps: usize,
    /// Simulated seconds until the last answer.
    pub seconds: f64,
}

/// What the checker knows of one accepted request.
#[derive(Debug)]
struct Held {
    entry: usize,
    arrival: f64,
    deadline: f64,
    /// Global join sequence number, when it joined a batch.
    join_seq: Option<usize>,
    join_step: Option<usize>,
    /// Step and outcome kind of its answers.
    answers: Vec<(usize, &'static str)>,
}

fn kind<O>(o: &Outcome<O>) -> &'static str {
    match o {
        Outcome::Done(_) => "done",
        Outcome::DeadlineMissed => "deadline-missed",
        Outcome::Invalid(_) => "invalid",
        Outcome::Failed(_) => "failed",
    }
}

/// Runs `scenario` against the policy `make(scenario.budget)` and checks the suite's
/// invariants (see the module docs); `Err` lists every breach found (at most the first 20).
///
/// With `work_conserving`, the worker must never be idle while requests are queued and no
/// batch runs (true of every policy that starts a pass whenever a queue is non-empty).
pub fn check_policy<P: BatchPolicy>(
    make: impl Fn(usize) -> P,
    scenario: &Scenario,
    work_conserving: bool,
) -> Result<Report, String> {
    let s = scenario;
    let layers = s.layers;
    let policy = make(s.budget);
    let name = policy.name();
    let budget = policy.budget();
    let mut errors: Vec<String> = Vec::new();
    if budget != s.budget {
        errors.push(format!(
            "budget() = {budget}, constructed with {}",
            s.budget
        ));
    }
    let rem = remaining(layers);
    let exec = MockExecutor::new(layers, budget).with_failures(s.fail_rate, s.seed ^ 0xFA11);
    let mut worker = Worker::new(policy, exec, rem);
    let mut rng = StdRng::seed_from_u64(s.seed ^ 0xD0B1E);
    let arrivals = s.arrivals();

    let mut held: HashMap<u64, Held> = HashMap::new();
    let mut live: BTreeSet<u64> = BTreeSet::new(); // accepted, not yet answered
    let mut per_queue: Vec<Vec<u64>> = vec![Vec::new(); layers + 1];
    let (mut next_id, mut invalid, mut join_seq) = (0u64, 0usize, 0usize);
    let (mut t, mut i, mut step_no) = (0.0f64, 0usize, 0usize);
    let max_steps = 10_000 + s.requests * (layers + 2) * 100;

    loop {
        while i < arrivals.len() && arrivals[i].time <= t {
            let a = arrivals[i];
            i += 1;
            let id = match (a.duplicate, live.len()) {
                (true, n) if n > 0 => live.iter().nth(rng.random_range(0..n)).copied(),
                _ => None,
            }
            .unwrap_or_else(|| {
                next_id += 1;
                next_id
            });
            let expect_invalid = a.entry > layers
                || !worker.policy().accepts(a.entry, layers)
                || live.contains(&id)
                || !a.deadline.is_finite()
                || a.deadline < 0.0;
            match worker.enqueue(id, a.entry, a.time, a.deadline, id) {
                Ok(()) if expect_invalid => errors.push(format!(
                    "accepted an invalid request (id {id}, entry {}, deadline {}, L {layers})",
                    a.entry, a.deadline
                )),
                Ok(()) => {
                    live.insert(id);
                    per_queue[a.entry].push(id);
                    let h = Held {
                        entry: a.entry,
                        arrival: a.time,
                        deadline: a.deadline,
                        join_seq: None,
                        join_step: None,
                        answers: Vec::new(),
                    };
                    held.insert(id, h);
                }
                Err(r) => {
                    invalid += 1;
                    if !expect_invalid {
                        errors.push(format!("rejected a valid request {id}: {:?}", r.outcome));
                    }
                    if !matches!(r.outcome, Outcome::Invalid(_)) || r.id != id || r.entry != a.entry
                    {
                        errors.push(format!("rejection of {id} is not an Invalid echo: {r:?}"));
                    }
                }
            }
        }
        if i == arrivals.len() && worker.is_empty() {
            break;
        }
        if step_no > max_steps || errors.len() > 20 {
            errors.push(format!(
                "stopped after {step_no} steps: {} queued, {} running",
                worker.queued(),
                worker.running()
            ));
            break;
        }
        let mut step = worker.step(t);
        let calls = worker.executor_mut().take_calls();
        let end = match step.work {
            Work::Idle => {
                if !calls.is_empty() {
                    errors.push(format!("step {step_no}: idle but called {calls:?}"));
                }
                if work_conserving && worker.running() == 0 && worker.queued() > 0 {
                    errors.push(format!(
                        "step {step_no}: idle with {} queued",
                        worker.queued()
                    ));
                }
                t
            }
            Work::Ran { position, batch } => {
                if batch == 0 || batch > budget {
                    errors.push(format!(
                        "step {step_no}: ran a batch of {batch} (B {budget})"
                    ));
                }
                let last = calls.iter().rev().find_map(|c| match c {
                    Call::Join { batch, .. } | Call::Block { batch, .. } => Some(*batch),
                    Call::Head { ids } => Some(ids.len()),
                    Call::Failed { .. } => None,
                });
                if last != Some(batch) || position > layers {
                    errors.push(format!(
                        "step {step_no}: reported position {position} batch {batch}, calls {calls:?}"
                    ));
                }
                t + block_time(batch)
            }
        };
        step.set_finished(end);

        let mut failed_ids: BTreeSet<u64> = BTreeSet::new();
        let mut head: Vec<u64> = Vec::new();
        for c in &calls {
            match c {
                Call::Join { position, ids, .. } => {
                    for id in ids {
                        join_seq += 1;
                        let Some(h) = held.get_mut(id) else {
                            errors.push(format!("joined unknown request {id}"));
                            continue;
                        };
                        if h.entry != *position || h.join_seq.is_some() {
                            errors.push(format!(
                                "request {id} (entry {}) joined at {position}, joined before: {}",
                                h.entry,
                                h.join_seq.is_some()
                            ));
                        }
                        if t + rem(h.entry, 1) > h.deadline {
                            errors.push(format!(
                                "request {id} joined at t={t} though it could not meet {}",
                                h.deadline
                            ));
                        }
                        h.join_seq = Some(join_seq);
                        h.join_step = Some(step_no);
                    }
                }
                Call::Failed { ids, .. } => failed_ids.extend(ids),
                Call::Head { ids } => head.clone_from(ids),
                Call::Block { .. } => {}
            }
        }
        let mut done_order = Vec::new();
        let mut failed_answered = BTreeSet::new();
        for r in &step.responses {
            check_response(r, t, end, step_no, &mut held, &mut errors, rem);
            live.remove(&r.id);
            match &r.outcome {
                Outcome::Done(_) => done_order.push(r.id),
                Outcome::Failed(_) => {
                    failed_answered.insert(r.id);
                }
                _ => {}
            }
        }
        if failed_ids != failed_answered {
            errors.push(format!(
                "step {step_no}: the failed batch held {failed_ids:?}, answered Failed: {failed_answered:?}"
            ));
        }
        if failed_ids.is_empty() && done_order != head {
            errors.push(format!(
                "step {step_no}: head ran on {head:?}, answered Done in order {done_order:?}"
            ));
        }
        step_no += 1;
        t = match step.work {
            Work::Ran { .. } => end,
            Work::Idle if i < arrivals.len() => t.max(arrivals[i].time),
            Work::Idle => t + block_time(1),
        };
    }

    final_checks(&worker, &held, &per_queue, invalid, &mut errors);
    if errors.is_empty() {
        Ok(Report {
            policy: name,
            stats: worker.stats(),
            steps: step_no,
            seconds: t,
        })
    } else {
        errors.truncate(20);
        Err(format!("policy `{name}`:\n- {}", errors.join("\n- ")))
    }
}

/// Checks one response from a step begun at `t` whose compute ended at `end`.
fn check_response(
    r: &Response<u64>,
    t: f64,
    end: f64,
    step_no: usize,
    held: &mut HashMap<u64, Held>,
    errors: &mut Vec<String>,
    rem: impl Fn(usize, usize) -> f64,
) {
    let Some(h) = held.get_mut(&r.id) else {
        errors.push(format!(
            "step {step_no}: response for unknown request {}",
            r.id
        ));
        return;
    };
    h.answers.push((step_no, kind(&r.outcome)));
    if r.entry != h.entry || r.arrival != h.arrival || r.deadline != h.deadline {
        errors.push(format!("response {r:?} does not echo its request {h:?}"));
    }
    let ok = match &r.outcome {
        Outcome::Done(o) => *o == r.id && h.join_seq.is_some() && r.finished == end,
        Outcome::Failed(_) => h.join_seq.is_some() && r.finished == end,
        Outcome::DeadlineMissed => {
            h.join_seq.is_none() && r.finished == t && t + rem(h.entry, 1) > h.deadline
        }
        Outcome::Invalid(_) => false,
    };
    if !ok {
        errors.push(format!(
            "step {step_no} (t={t}, end={end}): wrong answer {r:?} for {h:?}"
        ));
    }
}

/// After draining: each request answered once, FIFO per queue, counters consistent.
fn final_checks<P: BatchPolicy>(
    worker: &Worker<P, MockExecutor>,
    held: &HashMap<u64, Held>,
    per_queue: &[Vec<u64>],
    invalid: usize,
    errors: &mut Vec<String>,
) {
    let rem = remaining(worker.layers());
    let count = |k: &str| {
        held.values()
            .filter(|h| h.answers.iter().any(|a| a.1 == k))
            .count()
    };
    for (id, h) in held {
        if h.answers.len() != 1 {
            errors.push(format!(
                "request {id} answered {} times: {h:?}",
                h.answers.len()
            ));
        }
        let impossible = h.deadline < h.arrival + rem(h.entry, 1);
        if impossible && h.answers.iter().any(|a| a.1 != "deadline-missed") {
            errors.push(format!(
                "impossible request {id} not answered DeadlineMissed: {h:?}"
            ));
        }
    }
    // FIFO: within a queue, requests join in arrival order, and none is passed over (a
    // request still waiting when a later one of its queue joins).
    for (q, ids) in per_queue.iter().enumerate() {
        let (mut min_seq, mut min_step) = (usize::MAX, usize::MAX);
        for id in ids.iter().rev() {
            let Some(h) = held.get(id) else { continue };
            match (h.join_seq, h.answers.first()) {
                (Some(seq), _) if seq > min_seq => errors.push(format!(
                    "queue {q}: request {id} joined after a later request of its queue"
                )),
                (None, Some(&(step, _))) if step > min_step => errors.push(format!(
                    "queue {q}: request {id} waited until step {step} while a later one joined at step {min_step}"
                )),
                _ => {}
            }
            if let (Some(seq), Some(step)) = (h.join_seq, h.join_step) {
                min_seq = min_seq.min(seq);
                min_step = min_step.min(step);
            }
        }
    }
    let st = worker.stats();
    let expected = Stats {
        accepted: held.len(),
        admitted: held.values().filter(|h| h.join_seq.is_some()).count(),
        done: count("done"),
        deadline_missed: count("deadline-missed"),
        invalid,
        failed: count("failed"),
        max_batch: st.max_batch.min(worker.policy().budget()),
        passes: st.passes,
        policy_violations: 0,
    };
    if st != expected {
        errors.push(format!("stats {st:?}, expected {expected:?}"));
    }
    if st.accepted != st.done + st.deadline_missed + st.failed {
        errors.push(format!("stats do not add up: {st:?}"));
    }
    if !worker.is_empty() {
        errors.push(format!(
            "not drained: {} queued, {} running",
            worker.queued(),
            worker.running()
        ));
    }
    if let Some(e) = worker.executor().errors().first() {
        errors.push(format!(
            "executor contract broken {} times; first: {e}",
            worker.executor().errors().len()
        ));
    }
}
