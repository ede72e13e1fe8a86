//! [`DeviceClient`]: the handle callers hold. Cloning is cheap; every clone talks to the one
//! connection task (see [`super::connection`]) through a channel.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

use super::config::ClientConfig;
use super::connection::{Command, Connection, Shared};
use super::error::ClientError;
use super::handshake::connect_with_backoff;
use crate::transport::Transport;
use crate::wire::{DeviceSettings, InferRequest, Prediction, RequestReport, ServerLoad, Welcome};

/// One request as the caller gives it; the client assigns its id.
#[derive(Clone, Debug, PartialEq)]
pub struct Outgoing {
    /// Split point `k` (the device ran blocks `0..k`; 0 is server-only).
    pub split: u32,
    /// The payload's codec: [`crate::wire::raw_rgb8`] at split 0, else the codec that encoded
    /// it.
    pub codec: collab_core::split::CodecId,
    /// The encoded input or activation.
    pub payload: Vec<u8>,
    /// The server's time budget, rounded up to whole milliseconds on the wire.
    pub budget: Duration,
    /// The accuracy loss the split choice accepted.
    pub max_loss: f32,
    /// The activation's per-token facts when they are not the default (see
    /// [`crate::wire::TokenMeta`]).
    pub meta: Option<crate::wire::TokenMeta>,
}

/// A measured link.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct LinkEstimate {
    /// Round-trip time of a small ping.
    pub rtt: Duration,
    /// Bytes per second (infinite when probed with no padding).
    pub bandwidth: f64,
}

/// The shortest extra time a padded probe is credited with, seconds: bounds the bandwidth
/// estimate (to `probe_bytes / 10 us`) when jitter makes the padded ping look no slower.
const MIN_PROBE_DELTA: f64 = 1e-5;

/// The device side of a session with the cloud server.
///
/// One background task owns the connection; this handle (cheap to clone) sends it commands.
/// Every call ends with exactly one result or one [`ClientError`], whatever the server sends.
#[derive(Clone, Debug)]
pub struct DeviceClient {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    tx: mpsc::UnboundedSender<Command>,
    shared: Arc<Shared>,
    next_id: AtomicU64,
    task: Mutex<Option<JoinHandle<()>>>,
    connect_timeout: Duration,
}

/// Tells the connection task to forget a request whose caller stopped waiting (timed out or
/// dropped the call), unless disarmed.
struct CancelGuard<'a> {
    tx: &'a mpsc::UnboundedSender<Command>,
    id: u64,
    armed: bool,
}

impl Drop for CancelGuard<'_> {
    fn drop(&mut self) {
        if self.armed {
            let _ = self.tx.send(Command::Cancel(self.id));
        }
    }
}

fn closed() -> ClientError {
    ClientError::Unreachable {
        attempts: 0,
        last: "the client was closed".into(),
    }
}

impl DeviceClient {
    /// Connects and handshakes (`Hello` -> `Welcome`), retrying with backoff up to
    /// `config.max_attempts` times, then starts the connection task. Must be called inside a
    /// tokio runtime.
    ///
    /// # Errors
    /// [`ClientError::Refused`] if the server refuses the device (not retried);
    /// [`ClientError::Unreachable`] if every attempt failed.
    pub async fn connect(
        transport: Arc<dyn Transport>,
        config: ClientConfig,
    ) -> Result<Self, ClientError> {
        let mut rng = StdRng::from_os_rng();
        // Binds this client's requests on the server to it (see `Hello::instance`).
        let instance = rng.random();
        let (conn, welcome) =
            connect_with_backoff(&*transport, &config, instance, &mut rng).await?;
        let connect_timeout = config.connect_timeout;
        Ok(Self::spawn(
            welcome,
            connect_timeout,
            &mut rng,
            |shared, rx, rng| {
                let task = Connection::new(transport, config, instance, shared, rx, rng);
                tokio::spawn(task.run(conn))
            },
        ))
    }

    /// The handle over a connection task `start` spawns with the shared state, the command
    /// channel and the client's random source.
    fn spawn(
        welcome: Welcome,
        connect_timeout: Duration,
        rng: &mut StdRng,
        start: impl FnOnce(Arc<Shared>, mpsc::UnboundedReceiver<Command>, StdRng) -> JoinHandle<()>,
    ) -> Self {
        let shared = Arc::new(Shared {
            welcome: Mutex::new(welcome),
            load: Mutex::new(None),
            settings: tokio::sync::watch::Sender::new(DeviceSettings::default()),
            reconnects: AtomicU64::new(0),
            unmatched: AtomicU64::new(0),
        });
        let (tx, rx) = mpsc::unbounded_channel();
        // Ids start at a random point so that a restarted device process does not reuse the
        // ids of requests an old server may still hold for the same device id.
        let first_id = rng.random_range(1..1u64 << 62);
        let task_rng = StdRng::from_rng(rng);
        let task = start(shared.clone(), rx, task_rng);
        Self {
            inner: Arc::new(Inner {
                tx,
                shared,
                next_id: AtomicU64::new(first_id),
                task: Mutex::new(Some(task)),
                connect_timeout,
            }),
        }
    }

