//! The compute thread: one `std::thread` owning the batch [`Worker`] over the model, fed by
//! a channel of [`Command`]s, answering through [`Shared::finish`]. No async here: the tokio
//! runtime only moves bytes.
//!
//! Payloads are decoded here, not on the connection tasks: a request's decoder was built and
//! its cheap facts checked on arrival ([`crate::wire::validate::check_request`]), and the
//! thread decodes it ([`decode_activation`]) as it takes the job, answering `Invalid` if the
//! payload does not decode to what the model expects. The connection tasks only move bytes.
//!
//! The loop blocks on the channel while the worker holds nothing; otherwise it takes every
//! waiting command without blocking and runs one [`Worker::step`] (one position of a pass),
//! timing it into [`super::timing::Timing`], whose estimate lets the worker answer
//! `DeadlineMissed` before computing what can no longer make it. A panic inside a step is
//! caught: every request the thread holds is answered `Failed` and a fresh worker takes over,
//! so even then each accepted request gets its one answer.
//!
//! With a token policy ([`PassTokenPolicy`], OTAS), the thread asks it for a [`TokenPlan`]
//! before a pass begins (again if a request arrives first), from the requests waiting and the
//! arrival rate of the accepted requests over the last [`RATE_WINDOW`], and the whole pass
//! merges by that plan. A plan that breaks its contract
//! (or a policy that panics) runs the pass unmerged, with a rate-limited error.

