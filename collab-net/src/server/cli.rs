//! The `collab-server` command line: loads a checkpoint, serves devices on `--listen` and
//! health/metrics on `--metrics`, until SIGTERM or Ctrl-C, then shuts down gracefully.
//!
//! `--config FILE` takes everything from a pipeline config file instead (see
//! [`crate::pipeline`]): the file's `[model]`, `[[codecs]]` and `[server]` replace the other
//! options (only `--ready-file` still applies).
//!
//! Once bound it prints `listening on ADDR` on stdout and, with `--ready-file PATH`, writes
//! the address to `PATH` (atomically), so a parent that passed `--listen 127.0.0.1:0` learns
//! the port. Logs go to stderr through `tracing` (filter `COLLAB_LOG`, default `info`).

use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use collab_backends::any::{BackendName, BackendTask};
use collab_core::Backend;
use collab_core::batch::BatchPolicyConfig;
use collab_core::fixtures;
use collab_core::model::{ModelConfig, Transformer};
use collab_policies::svd::SplitBases;
use tracing::info;

use super::{Server, ServerConfig, serve_http};
use crate::auth::{DeviceTokens, TokenArgs};
use crate::pipeline::PipelineConfig;
use crate::transport::TcpAcceptor;

/// Options of the cloud server process.
#[derive(Clone, Debug, clap::Args)]
pub struct ServerArgs {
    /// A pipeline config file (TOML): its `[model]`, `[[codecs]]` and `[server]` sections
    /// replace the options below (except `--ready-file`).
    #[arg(long = "config", value_name = "FILE")]
    pub pipeline: Option<PathBuf>,
    /// Address devices connect to (port 0 picks a free port).
    #[arg(long, default_value = "127.0.0.1:7878")]
    pub listen: SocketAddr,
    /// Address of the HTTP health (`/healthz`) and Prometheus (`/metrics`) endpoints.
    #[arg(long, default_value = "127.0.0.1:9898")]
    pub metrics: SocketAddr,
    /// Address of the live dashboard (a web page: charts, devices, controls; see
    /// [`crate::dashboard`]); none by default.
    #[arg(long)]
    pub dashboard: Option<SocketAddr>,
    /// The environment variable holding the operator token that opens the dashboard's
    /// controls (unset or empty: the dashboard is read-only).
    #[arg(long, default_value = "COLLAB_OPERATOR_TOKEN")]
    pub operator_token_env: String,
    /// Safetensors checkpoint (default: the DeiT-Tiny fixture).
    #[arg(long)]
    pub checkpoint: Option<PathBuf>,
    /// Architecture preset of the checkpoint (default: `--model-id`).
    #[arg(long)]
    pub preset: Option<String>,
    /// Model id devices must announce.
    #[arg(long, default_value = "deit_tiny_patch16_224")]
    pub model_id: String,
    /// The secret devices must present (the public demo token when none is given, which is
    /// refused beyond loopback without `--insecure-demo-token`).
    #[command(flatten)]
    pub token: TokenArgs,
    /// A token per device (TOML, `[devices]` with `device-id = "token"` lines): each device
    /// must present its own, and the shared secret opens nothing.
    #[arg(long)]
    pub device_tokens: Option<PathBuf>,
    /// Listen beyond loopback with the public demo token (anyone may then connect).
    #[arg(long)]
    pub insecure_demo_token: bool,
    /// TLS for device connections: the server's certificate chain (PEM; with `--tls-key`).
    #[arg(long, requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// TLS: the private key of `--tls-cert` (PEM).
    #[arg(long, requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// Admission limit: requests accepted and not yet answered.
    #[arg(long, default_value_t = 64)]
    pub capacity: usize,
    /// Budget batch size of the worker (the `budget` of `--policy NAME`).
    #[arg(long, default_value_t = 8)]
    pub batch: usize,
    /// Batch policy: a registered kind (`shared`, `per-split`, `server-only`, or one a linked
    /// crate registers), built with `budget = --batch`; or its whole config as JSON,
    /// `{"kind": "shared", "budget": 16, "major_share": 0.5}`.
    #[arg(long, default_value = "shared")]
    pub policy: String,
    /// The backend the server computes on: `candle-cpu`, `candle-cuda[:N]`, `tch-cpu`,
    /// `tch-cuda[:N]`, `arm-q8`, ... (those compiled into this build).
    #[arg(long, default_value = "candle-cpu")]
    pub backend: BackendName,
    /// Open device connections at most.
    #[arg(long, default_value_t = 256)]
    pub max_connections: usize,
    /// Seconds a new connection has to send its Hello.
    #[arg(long, default_value_t = 3.0)]
    pub hello_timeout_s: f64,
    /// Seconds a device may stall inside a frame before it is closed.
    #[arg(long, default_value_t = 10.0)]
    pub frame_timeout_s: f64,
    /// Once listening, write the bound address to this file (under `[nats]`: the metrics
    /// address, since nothing listens for devices).
    #[arg(long)]
    pub ready_file: Option<PathBuf>,
    /// Serve as a worker on this NATS broker's work queue instead of listening (from a
    /// pipeline file's `[nats]`).
    #[arg(skip)]
    pub nats: Option<crate::nats::NatsConfig>,
    /// Split bases for the calibrated codecs (`cpca`, `mpca`, `tpca`, ...): the `bases.bin`
    /// that `cargo xtask exp svd-accuracy` writes beside its table. Devices must load the
    /// same file. Without it only f32, f16, bf16, int8 and svd[-p] are decoded.
    #[arg(long)]
    pub bases: Option<PathBuf>,
}

