//! The synchronous server worker that drives a [`BatchPolicy`] (SPEC §2).
//!
//! A [`Worker`] holds ONE complete model (behind an [`Executor`]) and one FIFO queue per entry
//! position `0..=L`. Each [`Worker::step`] does one unit of work: it answers the queued requests
//! that can no longer meet their deadline, begins a pass if none is under way, joins the
//! requests the policy admits at the current position into the running batch, and runs that
//! position (a block, or the head at `L`, which answers the whole batch). It has no clock and no
//! I/O of its own: the caller passes `now` and times the step, so the same worker runs behind a
//! real server and inside a discrete-event simulator.

use std::collections::{HashSet, VecDeque};
use std::fmt;

use collab_core::batch::{BatchPolicy, Outcome, QueueView, Queued, Response};

use super::executor::{Executor, Remaining};
use super::step::{Stats, Step, Work};

/// The shared-model server worker: one model, one queue per entry, a [`BatchPolicy`] choosing
/// who joins the running batch where.
pub struct Worker<P: BatchPolicy, E: Executor> {
    policy: P,
    executor: E,
    remaining: Remaining,
    layers: usize,
    meta: Vec<VecDeque<Queued>>,
    payloads: Vec<VecDeque<E::Payload>>,
    held: HashSet<u64>,
    /// The running batch's requests in batch order, with their entries.
    running: Vec<(Queued, usize)>,
    batch: Option<E::Batch>,
    /// The next position of the pass under way; `None` between passes.
    position: Option<usize>,
    stats: Stats,
}

impl<P: BatchPolicy, E: Executor> fmt::Debug for Worker<P, E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Worker")
            .field("policy", &self.policy)
            .field("layers", &self.layers)
            .field(
                "queued",
                &self.meta.iter().map(VecDeque::len).collect::<Vec<_>>(),
            )
            .field("running", &self.running.len())
            .field("position", &self.position)
            .field("stats", &self.stats)
            .finish_non_exhaustive()
    }
}

impl<P: BatchPolicy, E: Executor> Worker<P, E> {
    /// A worker running `policy` over `executor`'s model; `remaining(p, b)` estimates the
    /// seconds to finish a batch of `b` from position `p` (see [`Remaining`]). A closure
    /// returning 0 expires requests only once their deadline has passed.
    pub fn new(
        policy: P,
        executor: E,
        remaining: impl Fn(usize, usize) -> f64 + Send + 'static,
    ) -> Self {
        let layers = executor.layers();
        Self {
            policy,
            executor,
            remaining: Box::new(remaining),
            layers,
            meta: (0..=layers).map(|_| VecDeque::new()).collect(),
            payloads: (0..=layers).map(|_| VecDeque::new()).collect(),
            held: HashSet::new(),
            running: Vec::new(),
            batch: None,
            position: None,
            stats: Stats::default(),
        }
    }

    /// Queues a request entering at `entry` (its split point, `0..=L`).
    ///
    /// # Errors
    /// Returns the [`Outcome::Invalid`] response to send at once (stamped `finished =
    /// arrival`) when `entry > L`, when the policy does not accept `entry`
    /// ([`BatchPolicy::accepts`]), when `id` belongs to a request the worker still holds, or
    /// when `arrival`/`deadline` is not finite or the deadline is negative.
    pub fn enqueue(
        &mut self,
        id: u64,
        entry: usize,
        arrival: f64,
        deadline: f64,
        payload: E::Payload,
    ) -> Result<(), Response<E::Output>> {
        let reason = if entry > self.layers {
            Some(format!(
                "entry {entry} is past the model's {} blocks (valid: 0..={})",
                self.layers, self.layers
            ))
        } else if !self.policy.accepts(entry, self.layers) {
            Some(format!(
                "policy `{}` does not serve requests entering at {entry}",
                self.policy.name()
            ))
        } else if self.held.contains(&id) {
            Some(format!("request id {id} is already queued or running"))
        } else if !arrival.is_finite() || !deadline.is_finite() || deadline < 0.0 {
            Some(format!(
                "arrival {arrival} and deadline {deadline} must be finite, the deadline >= 0"
            ))
        } else {
            None
        };
        if let Some(reason) = reason {
            self.stats.invalid += 1;
            return Err(Response {
                id,
                entry,
                arrival,
                deadline,
                finished: arrival,
                outcome: Outcome::Invalid(reason),
            });
        }
        self.held.insert(id);
        self.meta[entry].push_back(Queued {
            id,
            arrival,
            deadline,
        });
        self.payloads[entry].push_back(payload);
        self.stats.accepted += 1;
        Ok(())
    }

    /// Does one unit of work at time `now` (see the module docs): expires what can no longer
    /// meet its deadline, begins a pass if none is under way ([`BatchPolicy::start`]), joins
    /// what the policy admits at the current position and runs that position. Positions where
    /// the batch would be empty are skipped within the step.
    pub fn step(&mut self, now: f64) -> Step<E::Output> {
        let mut responses = Vec::new();
        self.expire(now, &mut responses);
        let budget = self.policy.budget().max(1);
        let mut position = match self.position {
            Some(p) => p,
            None => {
                if self.meta.iter().all(VecDeque::is_empty) {
                    return idle(responses);
                }
                match self.policy.start(&QueueView::new(&self.meta), now) {
                    None => return idle(responses),
                    Some(p) if self.meta.get(p).is_some_and(|q| !q.is_empty()) => p,
                    Some(_) => {
                        self.stats.policy_violations += 1;
                        return idle(responses);
                    }
                }
            }
        };
        loop {
            let running = self.running.len();
            let want = self
                .policy
                .admit(position, running, &QueueView::new(&self.meta), now);
            let cap = self.meta[position]
                .len()
                .min(budget.saturating_sub(running));
            let n = if want > cap {
                self.stats.policy_violations += 1;
                cap
            } else {
                want
            };
            if n > 0 || running > 0 {
                self.run_position(position, n, now, &mut responses);
                return Step {
                    responses,
                    work: Work::Ran {
                        position,
                        batch: running + n,
                    },
                };
            }
            // Nothing to compute here: the pass moves on without cost, or ends.
            position += 1;
            if position > self.layers {
                self.position = None;
                return idle(responses);
            }
            self.position = Some(position);
        }
    }