use std::collections::{HashMap, VecDeque};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::sync::mpsc::{Receiver, RecvTimeoutError, TryRecvError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use collab_core::Backend;
use collab_core::adaptive::{Batch, LoadInfo, PassContext, PassTokenPolicy, Query, TokenPlan};
use collab_core::batch::{BatchPolicy, BatchPolicyConfig, Outcome, Response};
use collab_core::input::ImagePreprocess;
use collab_core::model::{Input, Transformer};
use collab_policies::batch::{ModelExecutor, Payload, Work, Worker};
use tracing::{debug, error, info};

use super::state::{Command, Job, Key, Shared};
use crate::client::top_k;
use crate::wire::validate::{Checked, InputFacts, decode_activation};
use crate::wire::{InferResponse, Prediction, RemoteError};

type ServerWorker<B> = Worker<Box<dyn BatchPolicy>, ModelExecutor<B>>;

/// Classes reported per prediction, best first.
const TOP: usize = 5;

/// How long the thread waits for news when the policy stays idle with requests queued.
const IDLE_WAIT: Duration = Duration::from_millis(1);

/// The window over which a token policy's arrival rate is measured, seconds.
pub(crate) const RATE_WINDOW: f64 = 2.0;

/// What the thread keeps of a request while the worker holds it.
#[derive(Debug)]
struct Meta {
    key: Key,
    received: Instant,
    budget_ms: u32,
}

/// Starts the compute thread with `first`, the policy the caller built from `policy` (which
/// builds a fresh one after a panic), and `tokens`, the token policy if any.
///
/// # Errors
/// The OS refused to spawn the thread.
pub(crate) fn spawn<B: Backend>(
    model: Arc<Transformer<B>>,
    (first, policy): (Box<dyn BatchPolicy>, Arc<dyn BatchPolicyConfig>),
    tokens: Option<Box<dyn PassTokenPolicy>>,
    shared: Arc<Shared>,
    commands: Receiver<Command>,
) -> std::io::Result<JoinHandle<()>> {
    std::thread::Builder::new()
        .name("collab-compute".into())
        .spawn(move || {
            let worker = new_worker(first, &model, &shared);
            let mut compute = Compute {
                model,
                worker,
                shared,
                policy,
                tokens,
                arrivals: VecDeque::new(),
                replan: true,
                origin: Instant::now(),
                jobs: HashMap::new(),
                draining: false,
                passes_before: 0,
            };
            compute.run(&commands);
            info!("compute thread stopped");
        })
}

fn new_worker<B: Backend>(
    policy: Box<dyn BatchPolicy>,
    model: &Arc<Transformer<B>>,
    shared: &Arc<Shared>,
) -> ServerWorker<B> {
    let estimate = shared.clone();
    Worker::new(policy, ModelExecutor::new(model.clone()), move |p, b| {
        estimate.timing.remaining(p, b)
    })
}

struct Compute<B: Backend> {
    model: Arc<Transformer<B>>,
    worker: ServerWorker<B>,
    shared: Arc<Shared>,
    policy: Arc<dyn BatchPolicyConfig>,
    /// The token policy, if any.
    tokens: Option<Box<dyn PassTokenPolicy>>,
    /// Arrival times (worker's clock) of accepted requests within the last [`RATE_WINDOW`].
    arrivals: VecDeque<f64>,
    /// Whether the token plan must be asked for again before the next pass: a request
    /// arrived or a pass ran since it was last asked.
    replan: bool,
    /// Time zero of the worker's clock.
    origin: Instant,
    jobs: HashMap<u64, Meta>,
    draining: bool,
    /// Passes run by workers replaced after a panic.
    passes_before: u64,
}

impl<B: Backend> Compute<B> {
    fn run(&mut self, commands: &Receiver<Command>) {
        loop {
            if self.shared.killed() {
                return;
            }
            if self.worker.is_empty() {
                if self.draining {
                    // Every job was sent before `Drain`, so nothing can be on its way.
                    return;
                }
                let Ok(c) = commands.recv() else { return };
                if !self.command(c) {
                    return;
                }
            }
            loop {
                match commands.try_recv() {
                    Ok(c) => {
                        if !self.command(c) {
                            return;
                        }
                    }
                    Err(TryRecvError::Empty) => break,
                    Err(TryRecvError::Disconnected) => {
                        self.draining = true;
                        break;
                    }
                }
            }
            if self.worker.is_empty() {
                continue;
            }
            self.plan_pass();
            if !self.step() {
                match commands.recv_timeout(IDLE_WAIT) {
                    Ok(c) => {
                        if !self.command(c) {
                            return;
                        }
                    }
                    Err(RecvTimeoutError::Timeout) => {}
                    Err(RecvTimeoutError::Disconnected) => self.draining = true,
                }
            }
        }
    }

    /// Handles one command; `false` means stop now.
    fn command(&mut self, command: Command) -> bool {
        match command {
            Command::Job(job) => self.intake(job),
            Command::Drain => {
                debug!(held = self.jobs.len(), "draining");
                self.draining = true;
            }
            Command::Kill => return false,
        }
        true
    }

    /// Seconds on the worker's clock at `t`.
    fn clock(&self, t: Instant) -> f64 {
        t.saturating_duration_since(self.origin).as_secs_f64()
    }

    fn intake(&mut self, job: Job) {
        let arrival = self.clock(job.received);
        let deadline = arrival + f64::from(job.budget_ms) / 1e3;
        let meta = Meta {
            key: job.key,
            received: job.received,
            budget_ms: job.budget_ms,
        };
        let payload = match self.payload(job.entry, job.checked) {
            Ok(p) => p,
            Err(outcome) => {
                self.reply(&meta, Err(outcome));
                return;
            }
        };
        if self.tokens.is_some() {
            self.arrivals.push_back(arrival);
            self.replan = true;
        }
        self.jobs.insert(job.id, meta);
        if let Err(r) = self
            .worker
            .enqueue(job.id, job.entry, arrival, deadline, payload)
        {
            self.answer(r, 0);
        }
        self.publish_queues();
    }

    /// The worker's payload for a checked request entering at `entry`: the payload decoded
    /// (`Invalid` if it does not decode to what the model expects) and moved to the backend
    /// (`Failed` if that fails).
    fn payload(&self, entry: usize, checked: Checked) -> Result<Payload<B>, RemoteError> {
        let be = self.model.backend();
        let failed =
            |e: collab_core::Error| RemoteError::Failed(format!("cannot build the input: {e}"));
        match checked {
            Checked::Pixels(rgb) => {
                let InputFacts::Image { side } = self.shared.facts.input else {
                    return Err(RemoteError::Failed("pixels for a text model".into()));
                };
                let crop = u32::try_from(side)
                    .map_err(|_| RemoteError::Failed("image side too large".into()))?;
                let values = ImagePreprocess::imagenet(crop)
                    .normalize(&rgb)
                    .map_err(failed)?;
                let x = be.from_vec(values, &[1, 3, side, side]).map_err(failed)?;
                Ok(Payload::Input(Input::Images(x)))
            }
            Checked::Tokens(ids) => Ok(Payload::Input(Input::Tokens(vec![ids]))),
            Checked::Encoded {
                codec,
                payload,
                meta,
            } => {
                let facts = &self.shared.facts;
                // A codec is user code run on bytes off the network: its panic fails this
                // request only.
                let hidden = catch_unwind(AssertUnwindSafe(|| {
                    decode_activation(facts, entry, codec.as_ref(), &payload, meta.as_ref())
                }))
                .map_err(|panic| {
                    RemoteError::Failed(format!(
                        "the decoder of `{}` panicked: {}",
                        codec.name(),
                        panic_message(panic.as_ref())
                    ))
                })??;
                // One row's protected tokens apply to the whole merged batch: under a token
                // policy a request may not choose its own, or it would change other rows'
                // merging.
                if self.tokens.is_some() && hidden.protected != facts.protected() {
                    return Err(RemoteError::Invalid(format!(
                        "{} protected tokens: this server merges tokens and keeps exactly {}",
                        hidden.protected,
                        facts.protected()
                    )));
                }
                Ok(Payload::Hidden(hidden.to_backend(be).map_err(failed)?))
            }
        }
    }

    /// Before a pass begins (none under way), sets the executor's token plan from the token
    /// policy; within a pass the plan stays.
    fn plan_pass(&mut self) {
        if self.tokens.is_none() || self.worker.position().is_some() {
            return;
        }
        let now = self.clock(Instant::now());
        while self
            .arrivals
            .front()
            .is_some_and(|&t| t < now - RATE_WINDOW)
        {
            self.arrivals.pop_front();
        }
        let window = RATE_WINDOW.min(now).max(1e-3);
        let load = LoadInfo {
            rate: self.arrivals.len() as f64 / window,
            uptime: now,
        };
        let waiting = Batch::new(
            self.jobs
                .iter()
                .map(|(&id, m)| {
                    let arrival = self.clock(m.received);
                    Query {
                        id,
                        task: 0,
                        arrival,
                        deadline: arrival + f64::from(m.budget_ms) / 1e3,
                        utility: 1.0,
                    }
                })
                .collect(),
        );
        let facts = &self.shared.facts;
        let Some(policy) = self.tokens.as_mut() else {
            return;
        };
        let pass = PassContext {
            now,
            waiting: &waiting,
            load,
        };
        // A token policy is user code: a panic or a broken plan runs this pass unmerged.
        let plan = match catch_unwind(AssertUnwindSafe(|| policy.plan(&pass))) {
            Ok(plan) => match plan.check(facts.layers, facts.tokens, facts.protected()) {
                Ok(()) => plan,
                Err(e) => {
                    if self.shared.log.allow() {
                        error!("token policy `{}`: {e}; running unmerged", policy.name());
                    }
                    TokenPlan::none()
                }
            },
            Err(panic) => {
                if self.shared.log.allow() {
                    let message = panic_message(panic.as_ref());
                    error!("token policy panicked: {message}; running unmerged");
                }
                TokenPlan::none()
            }
        };
        if &plan != self.worker.executor().token_plan() {
            debug!(gamma = plan.gamma, "token plan");
            self.worker.executor_mut().set_token_plan(plan);
        }
    }

    /// Runs one step; `false` when it neither computed nor answered anything.
    fn step(&mut self) -> bool {
        let now = self.clock(Instant::now());
        let started = Instant::now();
        let result = catch_unwind(AssertUnwindSafe(|| self.worker.step(now)));
        let seconds = started.elapsed().as_secs_f64();
        let mut step = match result {
            Ok(step) => step,
            Err(panic) => {
                self.recover(&panic_message(panic.as_ref()));
                return true;
            }
        };
        step.set_finished(self.clock(Instant::now()));
        let batch = match step.work {
            Work::Ran { position, batch } => {
                let timing = &self.shared.timing;
                timing.record(position, batch, seconds);
                self.shared
                    .metrics
                    .set_position_seconds(position, timing.pass_seconds(position));
                if position == self.worker.layers() {
                    self.replan = true;
                    self.shared.metrics.batch_size.observe(batch as f64);
                    self.shared.board.record_batch(batch);
                    let gamma = i64::from(self.worker.executor().token_plan().gamma);
                    self.shared
                        .metrics
                        .passes
                        .get_or_create(&[("gamma", gamma)])
                        .inc();
                }
                batch
            }
            Work::Idle => 0,
        };
        let progressed = batch > 0 || !step.responses.is_empty();
        for r in step.responses {
            self.answer(r, batch);
        }
        self.publish_queues();
        progressed
    }

    /// Answers one worker response; `batch` is the size of the batch that ran the head.
    fn answer(&mut self, r: Response<Vec<f32>>, batch: usize) {
        let Some(meta) = self.jobs.remove(&r.id) else {
            error!(
                id = r.id,
                "the worker answered a request the thread does not hold"
            );
            return;
        };
        let outcome = match r.outcome {
            Outcome::Done(output) => {
                // A classifier's logits are answered as its best classes, an encoder's
                // pooled embedding as it is.
                let (top, embedding) = match self.shared.facts.input {
                    InputFacts::Image { .. } => (top_k(&output, TOP), vec![]),
                    InputFacts::Text { .. } => (vec![], output),
                };
                Ok(Prediction {
                    top,
                    embedding,
                    server_ms: (meta.received.elapsed().as_secs_f64() * 1e3) as f32,
                    batch: u32::try_from(batch).unwrap_or(u32::MAX),
                })
            }
            Outcome::DeadlineMissed => Err(RemoteError::DeadlineMissed {
                budget_ms: meta.budget_ms,
            }),
            Outcome::Invalid(m) => Err(RemoteError::Invalid(m)),
            Outcome::Failed(m) => Err(RemoteError::Failed(m)),
        };
        self.reply(&meta, outcome);
    }

    fn reply(&self, meta: &Meta, outcome: Result<Prediction, RemoteError>) {
        debug!(device = %meta.key.0, request = meta.key.1, ok = outcome.is_ok(), "answered");
        let response = InferResponse {
            request_id: meta.key.1,
            outcome,
        };
        self.shared.finish(&meta.key, response, meta.received);
    }

    /// After a panic in a step: answers every held request `Failed` and starts a new worker.
    fn recover(&mut self, message: &str) {
        error!(
            held = self.jobs.len(),
            "compute panicked: {message}; failing the held requests"
        );
        let outcome = RemoteError::Failed(format!("the server's compute panicked: {message}"));
        for (_, meta) in std::mem::take(&mut self.jobs) {
            self.reply(&meta, Err(outcome.clone()));
        }
        self.passes_before += self.worker.stats().passes as u64;
        self.replan = true;
        match self.policy.build() {
            Ok(policy) => self.worker = new_worker(policy, &self.model, &self.shared),
            Err(e) => {
                // Cannot happen (the same policy built at start); stop taking work.
                error!("cannot rebuild the batch policy: {e}");
                self.draining = true;
            }
        }
        self.publish_queues();
    }

    /// Publishes the queue lengths and the worker's counters.
    fn publish_queues(&self) {
        let view = self.worker.queues();
        for (p, q) in self.shared.queues.iter().enumerate() {
            let n = view.len(p);
            q.store(u32::try_from(n).unwrap_or(u32::MAX), Ordering::Relaxed);
            self.shared.metrics.set_queue(p, n);
        }
        let stats = self.worker.stats();
        let c = &self.shared.counters;
        c.max_batch
            .fetch_max(stats.max_batch as u64, Ordering::Relaxed);
        c.passes
            .store(self.passes_before + stats.passes as u64, Ordering::Relaxed);
    }
}

/// What a caught panic said.
fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown panic".into())
}