impl ServerArgs {
    /// The server config these options describe (reading `--bases`).
    ///
    /// # Errors
    /// A timeout that is not a positive number of seconds; a bases file, token file or device
    /// token file that cannot be read or is damaged; a token variable set but empty.
    pub fn config(&self) -> Result<ServerConfig> {
        let seconds = |name: &str, s: f64| {
            Duration::try_from_secs_f64(s)
                .ok()
                .filter(|d| !d.is_zero())
                .with_context(|| format!("--{name} must be a positive number of seconds, got {s}"))
        };
        let auth_token = self.token.secret().map_err(anyhow::Error::msg)?;
        let device_tokens = match &self.device_tokens {
            Some(path) => Some(Arc::new(DeviceTokens::load(path)?)),
            None => None,
        };
        let tls = match (&self.tls_cert, &self.tls_key) {
            (Some(cert), Some(key)) => Some(crate::tls::server_config(cert, key)?),
            _ => None,
        };
        Ok(ServerConfig {
            model_id: self.model_id.clone(),
            auth_token,
            device_tokens,
            tls,
            capacity: self.capacity,
            max_connections: self.max_connections,
            hello_timeout: seconds("hello-timeout-s", self.hello_timeout_s)?,
            frame_timeout: seconds("frame-timeout-s", self.frame_timeout_s)?,
            policy: policy_config(&self.policy, self.batch)?,
            bases: match &self.bases {
                Some(path) => Some(Arc::new(SplitBases::load(path)?)),
                None => None,
            },
            ..ServerConfig::default()
        })
    }
}

/// The batch policy `--policy` names: a kind with `budget`, or a JSON object.
///
/// # Errors
/// Bad JSON, an unregistered kind (the message lists the registered ones), a field the kind
/// does not take.
pub fn policy_config(policy: &str, budget: usize) -> Result<Arc<dyn BatchPolicyConfig>> {
    let value = if policy.trim_start().starts_with('{') {
        serde_json::from_str(policy).context("--policy is not a JSON object")?
    } else {
        serde_json::json!({ "kind": policy, "budget": budget })
    };
    let config: Box<dyn BatchPolicyConfig> =
        serde_json::from_value(value).with_context(|| format!("--policy {policy}"))?;
    Ok(Arc::from(config))
}

