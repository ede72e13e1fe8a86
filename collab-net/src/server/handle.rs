//! Starting a server, and the handle that watches and stops it.

use std::sync::Arc;

use collab_core::Backend;
use collab_core::adaptive::TokenPolicyContext;
use collab_core::model::{ModelConfig, Transformer};
use collab_policies::svd::SplitBases;
use tracing::{info, warn};

use super::ServerError;
use super::accept::accept_loop;
use super::compute;
use super::config::ServerConfig;
use super::state::{Phase, Shared};
use super::stats::ServerStats;
use crate::transport::Listener;
use crate::wire::validate::{InputFacts, ModelFacts};

/// The cloud server: see [`Server::start`].
#[derive(Debug)]
pub struct Server;

impl Server {
    /// Starts the compute thread over `model` (on any backend: pick one by name at the process
    /// boundary with `collab_backends::any`) and serves connections from `listener` until
    /// [`ServerHandle::shutdown`] or [`ServerHandle::kill`] (or the handle is dropped, which
    /// kills). Must be called inside a tokio runtime; the connection tasks run on it, the
    /// compute on its own thread.
    ///
    /// # Errors
    /// [`ServerError::NoRuntime`] outside a runtime; [`ServerError::Config`] for an unusable
    /// config, a model that is neither a 3-channel ViT classifier nor a BERT-family encoder,
    /// a token policy that does not build for the model, or split bases that do not fit
    /// the model (another feature width, a split point at or past its last block);
    /// [`ServerError::Thread`] if the compute thread cannot be spawned.
    pub fn start<B: Backend>(
        model: Arc<Transformer<B>>,
        config: ServerConfig,
        listener: impl Listener,
    ) -> Result<ServerHandle, ServerError> {
        Self::start_with_front(model, config, |shared, runtime| {
            runtime.spawn(accept_loop(listener, shared))
        })
    }

    /// [`Server::start`] with another front than a listener's accept loop: `front` is
    /// spawned over the shared state and takes requests in (the NATS worker,
    /// `crate::nats::NatsWorker`). It must end once the phase is `Closing` or `Killed`.
    pub(crate) fn start_with_front<B: Backend>(
        model: Arc<Transformer<B>>,
        config: ServerConfig,
        front: impl FnOnce(Arc<Shared>, &tokio::runtime::Handle) -> tokio::task::JoinHandle<()>,
    ) -> Result<ServerHandle, ServerError> {
        let runtime = tokio::runtime::Handle::try_current().map_err(|_| ServerError::NoRuntime)?;
        config.validate()?;
        let facts = facts_of(&model, &config.model_id)?;
        if let Some(bases) = &config.bases {
            check_bases(bases, &facts)?;
        }
        let policy = config
            .policy
            .build()
            .map_err(|e| ServerError::Config(format!("policy {:?}: {e}", config.policy)))?;
        let serves = (0..=facts.layers)
            .map(|k| policy.accepts(k, facts.layers))
            .collect();
        let tokens = match &config.tokens {
            Some(t) => {
                let context = TokenPolicyContext {
                    layers: facts.layers,
                    tokens: facts.tokens,
                    protected: facts.protected(),
                    batch_budget: policy.budget(),
                };
                let built = t
                    .build(&context)
                    .map_err(|e| ServerError::Config(format!("tokens {t:?}: {e}")))?;
                info!(tokens = %built.name(), "token merging per pass");
                Some(built)
            }
            None => None,
        };
        let policy_name = policy.name();
        let (commands, receiver) = std::sync::mpsc::channel();
        let kind = config.policy.clone();
        info!(
            model = %config.model_id,
            policy = %policy_name,
            codecs = config.codecs.families().count(),
            capacity = config.capacity,
            layers = facts.layers,
            "server starting"
        );
        let shared = Arc::new(Shared::new(config, facts, serves, policy_name, commands));
        let compute = compute::spawn(model, (policy, kind), tokens, shared.clone(), receiver)
            .map_err(ServerError::Thread)?;
        let accept = front(shared.clone(), &runtime);
        Ok(ServerHandle {
            shared,
            compute: Some(compute),
            accept: Some(accept),
        })
    }
}

/// Checks that `bases` fit the served model: its feature width, split points `1..L`.
fn check_bases(bases: &SplitBases, facts: &ModelFacts) -> Result<(), ServerError> {
    let bad = |m: String| {
        Err(ServerError::Config(format!(
            "split bases of `{}`: {m}",
            bases.model()
        )))
    };
    if let Some(f) = bases.features().filter(|&f| f != facts.features) {
        return bad(format!("{f} features; the model has {}", facts.features));
    }
    if let Some(k) = bases.splits().find(|&k| k >= facts.layers) {
        return bad(format!(
            "split {k} sends nothing to a server of {} blocks (splits 1..{})",
            facts.layers, facts.layers
        ));
    }
    Ok(())
}

