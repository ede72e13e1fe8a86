//! The state the connection tasks, the compute thread and the handle share: admission
//! control over the requests held, the server's phase, counters, metrics and timings.
//!
//! # Admission and the held requests
//!
//! Every request the server holds (queued for, or running on, the compute thread) is in one
//! map keyed by `(identity, request_id)` (the identity: the device id and its client's
//! instance, see [`Identity`]), with the channel its answer goes to. Admission
//! (under the map's lock) is: a key already held is a retry (the answer is re-pointed to the
//! newest connection, nothing is queued twice); a closed server refuses with
//! `ShuttingDown`; a full one (`held == capacity`) with `Overloaded`; otherwise the request is
//! held and its job sent to the compute thread, still under the lock, so that no job can
//! follow the `Drain` command that shutdown sends under the same lock. The map's size is the
//! in-flight count: the compute channel and the worker's queues never hold more than
//! `capacity` requests, so no queue grows past the limit.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, mpsc as std_mpsc};
use std::time::Instant;

use tokio::sync::{mpsc, watch};
use tracing::debug;

use super::config::ServerConfig;
use super::limits::Limits;
use super::log_limit::LogLimit;
use super::metrics::Metrics;
use super::stats::{Counters, ServerStats, bump};
use super::timing::Timing;
use crate::wire::validate::{Checked, ModelFacts};
use crate::wire::{InferResponse, Message, RemoteError, ServerLoad};

/// Who a held request belongs to: the device's id (authenticated by its own token where the
/// server has per-device tokens) and the instance its client drew (see `Hello::instance`).
/// Shown as the device id alone: the instance is a secret of the device's.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(crate) struct Identity {
    pub(crate) device: String,
    pub(crate) instance: u64,
}

#[cfg(test)]
impl From<&str> for Identity {
    fn from(device: &str) -> Self {
        Self {
            device: device.to_owned(),
            instance: 0,
        }
    }
}

impl std::fmt::Display for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.device)
    }
}

/// A held request's key: `(identity, request_id)`. Another client cannot reach it by
/// claiming the same device id.
pub(crate) type Key = (Identity, u64);

/// Where a connection's answers go (its writer drains it).
pub(crate) type Reply = mpsc::UnboundedSender<Message>;

/// One admitted request, on its way to the compute thread.
#[derive(Debug)]
pub(crate) struct Job {
    /// The worker's id for it (unique for the server's life).
    pub(crate) id: u64,
    pub(crate) key: Key,
    /// Its split point.
    pub(crate) entry: usize,
    /// The checked payload and its decoder (decoded on the compute thread).
    pub(crate) checked: Checked,
    /// When the connection read it.
    pub(crate) received: Instant,
    pub(crate) budget_ms: u32,
}

/// What the compute thread is told.
#[derive(Debug)]
pub(crate) enum Command {
    /// Queue this request.
    Job(Job),
    /// Finish every request held, then stop (graceful shutdown).
    Drain,
    /// Stop at once, answering nothing.
    Kill,
}

/// Where the server is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Phase {
    /// Serving.
    Running,
    /// Shutting down: no new connections or requests; the compute thread finishes the held.
    Draining,
    /// Every held request is answered: sessions say goodbye and flush.
    Closing,
    /// Shut down.
    Stopped,
    /// Killed: connections dropped unanswered.
    Killed,
}

/// The outcome of admission control.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Admit {
    /// Held and queued.
    Accepted,
    /// Already held: its answer now goes to this connection.
    Retry,
    /// Refused; answer this.
    Refused(RemoteError),
}

#[derive(Debug)]
struct Admission {
    /// Held requests: where the answer goes, and when the request was received.
    held: HashMap<Key, (Reply, Instant)>,
    closed: bool,
    compute: std_mpsc::Sender<Command>,
    next_id: u64,
}

/// The shared state (see the module docs).
#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) config: ServerConfig,
    pub(crate) facts: ModelFacts,
    /// Per split point `0..=L`: whether the policy serves it.
    pub(crate) serves: Vec<bool>,
    pub(crate) policy_name: String,
    pub(crate) metrics: Metrics,
    pub(crate) timing: Timing,
    pub(crate) counters: Counters,
    /// Connection slots: how many are open and in their handshake, per address.
    pub(crate) limits: Arc<Limits>,
    /// The budget of warning lines that hostile peers can cause.
    pub(crate) log: LogLimit,
    /// Requests queued in the worker per position, as of its last step.
    pub(crate) queues: Vec<AtomicU32>,
    /// Slots of personalisations running at once (`config.max_personalising`).
    pub(crate) personalising: Arc<tokio::sync::Semaphore>,
    /// What the dashboard shows, and the operator's settings.
    pub(crate) board: super::board::Board,
    admission: Mutex<Admission>,
    in_flight: AtomicUsize,
    phase: watch::Sender<Phase>,
}