    /// Joins the first `n` of queue `position` and runs the position.
    fn run_position(
        &mut self,
        position: usize,
        n: usize,
        now: f64,
        responses: &mut Vec<Response<E::Output>>,
    ) {
        let items: Vec<E::Payload> = self.payloads[position].drain(..n).collect();
        self.running
            .extend(self.meta[position].drain(..n).map(|m| (m, position)));
        self.stats.admitted += n;
        self.stats.max_batch = self.stats.max_batch.max(self.running.len());
        let batch = match self.batch.take() {
            Some(b) if n == 0 => Ok(b),
            b => {
                if b.is_none() {
                    self.stats.passes += 1;
                }
                self.executor.join(b, items, position)
            }
        };
        if position < self.layers {
            match batch.and_then(|b| self.executor.run_block(b, position)) {
                Ok(b) => {
                    self.batch = Some(b);
                    self.position = Some(position + 1);
                }
                Err(e) => self.fail_running(&e.to_string(), now, responses),
            }
            return;
        }
        match batch.and_then(|b| self.executor.finish(b)) {
            Ok(outputs) if outputs.len() == self.running.len() => {
                for ((m, entry), out) in self.running.drain(..).zip(outputs) {
                    self.held.remove(&m.id);
                    self.stats.done += 1;
                    responses.push(response(m, entry, now, Outcome::Done(out)));
                }
                self.position = None;
            }
            Ok(outputs) => {
                let msg = format!(
                    "executor returned {} outputs for a batch of {}",
                    outputs.len(),
                    self.running.len()
                );
                self.fail_running(&msg, now, responses);
            }
            Err(e) => self.fail_running(&e.to_string(), now, responses),
        }
    }

    /// Answers every running request with [`Outcome::Failed`] and ends the pass.
    fn fail_running(&mut self, msg: &str, now: f64, responses: &mut Vec<Response<E::Output>>) {
        for (m, entry) in self.running.drain(..) {
            self.held.remove(&m.id);
            self.stats.failed += 1;
            responses.push(response(m, entry, now, Outcome::Failed(msg.to_owned())));
        }
        self.batch = None;
        self.position = None;
    }

    /// Answers every queued request with `now + remaining(p, 1) > deadline` (FIFO per queue).
    fn expire(&mut self, now: f64, responses: &mut Vec<Response<E::Output>>) {
        for p in 0..self.meta.len() {
            let rem = (self.remaining)(p, 1);
            let late = |m: &Queued| now + rem > m.deadline;
            if !self.meta[p].iter().any(late) {
                continue;
            }
            let mask: Vec<bool> = self.meta[p].iter().map(late).collect();
            let (held, stats) = (&mut self.held, &mut self.stats);
            let mut flags = mask.iter();
            self.meta[p].retain(|m| {
                let expired = flags.next().copied().unwrap_or(false);
                if expired {
                    held.remove(&m.id);
                    stats.deadline_missed += 1;
                    responses.push(response(*m, p, now, Outcome::DeadlineMissed));
                }
                !expired
            });
            let mut flags = mask.iter();
            self.payloads[p].retain(|_| !flags.next().copied().unwrap_or(false));
        }
    }

    /// The policy.
    pub fn policy(&self) -> &P {
        &self.policy
    }

    /// The policy, mutably (to retune it between steps).
    pub fn policy_mut(&mut self) -> &mut P {
        &mut self.policy
    }

    /// The executor.
    pub fn executor(&self) -> &E {
        &self.executor
    }

    /// The executor, mutably.
    pub fn executor_mut(&mut self) -> &mut E {
        &mut self.executor
    }

    /// The number of blocks `L`.
    pub fn layers(&self) -> usize {
        self.layers
    }

    /// The counters so far.
    pub fn stats(&self) -> Stats {
        self.stats
    }

    /// Requests waiting in the queues.
    pub fn queued(&self) -> usize {
        self.meta.iter().map(VecDeque::len).sum()
    }

    /// Requests in the running batch.
    pub fn running(&self) -> usize {
        self.running.len()
    }

    /// Whether the worker holds no request (nothing queued, nothing running).
    pub fn is_empty(&self) -> bool {
        self.running.is_empty() && self.meta.iter().all(VecDeque::is_empty)
    }

    /// The next position of the pass under way, `None` between passes.
    pub fn position(&self) -> Option<usize> {
        self.position
    }

    /// The queues as the policy sees them.
    pub fn queues(&self) -> QueueView<'_> {
        QueueView::new(&self.meta)
    }
}

fn idle<O>(responses: Vec<Response<O>>) -> Step<O> {
    Step {
        responses,
        work: Work::Idle,
    }
}

fn response<O>(m: Queued, entry: usize, finished: f64, outcome: Outcome<O>) -> Response<O> {
    Response {
        id: m.id,
        entry,
        arrival: m.arrival,
        deadline: m.deadline,
        finished,
        outcome,
    }
}