/// What the server needs to know of its model: ViT classifiers on RGB images and BERT-family
/// sentence encoders serve.
fn facts_of<B: Backend>(model: &Transformer<B>, model_id: &str) -> Result<ModelFacts, ServerError> {
    let layers = model.num_blocks();
    match model.config() {
        ModelConfig::Vit(v) if v.channels == 3 => Ok(ModelFacts {
            model_id: model_id.to_owned(),
            layers,
            tokens: v.num_tokens(),
            features: v.encoder.hidden,
            input: InputFacts::Image { side: v.image_size },
        }),
        ModelConfig::Vit(v) => Err(ServerError::Config(format!(
            "the server takes RGB images; this ViT has {} channels",
            v.channels
        ))),
        ModelConfig::Bert(b) => Ok(ModelFacts {
            model_id: model_id.to_owned(),
            layers,
            tokens: b.max_positions,
            features: b.encoder.hidden,
            input: InputFacts::Text {
                vocab: b.vocab_size,
            },
        }),
    }
}

/// A running server: its facts, metrics and counters, and the two ways to stop it.
///
/// Dropping the handle without [`shutdown`](Self::shutdown) kills the server (as
/// [`kill`](Self::kill), without waiting).
#[derive(Debug)]
pub struct ServerHandle {
    shared: Arc<Shared>,
    compute: Option<std::thread::JoinHandle<()>>,
    accept: Option<tokio::task::JoinHandle<()>>,
}

impl ServerHandle {
    /// What the served model expects of a request.
    pub fn facts(&self) -> &ModelFacts {
        &self.shared.facts
    }

    /// The metrics in the Prometheus (OpenMetrics) text format.
    pub fn metrics_text(&self) -> String {
        self.shared.render_metrics()
    }

    /// The counters now.
    pub fn stats(&self) -> ServerStats {
        self.shared.stats()
    }

    /// A cloneable view for health and metrics endpoints (see [`super::serve_http`]).
    pub fn monitor(&self) -> ServerMonitor {
        ServerMonitor {
            shared: self.shared.clone(),
        }
    }

    /// Graceful shutdown: stops accepting connections and new requests (a new
    /// `InferRequest` is answered `ShuttingDown`), lets the compute thread finish and answer
    /// every accepted request, flushes each connection's answers and closes it with
    /// `Goodbye(ShuttingDown)`, stops the compute thread, and returns the final counters.
    pub async fn shutdown(mut self) -> ServerStats {
        info!(in_flight = self.shared.in_flight(), "graceful shutdown");
        self.shared.begin_drain();
        if let Some(thread) = self.compute.take()
            && !matches!(
                tokio::task::spawn_blocking(move || thread.join()).await,
                Ok(Ok(()))
            )
        {
            warn!("the compute thread ended abnormally");
        }
        // Normally empty: only if the thread died would anything be left unanswered.
        self.shared.abandon("the server's compute thread stopped");
        self.shared.set_phase(Phase::Closing);
        if let Some(accept) = self.accept.take() {
            let _ = accept.await;
        }
        self.shared.set_phase(Phase::Stopped);
        let stats = self.shared.stats();
        info!(?stats, "server stopped");
        stats
    }

    /// Crash emulation (tests): closes every connection at once without answering, drops the
    /// queued work and stops the compute thread (after the step it is running, if any).
    pub async fn kill(mut self) {
        warn!(in_flight = self.shared.in_flight(), "killing the server");
        self.shared.kill();
        if let Some(accept) = self.accept.take() {
            let _ = accept.await;
        }
        if let Some(thread) = self.compute.take() {
            let _ = tokio::task::spawn_blocking(move || thread.join()).await;
        }
    }
}

impl Drop for ServerHandle {
    fn drop(&mut self) {
        if self.accept.is_some() || self.compute.is_some() {
            self.shared.kill();
        }
    }
}

/// How a server is (see [`ServerMonitor::health`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Health {
    /// Serving, and taking new connections.
    Serving,
    /// Serving its sessions, but a connection limit refused new connections within the last
    /// 10 s: why.
    Degraded(String),
    /// Shutting down, stopped or killed.
    ShuttingDown,
}

/// A cloneable, read-only view of a server: health, metrics, counters.
#[derive(Clone, Debug)]
pub struct ServerMonitor {
    shared: Arc<Shared>,
}

impl ServerMonitor {
    /// Whether the server is serving (not shutting down, stopped or killed); it may be
    /// [`Health::Degraded`].
    pub fn healthy(&self) -> bool {
        self.shared.phase() == Phase::Running
    }

    /// How the server is, for `/healthz`.
    pub fn health(&self) -> Health {
        if !self.healthy() {
            return Health::ShuttingDown;
        }
        match self.shared.limits.refusing() {
            None => Health::Serving,
            Some((ago, total)) => Health::Degraded(format!(
                "refusing new connections: the last {} ms ago, {total} since the start \
                 (a connection limit is reached; see collab_connections_refused_total)",
                ago.as_millis()
            )),
        }
    }

    /// The metrics in the Prometheus (OpenMetrics) text format.
    pub fn metrics_text(&self) -> String {
        self.shared.render_metrics()
    }

    /// The counters now.
    pub fn stats(&self) -> ServerStats {
        self.shared.stats()
    }

    /// What the dashboard shows now (see [`super::board`]).
    pub fn board_snapshot(&self) -> super::board::BoardSnapshot {
        self.shared.board_snapshot()
    }

    /// The board, to send operator settings ([`super::board::Board::apply`]) or start a phase.
    pub fn board(&self) -> &super::board::Board {
        &self.shared.board
    }

    /// Waits until the server has stopped (shut down or killed).
    pub async fn stopped(&self) {
        let mut phase = self.shared.subscribe();
        let _ = phase
            .wait_for(|p| matches!(p, Phase::Stopped | Phase::Killed))
            .await;
    }
}
