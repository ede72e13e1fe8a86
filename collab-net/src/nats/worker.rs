//! [`NatsWorker`]: a cloud server whose requests come from a JetStream work queue instead of
//! TCP sessions. The serving core (admission, the compute thread, batching, deadlines,
//! metrics, graceful shutdown) is the TCP server's; only the front differs.

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, AckKind, consumer::pull, stream};
use collab_core::Backend;
use collab_core::model::Transformer;
use futures_util::StreamExt;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;
use tracing::{debug, info, warn};

use super::config::{NatsConfig, NatsError};
use super::subjects::{Subjects, check_token};
use super::{INSTANCE_HEADER, unix_ms};
use crate::server::state::{Identity, Phase, Reply, Shared, take_request};
use crate::server::{Server, ServerConfig, ServerHandle};
use crate::wire::{InferRequest, InferResponse, Message, RemoteError, Welcome, encode_frame};

/// How long an idle worker's pull waits for a request before it looks at its phase again.
const PULL_EXPIRES: Duration = Duration::from_millis(250);
/// How long past [`PULL_EXPIRES`] a worker waits for the broker to end a pull. nats-server
/// 2.9 sometimes neither delivers to a waiting pull nor ends it (seen under load after
/// terminated messages), and async-nats would then wait 5 s more: the worker pulls again.
/// A request the broker delivers to the abandoned pull is redelivered after the ack wait.
const PULL_GRACE: Duration = Duration::from_millis(250);
/// How long a worker keeps trying to store an answer while the broker is away; after that
/// the request is left unacknowledged and the broker redelivers it.
const PUBLISH_PATIENCE: Duration = Duration::from_secs(60);
/// How long a closing worker waits for its answers to be stored.
const CLOSE_PATIENCE: Duration = Duration::from_secs(10);
/// The oldest a stored request or answer may grow before the broker drops it.
const MAX_AGE: Duration = Duration::from_secs(600);
/// Requests stored at most per model; a full stream refuses the publish (the device sees it).
const MAX_QUEUED: i64 = 100_000;
/// Requests (or answers) stored at most per device: one device cannot fill the queue.
const MAX_PER_DEVICE: i64 = 1024;
/// Bytes stored at most per stream.
const MAX_STREAM_BYTES: i64 = 4 << 30;
/// The longest budget a request may have: a stored request older than [`MAX_AGE`] is gone.
const MAX_BUDGET_MS: u32 = 590_000;

/// What the front needs of a serving core: the real server's shared state, or the
/// emulated GPU of the scale-out experiment ([`super::EmulatedWorker`]).
pub(crate) trait Core: Send + Sync + 'static {
    /// Admits `request` of `device`, its answer to go to `answers`, or says why not.
    fn take(
        &self,
        device: &Identity,
        request: InferRequest,
        answers: &Reply,
        received: Instant,
    ) -> Result<(), RemoteError>;
    /// Counts a request answered without being admitted.
    fn refused(&self, error: &RemoteError, received: Instant);
    /// What devices are told in the handshake.
    fn welcome(&self) -> Welcome;
    /// The server's phase.
    fn phase(&self) -> watch::Receiver<Phase>;
}

impl Core for Shared {
    fn take(
        &self,
        device: &Identity,
        request: InferRequest,
        answers: &Reply,
        received: Instant,
    ) -> Result<(), RemoteError> {
        take_request(self, device, request, answers, received)
    }

    fn refused(&self, error: &RemoteError, received: Instant) {
        Shared::refused(self, error, received);
    }

    fn welcome(&self) -> Welcome {
        let n = |v: usize| u32::try_from(v).unwrap_or(u32::MAX);
        Welcome {
            model_id: self.config.model_id.clone(),
            layers: n(self.facts.layers),
            tokens: n(self.facts.tokens),
            features: n(self.facts.features),
            max_frame: n(self.config.max_frame),
        }
    }

    fn phase(&self) -> watch::Receiver<Phase> {
        self.subscribe()
    }
}