    /// Connects through the NATS broker of `nats` instead of a direct connection (see
    /// [`crate::nats`]): the device's id is its NATS user unless `nats.user` says otherwise,
    /// a worker answers the handshake (retried with backoff up to `config.max_attempts`
    /// times), and requests go to the JetStream work queue. Everything else (the [`Device`]
    /// on top, ids, timeouts, one result per call) is as with [`DeviceClient::connect`];
    /// personalisation answers `Invalid` and reports are dropped (both need direct TCP),
    /// and no server load is pushed.
    ///
    /// [`Device`]: super::Device
    ///
    /// # Errors
    /// [`ClientError::Local`] for a device or model id that is not a subject token;
    /// [`ClientError::Unreachable`] when the broker refused or no worker answered;
    /// [`ClientError::Refused`] when the workers serve another model.
    pub async fn connect_nats(
        nats: &crate::nats::NatsConfig,
        config: ClientConfig,
    ) -> Result<Self, ClientError> {
        let mut rng = StdRng::from_os_rng();
        let instance = rng.random();
        let (device, welcome) =
            crate::nats::connect_device(nats, &config, instance, &mut rng).await?;
        Ok(Self::spawn(
            welcome,
            config.connect_timeout,
            &mut rng,
            |shared, rx, _| tokio::spawn(device.run(shared, rx)),
        ))
    }

