//! [`EmulatedWorker`]: a NATS worker whose GPU is emulated, for measuring the scale-out of
//! the messaging layer on a machine without GPUs (`cargo xtask exp scale-out`). It runs the
//! same front as [`super::NatsWorker`] (pulls within its budget, heartbeats, answers stored
//! before the ack, de-duplication) but, instead of computing, sleeps the batch time of a
//! profile and answers with an empty prediction. Nothing it answers is a model's result.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use tokio::sync::{Notify, watch};
use tokio::task::JoinHandle;

use super::config::{NatsConfig, NatsError};
use super::worker::{Core, WorkerLink, run};
use crate::server::state::{Identity, Phase, Reply};
use crate::wire::{InferRequest, InferResponse, Message, Prediction, RemoteError, Welcome};

/// An emulated GPU's batch cost: a batch of `n` requests takes `fixed + n * per_item`, and
/// holds at most `max_batch`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct EmulatedGpu {
    /// The time of a batch of any size (kernel launches, weights read once).
    pub fixed: Duration,
    /// The time each request adds.
    pub per_item: Duration,
    /// The largest batch.
    pub max_batch: usize,
}

impl EmulatedGpu {
    /// The time of a batch of `n`.
    pub fn batch_time(&self, n: usize) -> Duration {
        self.fixed + self.per_item * u32::try_from(n).unwrap_or(u32::MAX)
    }
}

#[derive(Debug)]
struct Queued {
    id: u64,
    answers: Reply,
    received: Instant,
    budget: Duration,
}

#[derive(Debug)]
struct EmulatedCore {
    queue: Mutex<VecDeque<Queued>>,
    work: Notify,
    phase: watch::Sender<Phase>,
    welcome: Welcome,
    answered: AtomicU64,
}

impl Core for EmulatedCore {
    fn take(
        &self,
        _device: &Identity,
        request: InferRequest,
        answers: &Reply,
        received: Instant,
    ) -> Result<(), RemoteError> {
        self.queue
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push_back(Queued {
                id: request.request_id,
                answers: answers.clone(),
                received,
                budget: Duration::from_millis(u64::from(request.budget_ms)),
            });
        self.work.notify_one();
        Ok(())
    }

    fn refused(&self, _error: &RemoteError, _received: Instant) {}

    fn welcome(&self) -> Welcome {
        self.welcome.clone()
    }

    fn phase(&self) -> watch::Receiver<Phase> {
        self.phase.subscribe()
    }
}

impl EmulatedCore {
    /// The GPU: batches of up to `max_batch` in arrival order, each slept for its batch
    /// time; a request already past its budget is answered `DeadlineMissed` unrun.
    async fn serve(self: Arc<Self>, gpu: EmulatedGpu) {
        loop {
            let batch: Vec<Queued> = {
                let mut q = self.queue.lock().unwrap_or_else(PoisonError::into_inner);
                let n = q.len().min(gpu.max_batch);
                q.drain(..n).collect()
            };
            if batch.is_empty() {
                self.work.notified().await;
                continue;
            }
            let (live, late): (Vec<_>, Vec<_>) = batch
                .into_iter()
                .partition(|q| q.received.elapsed() < q.budget);
            for q in late {
                let budget_ms = u32::try_from(q.budget.as_millis()).unwrap_or(u32::MAX);
                self.answer(&q, Err(RemoteError::DeadlineMissed { budget_ms }));
            }
            if live.is_empty() {
                continue;
            }
            tokio::time::sleep(gpu.batch_time(live.len())).await;
            let size = u32::try_from(live.len()).unwrap_or(u32::MAX);
            for q in &live {
                self.answer(
                    q,
                    Ok(Prediction {
                        top: Vec::new(),
                        embedding: Vec::new(),
                        server_ms: q.received.elapsed().as_secs_f32() * 1e3,
                        batch: size,
                    }),
                );
            }
        }
    }

    fn answer(&self, q: &Queued, outcome: Result<Prediction, RemoteError>) {
        self.answered.fetch_add(1, Ordering::Relaxed);
        let _ = q.answers.send(Message::InferResponse(InferResponse {
            request_id: q.id,
            outcome,
        }));
    }
}

/// A running emulated worker (see the [module docs](self)).
#[derive(Debug)]
pub struct EmulatedWorker {
    core: Arc<EmulatedCore>,
    front: JoinHandle<()>,
    gpu: JoinHandle<()>,
}

impl EmulatedWorker {
    /// Connects to the broker of `nats` and serves `welcome.model_id` on `gpu`, holding at
    /// most `nats.max_held` requests (default: two batches).
    ///
    /// # Errors
    /// As [`super::NatsWorker::start`].
    pub async fn start(
        nats: &NatsConfig,
        welcome: Welcome,
        gpu: EmulatedGpu,
    ) -> Result<Self, NatsError> {
        Self::start_with_acks(nats, welcome, gpu, true).await
    }

    /// A faulty worker, for tests of the de-duplication: it stores its answers but never
    /// acknowledges a request, as a worker that dies between the two would, so the broker
    /// redelivers every request it answered.
    ///
    /// # Errors
    /// As [`EmulatedWorker::start`].
    pub async fn start_forgetful(
        nats: &NatsConfig,
        welcome: Welcome,
        gpu: EmulatedGpu,
    ) -> Result<Self, NatsError> {
        Self::start_with_acks(nats, welcome, gpu, false).await
    }

    async fn start_with_acks(
        nats: &NatsConfig,
        welcome: Welcome,
        gpu: EmulatedGpu,
        acks: bool,
    ) -> Result<Self, NatsError> {
        let budget = nats.max_held.unwrap_or(2 * gpu.max_batch).max(1);
        let max_frame = welcome.max_frame as usize;
        let mut link = WorkerLink::connect(nats, &welcome.model_id, budget, max_frame).await?;
        link.acks = acks;
        let core = Arc::new(EmulatedCore {
            queue: Mutex::new(VecDeque::new()),
            work: Notify::new(),
            phase: watch::Sender::new(Phase::Running),
            welcome,
            answered: AtomicU64::new(0),
        });
        let gpu = tokio::spawn(core.clone().serve(gpu));
        let front = tokio::spawn(run(core.clone(), link));
        Ok(Self { core, front, gpu })
    }

    /// Requests its emulated GPU answered so far (results, and `DeadlineMissed` for those that
    /// expired in its own queue; not those the front refused on arrival).
    pub fn answered(&self) -> u64 {
        self.core.answered.load(Ordering::Relaxed)
    }

    /// Crash emulation: stops at once, acknowledging nothing it holds (the broker redelivers
    /// those to the other workers after the ack wait).
    pub async fn kill(self) {
        self.core.phase.send_replace(Phase::Killed);
        self.front.abort();
        self.gpu.abort();
        let _ = self.front.await;
        let _ = self.gpu.await;
    }
}
