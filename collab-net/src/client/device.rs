//! [`Device`]: the head part of a split model on the device, with split selection.
//!
//! For each image: read the link estimate (probing at the first request, then refreshing it
//! in the background every `probe_every`), estimate the server's queue from its latest pushed
//! load ([`queue_estimate`]), let the [`SplitStrategy`] pick `(k, codec)`, run the device's
//! part on a blocking thread ([`tokio::task::spawn_blocking`]; compute never runs on the async
//! runtime), and send with the budget the deadline leaves
//! ([`server_budget`]`(deadline, elapsed, rtt)`). The batch sizes the server reports are fed
//! back into the next queue estimate.
//!
//! An operator's settings ([`DeviceClient::settings`], sent from the server's dashboard)
//! replace the configured deadline and loss limit from the next request on; a new link
//! setting is applied to the device's link emulator ([`DeviceConfig::emulated_link`]) and
//! the link is probed again before the next choice, so the split moves at once. Each finished
//! request is reported to the server ([`DeviceClient::report`], unless
//! [`DeviceConfig::report`] is off): its split, codec, latency and outcome, never its data.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use collab_core::Backend;
use collab_core::model::Transformer;
use collab_core::split::{CodecId, Conditions, SplitStrategy};
use collab_core::token::TokenAdapter;
use collab_policies::codec::CodecRegistry;
use collab_policies::svd::SplitBases;
use tokio::sync::{Mutex, watch};

use super::error::ClientError;
use super::handle::{DeviceClient, LinkEstimate, Outgoing};
use super::head::{DeviceInput, run_head};
use super::plan::{Plan, plan_for, queue_estimate, server_budget};
use crate::transport::{Link, LinkControl};
use crate::wire::{
    DeviceSettings, LinkSetting, RemoteError, ReportOutcome, RequestReport, raw_tokens,
};

/// How long past the deadline a call still waits for its answer (a late answer is reported,
/// as late, rather than lost).
const GRACE: Duration = Duration::from_secs(1);

/// The largest bandwidth handed to the selector, bytes/s (an ideal link probes as infinite).
const MAX_BANDWIDTH: f64 = 1e12;

/// How a device behaves.
#[derive(Clone, Debug)]
pub struct DeviceConfig {
    /// End-to-end latency budget of one request (default 300 ms).
    pub deadline: Duration,
    /// The largest accuracy loss a split choice may cost (default 0.02).
    pub max_loss: f64,
    /// Emulates a device this many times slower than the machine it runs on (>= 1; default
    /// 1): after the model compute, the device sleeps `(slowdown - 1) x` the measured compute
    /// time. Pair it with a device cost profile scaled by the same factor.
    pub slowdown: f64,
    /// How old a link estimate may get before it is refreshed (default 2 s).
    pub probe_every: Duration,
    /// Padding of the bandwidth probe, bytes (default 32 KiB).
    pub probe_bytes: usize,
    /// What the calibrated codecs need at each split point (default none: the device sends
    /// only basis-free codecs). Must be the file the server was started with.
    pub bases: Option<Arc<SplitBases>>,
    /// The codecs the device encodes with (default [`CodecRegistry::builtin`]); the server
    /// must decode the same families.
    pub codecs: Arc<CodecRegistry>,
    /// The link emulator the device's transport runs through, if any (a demo or test
    /// device): an operator's link settings change it (default none: they only trigger a new
    /// probe).
    pub emulated_link: Option<LinkControl>,
    /// Whether each finished request is reported to the server for its dashboard (default
    /// true; only the split, codec, latency, outcome and link estimate are sent).
    pub report: bool,
}

impl Default for DeviceConfig {
    fn default() -> Self {
        Self {
            deadline: Duration::from_millis(300),
            max_loss: 0.02,
            slowdown: 1.0,
            probe_every: Duration::from_secs(2),
            probe_bytes: 32 * 1024,
            bases: None,
            codecs: Arc::new(CodecRegistry::builtin()),
            emulated_link: None,
            report: true,
        }
    }
}