    /// What the server said in the latest handshake.
    pub fn welcome(&self) -> Welcome {
        match self.inner.shared.welcome.lock() {
            Ok(w) => w.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// Sends one request with a fresh `request_id` and waits for its answer. If the
    /// connection drops first, the client reconnects with backoff and re-sends the same
    /// request (same id). Dropping the returned future abandons the request.
    ///
    /// # Errors
    /// [`ClientError::Remote`] with the server's typed answer; [`ClientError::Timeout`] after
    /// `timeout`; [`ClientError::Unreachable`] if reconnecting failed `max_attempts` times in
    /// a row (or the client was closed); [`ClientError::Refused`]; [`ClientError::Protocol`];
    /// [`ClientError::Local`] if the request is larger than the server's frame limit.
    pub async fn infer(
        &self,
        request: Outgoing,
        timeout: Duration,
    ) -> Result<Prediction, ClientError> {
        let id = self.inner.next_id.fetch_add(1, Ordering::Relaxed);
        let budget_ms = request.budget.as_micros().div_ceil(1000);
        let request = InferRequest {
            request_id: id,
            split: request.split,
            codec: request.codec,
            payload: request.payload,
            budget_ms: u32::try_from(budget_ms).unwrap_or(u32::MAX),
            max_loss: request.max_loss,
            meta: request.meta,
        };
        self.call(id, timeout, |reply| Command::Infer { request, reply })
            .await
    }

    /// Sends the command `make` builds around a reply channel and waits up to `timeout` for
    /// the answer; on timeout (or when the future is dropped) the call `id` is cancelled.
    async fn call<T>(
        &self,
        id: u64,
        timeout: Duration,
        make: impl FnOnce(oneshot::Sender<Result<T, ClientError>>) -> Command,
    ) -> Result<T, ClientError> {
        let (reply, answer) = oneshot::channel();
        self.inner.tx.send(make(reply)).map_err(|_| closed())?;
        let mut guard = CancelGuard {
            tx: &self.inner.tx,
            id,
            armed: true,
        };
        match tokio::time::timeout(timeout, answer).await {
            Ok(Ok(result)) => {
                guard.armed = false;
                result
            }
            Ok(Err(_)) => {
                guard.armed = false;
                Err(closed())
            }
            Err(_) => Err(ClientError::Timeout { after: timeout }),
        }
    }

    /// Asks the server for a student distilled for this device from `upload` (SPEC §6) and
    /// waits for its safetensors checkpoint (load it with
    /// `Transformer::from_safetensors_bytes`). Only the upload crosses the network: build it
    /// with a `Distiller` on the device. Like a request, it is re-sent with the same id if the
    /// connection drops first; dropping the future abandons it.
    ///
    /// # Errors
    /// [`ClientError::Remote`] with the server's typed answer (`Invalid` for an upload it
    /// does not take or a server that does not personalise, `Overloaded` while it trains for
    /// other devices); [`ClientError::Timeout`] after `timeout` (training takes a while: give
    /// it seconds to minutes); as [`DeviceClient::infer`].
    pub async fn personalise(
        &self,
        upload: collab_core::distill::Upload,
        timeout: Duration,
    ) -> Result<Vec<u8>, ClientError> {
        let id = self.inner.next_id.fetch_add(1, Ordering::Relaxed);
        let request = crate::wire::PersonaliseRequest {
            request_id: id,
            upload,
        };
        self.call(id, timeout, |reply| Command::Personalise { request, reply })
            .await
    }

    /// One ping padded with `pad` bytes: the time from writing it to its pong.
    async fn ping(&self, pad: usize) -> Result<Duration, ClientError> {
        let (reply, answer) = oneshot::channel();
        self.inner
            .tx
            .send(Command::Ping { pad, reply })
            .map_err(|_| closed())?;
        // Generous: room for a reconnect and for the padding over an ~80 kbit/s link.
        let limit = 2 * self.inner.connect_timeout
            + Duration::from_secs(5)
            + Duration::from_secs_f64(pad as f64 / 10_000.0);
        match tokio::time::timeout(limit, answer).await {
            Ok(Ok(r)) => r,
            Ok(Err(_)) => Err(closed()),
            Err(_) => Err(ClientError::Timeout { after: limit }),
        }
    }

    /// Measures the link: the RTT of a small ping, then the bandwidth from a ping padded with
    /// `probe_bytes` bytes, `bandwidth = probe_bytes / (t_big - t_small)` (the difference is
    /// taken as at least 10 us; `probe_bytes = 0` gives an infinite bandwidth). Requests in
    /// flight on the same link slow the padded ping, so the estimate is the bandwidth this
    /// client gets, not the link's.
    ///
    /// # Errors
    /// As [`DeviceClient::infer`]; [`ClientError::Timeout`] after a limit that allows for a
    /// reconnect and a link down to about 80 kbit/s.
    pub async fn probe(&self, probe_bytes: usize) -> Result<LinkEstimate, ClientError> {
        let rtt = self.ping(0).await?;
        if probe_bytes == 0 {
            return Ok(LinkEstimate {
                rtt,
                bandwidth: f64::INFINITY,
            });
        }
        let big = self.ping(probe_bytes).await?;
        let delta = big.saturating_sub(rtt).as_secs_f64().max(MIN_PROBE_DELTA);
        Ok(LinkEstimate {
            rtt,
            bandwidth: probe_bytes as f64 / delta,
        })
    }

    /// The latest [`ServerLoad`] the server pushed, if any.
    pub fn server_load(&self) -> Option<ServerLoad> {
        match self.inner.shared.load.lock() {
            Ok(l) => l.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// The operator's settings the server sent so far, merged (each field the latest given;
    /// all `None` until the first). [`super::Device`] reads the deadline and loss limit from
    /// it before each request; the link and rate are for whoever owns the link emulator and
    /// the request loop ([`tokio::sync::watch::Receiver::changed`] wakes them).
    pub fn settings(&self) -> tokio::sync::watch::Receiver<DeviceSettings> {
        self.inner.shared.settings.subscribe()
    }

    /// Tells the server how a request ended (for its dashboard), if connected; never waits
    /// and never fails (a report without a connection is dropped).
    pub fn report(&self, report: RequestReport) {
        let _ = self.inner.tx.send(Command::Report(report));
    }

    /// How many times the client reconnected after the first handshake.
    pub fn reconnects(&self) -> u64 {
        self.inner.shared.reconnects.load(Ordering::Relaxed)
    }

    /// Answers received for no pending request: one per call cancelled (timed out) before its
    /// answer came, and one per duplicate answer, which a correct server never sends.
    pub fn unmatched_answers(&self) -> u64 {
        self.inner.shared.unmatched.load(Ordering::Relaxed)
    }

    /// Closes the connection and waits for the connection task to end. Calls still pending
    /// on other clones end with [`ClientError::Unreachable`] (`the client was closed`).
    pub async fn close(self) {
        let _ = self.inner.tx.send(Command::Close);
        let task = match self.inner.task.lock() {
            Ok(mut t) => t.take(),
            Err(poisoned) => poisoned.into_inner().take(),
        };
        if let Some(task) = task {
            let _ = task.await;
        }
    }
}