/// Runs the server process (see the module docs): returns after a graceful shutdown.
///
/// # Errors
/// A missing or broken checkpoint, an unknown preset, a bad option, a backend that cannot be
/// opened, an address that cannot be bound, or a ready file that cannot be written.
pub fn main(args: ServerArgs) -> Result<()> {
    init_tracing();
    let (args, config) = match &args.pipeline {
        Some(path) => {
            let pipeline = PipelineConfig::load(path)?;
            from_pipeline(args.clone(), &pipeline)?
        }
        None => {
            let config = args.config()?;
            (args, config)
        }
    };
    config.validate()?;
    check_exposure(&args, &config)?;
    let backend = args.backend.open()?;
    backend.run(Serve { args, config })
}

/// Refuses the public demo token on an address beyond loopback unless
/// `--insecure-demo-token`; warns about what is exposed in clear text.
///
/// # Errors
/// The demo token (and no per-device tokens) on a non-loopback `--listen`.
pub fn check_exposure(args: &ServerArgs, config: &ServerConfig) -> Result<()> {
    let public = !args.listen.ip().is_loopback();
    let demo = config.device_tokens.is_none() && config.auth_token.is_demo();
    if public && demo {
        anyhow::ensure!(
            args.insecure_demo_token,
            "refusing to listen on {} with the public demo token: set ${} (or --token-file, \
             --device-tokens), or pass --insecure-demo-token",
            args.listen,
            args.token.token_env
        );
        tracing::warn!(listen = %args.listen, "anyone can connect: the public demo token beyond loopback");
    }
    if public && config.tls.is_none() {
        tracing::warn!(listen = %args.listen, "device traffic and tokens travel in clear text (see --tls-cert)");
    }
    if !args.metrics.ip().is_loopback() {
        tracing::warn!(metrics = %args.metrics, "/metrics and /healthz are open beyond loopback, without credentials");
    }
    Ok(())
}

/// The options and the server config a pipeline file gives (its addresses, backend and model
/// replace those of `args`).
///
/// # Errors
/// A file without `[server]`, or a value that cannot be used (see
/// [`PipelineConfig::server_config`]).
pub fn from_pipeline(
    mut args: ServerArgs,
    pipeline: &PipelineConfig,
) -> Result<(ServerArgs, ServerConfig)> {
    let config = pipeline.server_config()?;
    let model = &pipeline.model;
    args.model_id = model.id.clone();
    args.preset = Some(model.preset().to_owned());
    args.checkpoint = model.checkpoint.clone();
    args.nats.clone_from(&pipeline.nats);
    if let Some(server) = &pipeline.server {
        if let Some(listen) = server.listen {
            args.listen = listen;
        }
        if let Some(metrics) = server.metrics {
            args.metrics = metrics;
        }
        if let Some(dashboard) = server.dashboard {
            args.dashboard = Some(dashboard);
        }
        if let Some(var) = &server.operator_token_env {
            args.operator_token_env.clone_from(var);
        }
        if let Some(backend) = &server.backend {
            args.backend = backend.clone();
        }
    }
    Ok((args, config))
}

/// The server on whichever backend `--backend` opened.
struct Serve {
    args: ServerArgs,
    config: ServerConfig,
}

impl BackendTask for Serve {
    type Output = Result<()>;

    fn run<B: Backend>(self, backend: &B) -> Result<()> {
        let model = Arc::new(load_model(&self.args, backend.clone())?);
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .thread_name("collab-net")
            .build()
            .context("starting the tokio runtime")?;
        runtime.block_on(serve(self.args, self.config, model))
    }
}

fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("COLLAB_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // A program embedding this one may have installed its own subscriber: keep it.
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}

fn load_model<B: Backend>(args: &ServerArgs, backend: B) -> Result<Transformer<B>> {
    let path = match &args.checkpoint {
        Some(p) => p.clone(),
        None => fixtures::deit_tiny_checkpoint()
            .context("no --checkpoint given and the DeiT-Tiny fixture is missing")?,
    };
    let preset = args.preset.as_deref().unwrap_or(&args.model_id);
    let config = ModelConfig::preset(preset)
        .with_context(|| format!("preset `{preset}` (set --preset when --model-id is not one)"))?;
    info!(checkpoint = %path.display(), preset, backend = %backend.name(), "loading the model");
    Transformer::from_safetensors(backend, config, &path)
        .with_context(|| format!("loading {}", path.display()))
}