/// A cloud worker on a NATS JetStream work queue (see the [module docs](super)).
#[derive(Debug)]
pub struct NatsWorker;

impl NatsWorker {
    /// Connects to the broker of `nats`, makes sure the streams and the workers' consumer of
    /// `config.model_id` exist, and serves `model` as [`Server::start`] does, pulling requests
    /// instead of accepting connections. The returned handle's `shutdown` stops pulling,
    /// answers (and acknowledges) everything held, then stops; `kill` drops everything
    /// unacknowledged, for the broker to redeliver.
    ///
    /// # Errors
    /// [`NatsError::Config`] for a model id that is not a subject token or bad numbers;
    /// [`NatsError::Connect`]; [`NatsError::JetStream`] when the streams cannot be made (no
    /// JetStream, or credentials without the rights); [`NatsError::Server`] as
    /// [`Server::start`].
    pub async fn start<B: Backend>(
        model: Arc<Transformer<B>>,
        config: ServerConfig,
        nats: &NatsConfig,
    ) -> Result<ServerHandle, NatsError> {
        let budget = nats
            .max_held
            .unwrap_or(config.capacity)
            .clamp(1, config.capacity.max(1));
        let link = WorkerLink::connect(nats, &config.model_id, budget, config.max_frame).await?;
        info!(model = %config.model_id, budget, url = %nats.url, "nats worker starting");
        let handle = Server::start_with_front(model, config, move |shared, runtime| {
            runtime.spawn(run(shared, link))
        })?;
        Ok(handle)
    }
}

/// A worker's connection, streams and settings.
#[derive(Clone, Debug)]
pub(crate) struct WorkerLink {
    client: async_nats::Client,
    js: jetstream::Context,
    consumer: jetstream::consumer::Consumer<pull::Config>,
    subjects: Subjects,
    model: String,
    ack_wait: Duration,
    /// Deliveries after which the broker gives a request up (the last one is answered).
    max_deliver: i64,
    budget: usize,
    /// The devices whose answers consumer this worker has made sure of.
    devices: Arc<DeviceSetup>,
    /// Whether stored answers are acknowledged (off only in a fault-injecting test worker).
    pub(crate) acks: bool,
}

/// Bounds on the work devices' handshakes cause: each known device is set up once (up to
/// [`KNOWN_DEVICES`], then the memory starts afresh), and at most [`SETUPS`] set-ups run at
/// once (a handshake beyond is dropped; the device retries).
#[derive(Debug)]
struct DeviceSetup {
    known: std::sync::Mutex<std::collections::HashSet<String>>,
    running: Arc<tokio::sync::Semaphore>,
}

impl Default for DeviceSetup {
    fn default() -> Self {
        Self {
            known: std::sync::Mutex::new(std::collections::HashSet::new()),
            running: Arc::new(tokio::sync::Semaphore::new(SETUPS)),
        }
    }
}

impl DeviceSetup {
    fn is_known(&self, device: &str) -> bool {
        self.known
            .lock()
            .map(|k| k.contains(device))
            .unwrap_or(false)
    }

    fn remember(&self, device: &str) {
        if let Ok(mut k) = self.known.lock() {
            if k.len() >= KNOWN_DEVICES {
                k.clear();
            }
            k.insert(device.to_owned());
        }
    }
}

/// Devices a worker remembers as set up.
const KNOWN_DEVICES: usize = 65_536;
/// Device set-ups (JetStream API calls) a worker runs at once.
const SETUPS: usize = 16;
/// The largest link probe a worker answers, bytes.
const MAX_PROBE: usize = 1 << 20;