/// One answered request and what it took.
#[derive(Clone, Debug, PartialEq)]
pub struct Classified {
    /// The best classes with their logits, best first (a classifier; empty for an encoder).
    pub top: Vec<(u32, f32)>,
    /// The pooled embedding (a sentence encoder; empty for a classifier).
    pub embedding: Vec<f32>,
    /// The split point used.
    pub split: usize,
    /// The strategy's codec ([`CodecId::raw`], `f32`, `svd-int8-r55`, [`CodecId::none`], ...).
    pub codec: CodecId,
    /// Payload bytes sent (0 for device-only).
    pub bytes: usize,
    /// Device milliseconds: crop, compute, emulated slowdown and encoding.
    pub device_ms: f64,
    /// End-to-end milliseconds of the call.
    pub total_ms: f64,
    /// Milliseconds in the server (queue and compute; 0 for device-only).
    pub server_ms: f64,
    /// The server batch the request's head ran in (0 for device-only).
    pub batch: u32,
}

/// The link estimate and its refresh state.
#[derive(Debug, Default)]
struct LinkState {
    estimate: Option<(Instant, LinkEstimate)>,
    refreshing: bool,
    /// The operator's link setting the estimate was taken under.
    setting: Option<LinkSetting>,
    /// Bumped at each new setting: a background refresh started before it is dropped.
    generation: u64,
}

/// What a request got to before it ended, for its report.
#[derive(Debug, Default)]
struct Attempt {
    split: Option<usize>,
    codec: Option<CodecId>,
    device_ms: f64,
    deadline: Duration,
    link: Option<LinkEstimate>,
}

/// A device: the model's head part on any backend, a split strategy and a client.
#[derive(Debug)]
pub struct Device<B: Backend> {
    model: Arc<Transformer<B>>,
    strategy: Box<dyn SplitStrategy>,
    /// Changes the tokens inside the device's blocks (none: the model as it is).
    adapter: Option<Arc<dyn TokenAdapter<B>>>,
    client: DeviceClient,
    config: DeviceConfig,
    link: Arc<Mutex<LinkState>>,
    /// The latest server batch size seen in an answer (for the queue estimate).
    batch: AtomicU32,
    /// The operator's settings, as the client received them.
    settings: watch::Receiver<DeviceSettings>,
}

impl<B: Backend> Device<B> {
    /// A device running `model`'s head part, choosing splits with `strategy` (built for the
    /// same model; any [`SplitStrategy`], wrapped as the caller likes, e.g.
    /// `Hysteresis::new(Fallback::new(selector, FastestWithinLoss::new(selector)))`) and
    /// sending through `client`.
    pub fn new(
        model: Arc<Transformer<B>>,
        strategy: impl SplitStrategy + 'static,
        client: DeviceClient,
        config: DeviceConfig,
    ) -> Self {
        Self {
            model,
            strategy: Box::new(strategy),
            adapter: None,
            settings: client.settings(),
            client,
            config,
            link: Arc::new(Mutex::new(LinkState::default())),
            batch: AtomicU32::new(1),
        }
    }

    /// The device with `adapter` run inside its blocks (ToMe merging, for one): the merged
    /// tokens' sizes cross the split with the activation ([`crate::wire::TokenMeta`]), so the
    /// server's blocks attend and pool by them. A split strategy's cost model should then
    /// describe the adapted blocks.
    pub fn with_token_adapter(mut self, adapter: Arc<dyn TokenAdapter<B>>) -> Self {
        self.adapter = Some(adapter);
        self
    }

    /// The client.
    pub fn client(&self) -> &DeviceClient {
        &self.client
    }