impl Shared {
    /// State for a server over `facts`, sending jobs to `compute`.
    pub(crate) fn new(
        config: ServerConfig,
        facts: ModelFacts,
        serves: Vec<bool>,
        policy_name: String,
        compute: std_mpsc::Sender<Command>,
    ) -> Self {
        let layers = facts.layers;
        let metrics = Metrics::new(layers);
        let log = LogLimit::new(metrics.warnings_suppressed.clone());
        Self {
            limits: Arc::new(Limits::new(&config)),
            personalising: Arc::new(tokio::sync::Semaphore::new(config.max_personalising)),
            board: super::board::Board::default(),
            log,
            config,
            facts,
            serves,
            policy_name,
            metrics,
            timing: Timing::new(layers),
            counters: Counters::default(),
            queues: (0..=layers).map(|_| AtomicU32::new(0)).collect(),
            admission: Mutex::new(Admission {
                held: HashMap::new(),
                closed: false,
                compute,
                next_id: 0,
            }),
            in_flight: AtomicUsize::new(0),
            phase: watch::Sender::new(Phase::Running),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Admission> {
        // The lock guards plain data with no invariant a panic could break mid-way.
        self.admission
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    fn set_in_flight(&self, n: usize) {
        self.in_flight.store(n, Ordering::Relaxed);
        self.metrics
            .in_flight
            .set(i64::try_from(n).unwrap_or(i64::MAX));
    }

    /// Admission control for a validated request (see the module docs).
    pub(crate) fn admit(
        &self,
        key: Key,
        reply: &Reply,
        entry: usize,
        checked: Checked,
        received: Instant,
        budget_ms: u32,
    ) -> Admit {
        let mut a = self.lock();
        if let Some(held) = a.held.get_mut(&key) {
            held.0 = reply.clone();
            bump(&self.counters.retries);
            return Admit::Retry;
        }
        if a.closed {
            return Admit::Refused(RemoteError::ShuttingDown);
        }
        let capacity = self.config.capacity;
        if a.held.len() >= capacity {
            let n = |v: usize| u32::try_from(v).unwrap_or(u32::MAX);
            return Admit::Refused(RemoteError::Overloaded {
                in_flight: n(a.held.len()),
                capacity: n(capacity),
            });
        }
        let id = a.next_id;
        a.next_id += 1;
        let job = Job {
            id,
            key: key.clone(),
            entry,
            checked,
            received,
            budget_ms,
        };
        if a.compute.send(Command::Job(job)).is_err() {
            return Admit::Refused(RemoteError::Failed(
                "the server's compute thread has stopped".into(),
            ));
        }
        a.held.insert(key, (reply.clone(), received));
        bump(&self.counters.accepted);
        self.set_in_flight(a.held.len());
        Admit::Accepted
    }

    /// Answers the held request `key` with `response` (dropped silently, and counted, if its
    /// connection is gone or the server was killed) and releases its admission slot.
    pub(crate) fn finish(&self, key: &Key, response: InferResponse, received: Instant) {
        let reply = {
            let mut a = self.lock();
            let reply = a.held.remove(key);
            self.set_in_flight(a.held.len());
            reply
        };
        let Some((reply, _)) = reply else {
            return; // killed: nothing is answered
        };
        let label = match &response.outcome {
            Ok(_) => {
                bump(&self.counters.done);
                "done"
            }
            Err(RemoteError::DeadlineMissed { .. }) => {
                bump(&self.counters.deadline_missed);
                self.metrics.deadline_misses.inc();
                "deadline_missed"
            }
            Err(RemoteError::Invalid(_)) => {
                bump(&self.counters.undecodable);
                bump(&self.counters.invalid);
                "invalid"
            }
            Err(_) => {
                bump(&self.counters.failed);
                "failed"
            }
        };
        self.metrics
            .answered(label, received.elapsed().as_secs_f64());
        if reply.send(Message::InferResponse(response)).is_err() {
            bump(&self.counters.dropped);
            debug!(device = %key.0, request = key.1, "answer dropped: its connection closed");
        }
    }

    /// Answers `Failed` every request still held (the compute thread stopped without
    /// answering them: a safety net, empty after a normal drain).
    pub(crate) fn abandon(&self, why: &str) {
        let held: Vec<(Key, Instant)> = self
            .lock()
            .held
            .iter()
            .map(|(k, (_, t))| (k.clone(), *t))
            .collect();
        for (key, received) in held {
            let response = InferResponse {
                request_id: key.1,
                outcome: Err(RemoteError::Failed(why.to_owned())),
            };
            self.finish(&key, response, received);
        }
    }

    /// Counts a request refused at once with `error` (never admitted).
    pub(crate) fn refused(&self, error: &RemoteError, received: Instant) {
        let label = match error {
            RemoteError::Invalid(_) => {
                bump(&self.counters.invalid);
                "invalid"
            }
            RemoteError::Overloaded { .. } => {
                bump(&self.counters.overloaded);
                self.metrics.overloaded.inc();
                "overloaded"
            }
            RemoteError::ShuttingDown => {
                bump(&self.counters.shutting_down);
                "shutting_down"
            }
            RemoteError::DeadlineMissed { .. } => {
                // Expired before it was taken (a NATS worker's queue).
                bump(&self.counters.deadline_missed);
                self.metrics.deadline_misses.inc();
                "deadline_missed"
            }
            _ => "failed",
        };
        self.metrics
            .answered(label, received.elapsed().as_secs_f64());
    }

    /// Starts a graceful shutdown: refuses new requests, tells the compute thread to finish
    /// what it holds, and moves to [`Phase::Draining`].
    pub(crate) fn begin_drain(&self) {
        let mut a = self.lock();
        a.closed = true;
        // Sent under the lock: every admitted job is ahead of it in the channel.
        let _ = a.compute.send(Command::Drain);
        drop(a);
        self.set_phase(Phase::Draining);
    }

    /// Kills the server: drops every held request unanswered and stops the compute thread.
    pub(crate) fn kill(&self) {
        self.set_phase(Phase::Killed);
        let mut a = self.lock();
        a.closed = true;
        a.held.clear();
        self.set_in_flight(0);
        let _ = a.compute.send(Command::Kill);
    }

    /// Moves to `phase` (never back from [`Phase::Killed`] or [`Phase::Stopped`]).
    pub(crate) fn set_phase(&self, phase: Phase) {
        self.phase.send_if_modified(|p| {
            let terminal = matches!(*p, Phase::Killed | Phase::Stopped);
            let change = !terminal && *p != phase;
            if change {
                *p = phase;
            }
            change
        });
    }

    /// The phase now.
    pub(crate) fn phase(&self) -> Phase {
        *self.phase.borrow()
    }

    /// A receiver of phase changes.
    pub(crate) fn subscribe(&self) -> watch::Receiver<Phase> {
        self.phase.subscribe()
    }

    /// Whether the compute thread has been killed.
    pub(crate) fn killed(&self) -> bool {
        self.phase() == Phase::Killed
    }

    /// Requests held now.
    pub(crate) fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Relaxed)
    }

    /// The load report pushed to devices.
    pub(crate) fn load(&self) -> ServerLoad {
        let n = |v: usize| u32::try_from(v).unwrap_or(u32::MAX);
        ServerLoad {
            queues: self
                .queues
                .iter()
                .map(|q| q.load(Ordering::Relaxed))
                .collect(),
            position_ms: self.timing.position_ms(),
            in_flight: n(self.in_flight()),
            capacity: n(self.config.capacity),
        }
    }

    /// The board with the server's queues and admission now.
    pub(crate) fn board_snapshot(&self) -> super::board::BoardSnapshot {
        let load = self.load();
        self.board
            .snapshot(load.queues, load.in_flight, load.capacity)
    }

    /// The metrics in the OpenMetrics text format, with the gauges read at render time.
    pub(crate) fn render_metrics(&self) -> String {
        let handshaking = self.limits.handshaking();
        self.metrics
            .handshaking
            .set(i64::try_from(handshaking).unwrap_or(i64::MAX));
        self.metrics.render()
    }

    /// A snapshot of the counters.
    pub(crate) fn stats(&self) -> ServerStats {
        self.counters.snapshot(self.in_flight() as u64)
    }
}

/// Checks `request` from `device` against the model and the policy and admits it, its answer
/// to go to `answers`; the refusal to answer at once otherwise (counted as refused). A retry of
/// a request still held is re-pointed to `answers`. Shared by every front of the server: the
/// TCP sessions and the NATS worker (`crate::nats`).
pub(crate) fn take_request(
    shared: &Shared,
    device: &Identity,
    request: crate::wire::InferRequest,
    answers: &Reply,
    received: Instant,
) -> Result<(), RemoteError> {
    let (id, split, budget_ms) = (
        request.request_id,
        request.split as usize,
        request.budget_ms,
    );
    let config = &shared.config;
    // The codec factory and the header read are user code run on bytes off the network:
    // a panic in them fails this request only.
    let checked = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        crate::wire::validate::check_request(
            &shared.facts,
            &config.codecs,
            config.bases.as_deref(),
            request,
        )
    }))
    .unwrap_or_else(|_| {
        Err(RemoteError::Failed(
            "the request's codec panicked while its header was read".into(),
        ))
    });
    let refusal = match checked {
        Err(e) => e,
        Ok(_) if !shared.serves.get(split).copied().unwrap_or(false) => {
            RemoteError::Invalid(format!(
                "split {split} is not served by this server's policy `{}`",
                shared.policy_name
            ))
        }
        Ok(checked) => {
            let key = (device.clone(), id);
            match shared.admit(key, answers, split, checked, received, budget_ms) {
                Admit::Accepted => {
                    debug!(%device, request = id, split, "accepted");
                    return Ok(());
                }
                Admit::Retry => {
                    debug!(%device, request = id, "retry of a held request");
                    return Ok(());
                }
                Admit::Refused(e) => e,
            }
        }
    };
    debug!(%device, request = id, error = %refusal, "refused");
    shared.refused(&refusal, received);
    Err(refusal)
}