impl WorkerLink {
    /// Connects and ensures the streams (see [`NatsWorker::start`]).
    pub(crate) async fn connect(
        nats: &NatsConfig,
        model: &str,
        budget: usize,
        max_frame: usize,
    ) -> Result<Self, NatsError> {
        check_token("model", model)?;
        let max_message = i32::try_from(max_frame).unwrap_or(i32::MAX);
        let subjects = nats.subjects()?;
        let ack_wait = nats.ack_wait()?;
        let window = nats.duplicate_window()?;
        let client = nats.connect(Some("worker"), None).await?;
        let js = jetstream::new(client.clone());
        let jet = |e: &dyn std::fmt::Display| NatsError::JetStream(e.to_string());
        // Both streams: work queues on disk, bounded per device and in all.
        let bounded = |name: String, subject: String| stream::Config {
            name,
            subjects: vec![subject],
            retention: stream::RetentionPolicy::WorkQueue,
            storage: stream::StorageType::File,
            duplicate_window: window,
            max_age: MAX_AGE,
            max_messages_per_subject: MAX_PER_DEVICE,
            discard_new_per_subject: true,
            max_bytes: MAX_STREAM_BYTES,
            max_message_size: max_message,
            discard: stream::DiscardPolicy::New,
            num_replicas: nats.replicas.max(1),
            ..Default::default()
        };
        let requests = js
            .get_or_create_stream(stream::Config {
                max_messages: MAX_QUEUED,
                ..bounded(subjects.request_stream(model), subjects.requests(model))
            })
            .await
            .map_err(|e| jet(&e))?;
        js.get_or_create_stream(bounded(subjects.reply_stream(), subjects.reply("*")))
            .await
            .map_err(|e| jet(&e))?;
        let consumer = requests
            .get_or_create_consumer(
                subjects.workers(),
                pull::Config {
                    durable_name: Some(subjects.workers().into()),
                    ack_policy: jetstream::consumer::AckPolicy::Explicit,
                    ack_wait,
                    max_deliver: nats.max_deliver.max(1),
                    max_ack_pending: 100_000,
                    max_waiting: 4096,
                    ..Default::default()
                },
            )
            .await
            .map_err(|e| jet(&e))?;
        // The consumer as the first worker made it: its ack wait is the one the broker runs.
        let running = consumer.cached_info().config.ack_wait;
        let max_deliver = consumer.cached_info().config.max_deliver;
        if running != ack_wait {
            warn!(
                configured_ms = ack_wait.as_millis(),
                running_ms = running.as_millis(),
                "the workers' consumer exists with another ack wait; following it"
            );
        }
        Ok(Self {
            client,
            js,
            consumer,
            subjects,
            model: model.to_owned(),
            ack_wait: running.max(Duration::from_millis(30)),
            // -1 (unlimited, a consumer made elsewhere): never the last delivery.
            max_deliver: if max_deliver > 0 {
                max_deliver
            } else {
                i64::MAX
            },
            budget,
            devices: Arc::new(DeviceSetup::default()),
            acks: true,
        })
    }

    /// Makes sure `device` has its durable consumer of its answers.
    async fn ensure_device(&self, device: &str) -> Result<(), NatsError> {
        let jet = |e: &dyn std::fmt::Display| NatsError::JetStream(e.to_string());
        let replies = self
            .js
            .get_stream_no_info(self.subjects.reply_stream())
            .await
            .map_err(|e| jet(&e))?;
        replies
            .get_or_create_consumer(
                device,
                pull::Config {
                    durable_name: Some(device.into()),
                    filter_subject: self.subjects.reply(device),
                    ack_policy: jetstream::consumer::AckPolicy::Explicit,
                    ack_wait: Duration::from_secs(30),
                    ..Default::default()
                },
            )
            .await
            .map_err(|e| jet(&e))?;
        Ok(())
    }
}