    /// The link estimate: measured now if there is none, else the latest, with a background
    /// refresh started when it is older than `probe_every`.
    async fn link(&self) -> Result<LinkEstimate, ClientError> {
        let mut state = self.link.lock().await;
        let setting = self.settings.borrow().link;
        if setting != state.setting {
            // A new link from the operator: emulate it, and measure it before choosing.
            if let (Some(l), Some(control)) = (setting, &self.config.emulated_link) {
                control.set(Link {
                    bandwidth: f64::from(l.mbit) * 1e6 / 8.0,
                    rtt: f64::from(l.rtt_ms) / 1e3,
                    ..control.get()
                });
            }
            state.setting = setting;
            state.estimate = None;
            state.generation += 1;
        }
        let Some((at, estimate)) = state.estimate else {
            let estimate = self.client.probe(self.config.probe_bytes).await?;
            state.estimate = Some((Instant::now(), estimate));
            return Ok(estimate);
        };
        if at.elapsed() >= self.config.probe_every && !state.refreshing {
            state.refreshing = true;
            let (client, link, bytes, generation) = (
                self.client.clone(),
                self.link.clone(),
                self.config.probe_bytes,
                state.generation,
            );
            tokio::spawn(async move {
                let probed = client.probe(bytes).await;
                let mut state = link.lock().await;
                state.refreshing = false;
                if state.generation != generation {
                    return; // measured on a link the operator has changed since
                }
                match probed {
                    Ok(e) => state.estimate = Some((Instant::now(), e)),
                    Err(err) => {
                        tracing::warn!("link probe failed: {err}");
                        // Keep the old estimate; try again after another period.
                        if let Some((at, _)) = state.estimate.as_mut() {
                            *at = Instant::now();
                        }
                    }
                }
            });
        }
        Ok(estimate)
    }

    /// The deadline and loss limit of the next request: the operator's, else the config's.
    fn limits(&self) -> (Duration, f64) {
        let s = self.settings.borrow();
        let deadline = s.deadline_ms.map_or(self.config.deadline, |ms| {
            Duration::from_secs_f64(f64::from(ms) / 1e3)
        });
        let max_loss = s.max_loss.map_or(self.config.max_loss, f64::from);
        (deadline, max_loss)
    }

    /// The conditions of the next choice.
    fn conditions(&self, link: &LinkEstimate, deadline: Duration, max_loss: f64) -> Conditions {
        let server_queue = self.client.server_load().map_or(0.0, |l| {
            queue_estimate(&l, self.batch.load(Ordering::Relaxed))
        });
        Conditions {
            bandwidth: link.bandwidth.min(MAX_BANDWIDTH),
            rtt: link.rtt.as_secs_f64(),
            server_queue,
            deadline: deadline.as_secs_f64(),
            max_loss,
        }
    }

    /// Classifies one decoded RGB image: [`Device::infer`] of [`DeviceInput::Image`].
    ///
    /// # Errors
    /// As [`Device::infer`].
    pub async fn classify(&self, image: &image::RgbImage) -> Result<Classified, ClientError> {
        self.infer(DeviceInput::Image(image.clone())).await
    }

    /// Runs one request (see the module docs for the steps): an image for a classifier, token
    /// ids for a sentence encoder. The first call also waits for the first link probe; its
    /// time counts against the deadline.
    ///
    /// # Errors
    /// Any [`ClientError`] of [`DeviceClient::infer`] and [`DeviceClient::probe`];
    /// [`ClientError::Local`] for an input the model does not take, a compute or encoding
    /// failure; and `Remote(DeadlineMissed { budget_ms: 0 })`, without sending, when the
    /// device's part left no time for the server.
    pub async fn infer(&self, input: DeviceInput) -> Result<Classified, ClientError> {
        let start = Instant::now();
        let mut attempt = Attempt::default();
        let result = self.run(input, start, &mut attempt).await;
        if self.config.report {
            self.report(&result, &attempt, start);
        }
        result
    }

