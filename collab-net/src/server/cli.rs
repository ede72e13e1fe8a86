//! The `collab-server` command line: loads a checkpoint, serves devices on `--listen` and
//! health/metrics on `--metrics`, until SIGTERM or Ctrl-C, then shuts down gracefully.
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
use collab_backends::candle::CandleBackend;
use collab_core::fixtures;
use collab_core::model::{ModelConfig, Transformer};
use collab_policies::svd::SplitBases;
use tracing::info;

use super::{PolicyKind, Server, ServerConfig, serve_http};
use crate::transport::TcpAcceptor;

/// Options of the cloud server process.
#[derive(Clone, Debug, clap::Args)]
pub struct ServerArgs {
    /// Address devices connect to (port 0 picks a free port).
    #[arg(long, default_value = "127.0.0.1:7878")]
    pub listen: SocketAddr,
    /// Address of the HTTP health (`/healthz`) and Prometheus (`/metrics`) endpoints.
    #[arg(long, default_value = "127.0.0.1:9898")]
    pub metrics: SocketAddr,
    /// Safetensors checkpoint (default: the DeiT-Tiny fixture).
    #[arg(long)]
    pub checkpoint: Option<PathBuf>,
    /// Architecture preset of the checkpoint (default: `--model-id`).
    #[arg(long)]
    pub preset: Option<String>,
    /// Model id devices must announce.
    #[arg(long, default_value = "deit_tiny_patch16_224")]
    pub model_id: String,
    /// Shared secret devices must present.
    #[arg(long, default_value = "collab-demo")]
    pub token: String,
    /// Admission limit: requests accepted and not yet answered.
    #[arg(long, default_value_t = 64)]
    pub capacity: usize,
    /// Budget batch size of the worker.
    #[arg(long, default_value_t = 8)]
    pub batch: usize,
    /// Batch policy.
    #[arg(long, value_enum, default_value_t = PolicyKind::Shared)]
    pub policy: PolicyKind,
    /// Open device connections at most.
    #[arg(long, default_value_t = 256)]
    pub max_connections: usize,
    /// Seconds a new connection has to send its Hello.
    #[arg(long, default_value_t = 5.0)]
    pub hello_timeout_s: f64,
    /// Seconds a device may stall inside a frame before it is closed.
    #[arg(long, default_value_t = 10.0)]
    pub frame_timeout_s: f64,
    /// Once listening, write the bound address to this file.
    #[arg(long)]
    pub ready_file: Option<PathBuf>,
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
    /// A timeout that is not a positive number of seconds; a bases file that cannot be read or
    /// is damaged.
    pub fn config(&self) -> Result<ServerConfig> {
        let seconds = |name: &str, s: f64| {
            Duration::try_from_secs_f64(s)
                .ok()
                .filter(|d| !d.is_zero())
                .with_context(|| format!("--{name} must be a positive number of seconds, got {s}"))
        };
        Ok(ServerConfig {
            model_id: self.model_id.clone(),
            auth_token: self.token.clone(),
            capacity: self.capacity,
            max_connections: self.max_connections,
            hello_timeout: seconds("hello-timeout-s", self.hello_timeout_s)?,
            frame_timeout: seconds("frame-timeout-s", self.frame_timeout_s)?,
            policy: self.policy,
            batch: self.batch,
            bases: match &self.bases {
                Some(path) => Some(Arc::new(SplitBases::load(path)?)),
                None => None,
            },
            ..ServerConfig::default()
        })
    }
}

/// Runs the server process (see the module docs): returns after a graceful shutdown.
///
/// # Errors
/// A missing or broken checkpoint, an unknown preset, a bad option, an address that cannot
/// be bound, or a ready file that cannot be written.
pub fn main(args: ServerArgs) -> Result<()> {
    init_tracing();
    let config = args.config()?;
    config.validate()?;
    let model = Arc::new(load_model(&args)?);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("collab-net")
        .build()
        .context("starting the tokio runtime")?;
    runtime.block_on(serve(args, config, model))
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

fn load_model(args: &ServerArgs) -> Result<Transformer<CandleBackend>> {
    let path = match &args.checkpoint {
        Some(p) => p.clone(),
        None => fixtures::deit_tiny_checkpoint()
            .context("no --checkpoint given and the DeiT-Tiny fixture is missing")?,
    };
    let preset = args.preset.as_deref().unwrap_or(&args.model_id);
    let config = ModelConfig::preset(preset)
        .with_context(|| format!("preset `{preset}` (set --preset when --model-id is not one)"))?;
    info!(checkpoint = %path.display(), preset, "loading the model");
    Transformer::from_safetensors(CandleBackend::cpu(), config, &path)
        .with_context(|| format!("loading {}", path.display()))
}

async fn serve(
    args: ServerArgs,
    config: ServerConfig,
    model: Arc<Transformer<CandleBackend>>,
) -> Result<()> {
    let acceptor = TcpAcceptor::bind(args.listen)
        .await
        .with_context(|| format!("binding --listen {}", args.listen))?;
    let addr = acceptor.local_addr()?;
    let http = tokio::net::TcpListener::bind(args.metrics)
        .await
        .with_context(|| format!("binding --metrics {}", args.metrics))?;
    let metrics_addr = http.local_addr()?;
    let handle = Server::start(model, config, acceptor)?;
    let http_task = tokio::spawn(serve_http(http, handle.monitor()));
    info!(%addr, metrics = %metrics_addr, "listening");
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