/// The front: answers handshakes and probes, pulls requests within the budget, and hands
/// each to `core`; ends when the phase is `Closing` (after its answers are stored) or
/// `Killed` (at once, acknowledging nothing).
pub(crate) async fn run<C: Core + ?Sized>(core: Arc<C>, link: WorkerLink) {
    // Aborted when this future ends or is dropped (an aborted worker answers nothing).
    let _responder = AbortOnDrop(tokio::spawn(respond(core.welcome(), link.clone())));
    let mut phase = core.phase();
    let mut tasks = JoinSet::new();
    let mut failures = 0u32;
    loop {
        while tasks.try_join_next().is_some() {}
        let now = *phase.borrow_and_update();
        match now {
            Phase::Running => {}
            Phase::Draining => {
                // Pull nothing more; what is held is answered by its task.
                let _ = phase.changed().await;
                continue;
            }
            Phase::Closing | Phase::Stopped => {
                let _ = tokio::time::timeout(CLOSE_PATIENCE, async {
                    while tasks.join_next().await.is_some() {}
                })
                .await;
                break;
            }
            Phase::Killed => break,
        }
        let free = link.budget.saturating_sub(tasks.len());
        if free == 0 {
            tokio::select! {
                _ = tasks.join_next() => {}
                _ = phase.changed() => {}
            }
            continue;
        }
        // What is queued now, up to the free budget, without waiting; when nothing is, wait
        // for the next one (and come back for whatever queued behind it).
        let mut took = 0;
        let mut pulled = pull(&link, &mut tasks, &core, free, false, &mut took).await;
        if pulled.is_ok() && took == 0 {
            pulled = pull(&link, &mut tasks, &core, 1, true, &mut took).await;
        }
        match pulled {
            Ok(()) => failures = 0,
            Err(e) => {
                failures += 1;
                if failures == 1 || failures.is_power_of_two() {
                    warn!(failures, "pulling requests failed: {e}");
                }
                tokio::select! {
                    () = tokio::time::sleep(Duration::from_millis(200)) => {}
                    _ = phase.changed() => {}
                }
            }
        }
    }
    tasks.abort_all();
}

/// Aborts its task when dropped.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// One pull of up to `n` requests, taking each as it arrives: without waiting (`wait =
/// false`: what is queued now), or waiting up to [`PULL_EXPIRES`] for them.
async fn pull<C: Core + ?Sized>(
    link: &WorkerLink,
    tasks: &mut JoinSet<()>,
    core: &Arc<C>,
    n: usize,
    wait: bool,
    took: &mut usize,
) -> Result<(), String> {
    let batch = if wait {
        link.consumer
            .batch()
            .max_messages(n)
            .expires(PULL_EXPIRES)
            .messages()
            .await
    } else {
        // `expires` bounds the pull on the broker's side, `PULL_GRACE` below on the
        // client's (a pull lost in a broker restart must not hang the worker).
        link.consumer
            .fetch()
            .max_messages(n)
            .expires(PULL_EXPIRES)
            .messages()
            .await
    };
    let mut batch = batch.map_err(|e| e.to_string())?;
    let give_up = tokio::time::Instant::now() + PULL_EXPIRES + PULL_GRACE;
    loop {
        let message = match tokio::time::timeout_at(give_up, batch.next()).await {
            Ok(Some(message)) => message,
            Ok(None) => break,
            Err(_) => {
                debug!("the broker did not end a pull in time: pulling again");
                break;
            }
        };
        match message {
            Ok(message) => {
                *took += 1;
                take(core, link, message, tasks);
            }
            Err(e) => debug!("pull: {e}"),
        }
    }
    Ok(())
}