    /// Tells the server how the request ended.
    fn report(&self, result: &Result<Classified, ClientError>, attempt: &Attempt, start: Instant) {
        let (link_mbit, rtt_ms) = match attempt.link {
            Some(e) => (
                (e.bandwidth.min(MAX_BANDWIDTH) * 8.0 / 1e6) as f32,
                ms(e.rtt) as f32,
            ),
            None => (0.0, 0.0),
        };
        let deadline_ms = ms(attempt.deadline);
        let (total_ms, outcome) = match result {
            Ok(c) if c.total_ms > deadline_ms => (c.total_ms, ReportOutcome::Late),
            Ok(c) => (c.total_ms, ReportOutcome::Ok),
            Err(e) => (ms(start.elapsed()), ReportOutcome::Error(e.kind().into())),
        };
        self.client.report(RequestReport {
            split: attempt.split.map(|k| u32::try_from(k).unwrap_or(u32::MAX)),
            codec: attempt.codec.clone().unwrap_or_else(CodecId::none),
            total_ms: total_ms as f32,
            device_ms: attempt.device_ms as f32,
            outcome,
            deadline_ms: deadline_ms as f32,
            link_mbit,
            rtt_ms,
        });
    }

    /// [`Device::infer`] without the report; `attempt` records how far it got.
    async fn run(
        &self,
        input: DeviceInput,
        start: Instant,
        attempt: &mut Attempt,
    ) -> Result<Classified, ClientError> {
        let (deadline, max_loss) = self.limits();
        attempt.deadline = deadline;
        let link = self.link().await?;
        attempt.link = Some(link);
        let choice = self
            .strategy
            .choose(&self.conditions(&link, deadline, max_loss))?;
        attempt.split = Some(choice.split);
        attempt.codec = Some(choice.codec.clone());
        let layers = self.model.num_blocks();
        let bases = self.config.bases.clone();
        let codecs = self.config.codecs.clone();
        let plan = plan_for(&choice, layers, &codecs, bases.as_deref())?;
        let wire_codec = match (&plan, &input) {
            (Plan::ServerOnly, DeviceInput::Tokens(_)) => raw_tokens(),
            _ => plan.wire_codec(),
        };
        let (model, head_plan) = (self.model.clone(), plan.clone());
        let adapter = self.adapter.clone();
        let head_start = Instant::now();
        let head = tokio::task::spawn_blocking(move || {
            let adapter = adapter.as_deref();
            run_head(
                &model,
                &input,
                &head_plan,
                &codecs,
                bases.as_deref(),
                adapter,
            )
        })
        .await
        .map_err(|e| ClientError::Local(format!("device compute task: {e}")))??;
        let slowdown = self.config.slowdown;
        if slowdown.is_finite() && slowdown > 1.0 {
            tokio::time::sleep(head.compute.mul_f64(slowdown - 1.0)).await;
        }
        let device_ms = ms(head_start.elapsed());
        attempt.device_ms = device_ms;
        let mut done = Classified {
            top: head.top,
            embedding: head.embedding,
            split: plan.split(layers),
            codec: choice.codec,
            bytes: head.payload.len(),
            device_ms,
            total_ms: 0.0,
            server_ms: 0.0,
            batch: 0,
        };
        if plan != Plan::DeviceOnly {
            let budget = server_budget(deadline, start.elapsed(), link.rtt).ok_or(
                ClientError::Remote(RemoteError::DeadlineMissed { budget_ms: 0 }),
            )?;
            let request = Outgoing {
                split: u32::try_from(done.split).unwrap_or(u32::MAX),
                codec: wire_codec,
                payload: head.payload,
                budget,
                max_loss: max_loss as f32,
                meta: head.meta,
            };
            let prediction = self
                .client
                .infer(request, budget + link.rtt + GRACE)
                .await?;
            if prediction.batch > 0 {
                self.batch.store(prediction.batch, Ordering::Relaxed);
            }
            done.top = prediction.top;
            done.embedding = prediction.embedding;
            done.server_ms = f64::from(prediction.server_ms);
            done.batch = prediction.batch;
        }
        done.total_ms = ms(start.elapsed());
        Ok(done)
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}