async fn serve<B: Backend>(
    args: ServerArgs,
    config: ServerConfig,
    model: Arc<Transformer<B>>,
) -> Result<()> {
    if let Some(nats) = args.nats.clone() {
        return serve_nats(args, config, model, &nats).await;
    }
    let acceptor = TcpAcceptor::bind(args.listen)
        .await
        .with_context(|| format!("binding --listen {}", args.listen))?;
    let addr = acceptor.local_addr()?;
    let http = tokio::net::TcpListener::bind(args.metrics)
        .await
        .with_context(|| format!("binding --metrics {}", args.metrics))?;
    let metrics_addr = http.local_addr()?;
    let dashboard = match args.dashboard {
        Some(at) => Some(
            tokio::net::TcpListener::bind(at)
                .await
                .with_context(|| format!("binding --dashboard {at}"))?,
        ),
        None => None,
    };
    let handle = Server::start(model, config, acceptor)?;
    let http_task = tokio::spawn(serve_http(http, handle.monitor()));
    info!(%addr, metrics = %metrics_addr, "listening");
    if let Some(listener) = dashboard {
        let at = listener.local_addr()?;
        let operator = std::env::var(&args.operator_token_env)
            .ok()
            .filter(|t| !t.is_empty())
            .map(crate::auth::Secret::new);
        if operator.is_none() {
            tracing::warn!(var = %args.operator_token_env, "no operator token: the dashboard is read-only");
        }
        if !at.ip().is_loopback() {
            tracing::warn!(dashboard = %at, "the dashboard's page and board are open beyond loopback (its controls need the operator token)");
        }
        info!(dashboard = %format!("http://{at}/"), "dashboard");
        tokio::spawn(crate::dashboard::serve_dashboard(
            listener,
            handle.monitor(),
            operator,
        ));
    }
    let mut out = std::io::stdout().lock();
    writeln!(out, "listening on {addr}")?;
    out.flush()?;
    drop(out);
    if let Some(path) = &args.ready_file {
        write_ready(path, addr)?;
    }
    wait_for_signal().await?;
    info!("signal received; shutting down gracefully");
    handle.shutdown().await;
    let _ = http_task.await;
    Ok(())
}

/// The server as a NATS worker: no listener; health and metrics as usual.
async fn serve_nats<B: Backend>(
    args: ServerArgs,
    config: ServerConfig,
    model: Arc<Transformer<B>>,
    nats: &crate::nats::NatsConfig,
) -> Result<()> {
    let http = tokio::net::TcpListener::bind(args.metrics)
        .await
        .with_context(|| format!("binding --metrics {}", args.metrics))?;
    let metrics_addr = http.local_addr()?;
    let handle = crate::nats::NatsWorker::start(model, config, nats).await?;
    let http_task = tokio::spawn(serve_http(http, handle.monitor()));
    info!(url = %nats.url, metrics = %metrics_addr, "serving as a nats worker");
    let mut out = std::io::stdout().lock();
    writeln!(
        out,
        "nats worker on {} (metrics on {metrics_addr})",
        nats.url
    )?;
    out.flush()?;
    drop(out);
    if let Some(path) = &args.ready_file {
        write_ready(path, metrics_addr)?;
    }
    wait_for_signal().await?;
    info!("signal received; shutting down gracefully");
    handle.shutdown().await;
    let _ = http_task.await;
    Ok(())
}

/// Writes `addr` to `path` through a temporary file and a rename, so a reader never sees a
/// partial address.
fn write_ready(path: &Path, addr: SocketAddr) -> Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, format!("{addr}\n"))
        .with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("writing {}", path.display()))
}

#[cfg(unix)]
async fn wait_for_signal() -> Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    tokio::select! {
        _ = term.recv() => {}
        r = tokio::signal::ctrl_c() => r.context("waiting for Ctrl-C")?,
    }
    Ok(())
}

#[cfg(not(unix))]
async fn wait_for_signal() -> Result<()> {
    tokio::signal::ctrl_c().await.context("waiting for Ctrl-C")
}