/// Takes one pulled message: refuses what cannot be served at once, admits the rest, and
/// starts the task that stores its answer and acknowledges it.
fn take<C: Core + ?Sized>(
    core: &Arc<C>,
    link: &WorkerLink,
    message: jetstream::Message,
    tasks: &mut JoinSet<()>,
) {
    let received = Instant::now();
    let header = |name: &str| {
        message
            .headers
            .as_ref()
            .and_then(|h| h.get(name))
            .map(|v| v.as_str().to_owned())
    };
    let instance = header(INSTANCE_HEADER).and_then(|v| v.parse::<u64>().ok());
    let device = link
        .subjects
        .device_of_request(&link.model, message.subject.as_str())
        .map(str::to_owned);
    let info = message
        .info()
        .ok()
        .map(|i| (i.delivered, i.published.unix_timestamp_nanos() / 1_000_000));
    let decoded = crate::wire::decode_frame(&message.payload);
    let (
        Some(device),
        Some(instance),
        Some((delivered, published_ms)),
        Ok(Message::InferRequest(mut request)),
    ) = (device, instance, info, decoded)
    else {
        // Nothing to answer to: no device, or no request id. Never redelivered.
        warn!(subject = %message.subject, "dropping a message that is not a request");
        tasks.spawn(async move {
            let _ = message.ack_with(AckKind::Term).await;
        });
        return;
    };
    let id = request.request_id;
    // The de-duplication key must be the one this device's request has: another device
    // cannot pre-empt it (the key starts with the subject's device, which the broker checks).
    let expected_id = link.subjects.message_id(&device, instance, id);
    if header("Nats-Msg-Id").as_deref() != Some(expected_id.as_str()) {
        warn!(%device, request = id, "dropping a request whose message id is not its own");
        tasks.spawn(async move {
            let _ = message.ack_with(AckKind::Term).await;
        });
        return;
    }
    let identity = Identity { device, instance };
    let (answers, rx) = mpsc::unbounded_channel();
    let refuse = |e: RemoteError| {
        core.refused(&e, received);
        Err(e)
    };
    // The deadline on the broker's clock: stored at `published`, `budget_ms` to answer.
    let deadline_ms = published_ms + i128::from(request.budget_ms.min(MAX_BUDGET_MS));
    let left_ms = deadline_ms - i128::from(unix_ms());
    let admitted = if left_ms <= 0 {
        refuse(RemoteError::DeadlineMissed {
            budget_ms: request.budget_ms,
        })
    } else if delivered >= link.max_deliver {
        // The broker delivers it no more: answer rather than leave it unanswered.
        refuse(RemoteError::Failed(format!(
            "delivered to workers {delivered} times without an answer"
        )))
    } else {
        request.budget_ms = u32::try_from(left_ms).unwrap_or(u32::MAX);
        // `take` counts its own refusals.
        core.take(&identity, request, &answers, received)
    };
    drop(answers);
    spawn_answer(tasks, link, message, identity, id, admitted.map(|()| rx));
}

fn spawn_answer(
    tasks: &mut JoinSet<()>,
    link: &WorkerLink,
    message: jetstream::Message,
    device: Identity,
    id: u64,
    waiting: Result<mpsc::UnboundedReceiver<Message>, RemoteError>,
) {
    let link = link.clone();
    tasks.spawn(async move {
        if matches!(waiting, Err(RemoteError::ShuttingDown)) {
            // This worker is draining: another one serves it.
            let _ = message.ack_with(AckKind::Nak(None)).await;
            return;
        }
        let response = match waiting {
            Err(e) => InferResponse {
                request_id: id,
                outcome: Err(e),
            },
            Ok(rx) => match wait_for_answer(&link, &message, rx).await {
                Some(r) => r,
                // Re-pointed to a newer delivery of the same request, or killed.
                None => return,
            },
        };
        if store_answer(&link, &message, &device, response).await && link.acks {
            // Stored: the request is done. A lost ack only means a redelivery, whose
            // answer the replies stream de-duplicates.
            if let Err(e) = message.ack().await {
                debug!(device = %device, request = id, "ack: {e}");
            }
        }
    });
}

/// Waits for the core's answer, telling the broker every third of the ack wait that the
/// request is still being worked on.
async fn wait_for_answer(
    link: &WorkerLink,
    message: &jetstream::Message,
    mut rx: mpsc::UnboundedReceiver<Message>,
) -> Option<InferResponse> {
    let mut alive = tokio::time::interval(link.ack_wait / 3);
    alive.tick().await;
    loop {
        tokio::select! {
            answer = rx.recv() => match answer? {
                Message::InferResponse(r) => return Some(r),
                other => debug!("unexpected {} for a request", other.kind()),
            },
            _ = alive.tick() => {
                let _ = message.ack_with(AckKind::Progress).await;
            }
        }
    }
}

/// Publishes `response` to the device's answers with the request's message id, retrying
/// while the broker is away (for [`PUBLISH_PATIENCE`]); whether it was stored.
async fn store_answer(
    link: &WorkerLink,
    message: &jetstream::Message,
    device: &Identity,
    response: InferResponse,
) -> bool {
    let id = response.request_id;
    let bytes = match encode_frame(&Message::InferResponse(response)) {
        Ok(b) => bytes::Bytes::from(b),
        Err(e) => {
            warn!(%device, request = id, "an answer that does not encode: {e}");
            return false;
        }
    };
    let subject = link.subjects.reply(&device.device);
    let msg_id = link
        .subjects
        .message_id(&device.device, device.instance, id);
    let start = Instant::now();
    let mut delay = Duration::from_millis(50);
    loop {
        let publish = jetstream::message::PublishMessage::build()
            .payload(bytes.clone())
            .message_id(&msg_id);
        let stored = match link.js.send_publish(subject.clone(), publish).await {
            Ok(ack) => ack.await.map(|_| ()).map_err(|e| e.to_string()),
            Err(e) => Err(e.to_string()),
        };
        match stored {
            Ok(()) => return true,
            Err(e) if start.elapsed() >= PUBLISH_PATIENCE => {
                warn!(%device, request = id, "giving up storing an answer: {e}");
                return false;
            }
            Err(e) => {
                debug!(%device, request = id, "storing an answer: {e}; retrying");
                let _ = message.ack_with(AckKind::Progress).await;
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(1));
            }
        }
    }
}

/// Answers handshakes (ensuring the device's consumer of its answers first) and link probes,
/// in the workers' queue group so that one worker answers each.
async fn respond(welcome: Welcome, link: WorkerLink) {
    let subjects = &link.subjects;
    let subscribe = |subject: String| {
        link.client
            .queue_subscribe(subject, subjects.workers().to_owned())
    };
    let (hellos, pings) = match tokio::try_join!(
        subscribe(subjects.hellos(&link.model)),
        subscribe(subjects.pings(&link.model))
    ) {
        Ok(s) => s,
        Err(e) => {
            warn!("cannot answer handshakes: {e}");
            return;
        }
    };
    let welcome = match encode_frame(&Message::Welcome(welcome)) {
        Ok(w) => bytes::Bytes::from(w),
        Err(e) => {
            warn!("welcome: {e}");
            return;
        }
    };
    let mut hellos = hellos.fuse();
    let mut pings = pings.fuse();
    // Only a reply to the asking device's own inboxes: the reply subject is the sender's to
    // choose and the broker does not check it, so without this a device could make a worker
    // publish (with the worker's rights) to the JetStream API or to another device.
    let reply_to = |message: &async_nats::Message| {
        let device = subjects.last_device(message.subject.as_str())?;
        let reply = message.reply.as_ref()?;
        let inbox = format!("{}.", subjects.inbox(device));
        reply
            .as_str()
            .starts_with(&inbox)
            .then(|| (device.to_owned(), reply.clone()))
    };
    loop {
        tokio::select! {
            Some(hello) = hellos.next() => {
                let Some((device, reply)) = reply_to(&hello) else {
                    debug!(subject = %hello.subject, "a handshake without the device's own inbox");
                    continue;
                };
                if link.devices.is_known(&device) {
                    let _ = link.client.publish(reply, welcome.clone()).await;
                    continue;
                }
                let Ok(slot) = link.devices.running.clone().try_acquire_owned() else {
                    debug!(%device, "too many device set-ups at once; the device will retry");
                    continue;
                };
                let (link, welcome) = (link.clone(), welcome.clone());
                tokio::spawn(async move {
                    match link.ensure_device(&device).await {
                        Ok(()) => {
                            link.devices.remember(&device);
                            let _ = link.client.publish(reply, welcome).await;
                        }
                        Err(e) => warn!(%device, "cannot make the device's answers consumer: {e}"),
                    }
                    drop(slot);
                });
            }
            Some(ping) = pings.next() => {
                if ping.payload.len() > MAX_PROBE {
                    continue;
                }
                if let Some((_, reply)) = reply_to(&ping) {
                    let _ = link.client.publish(reply, bytes::Bytes::new()).await;
                }
            }
            else => return,
        }
    }
}
