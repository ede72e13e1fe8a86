//! The device process: `collab-device` and the demo's `device` subcommand.
//!
//! It loads DeiT-Tiny (or the ViT `--model-id`/`--preset` names), builds its split strategy
//! (by default the SPEC §1 selector from an accuracy table and cost profiles), connects to the
//! server through an emulated link, classifies ImageNet sample images, and reports on stdout,
//! one JSON object per line:
//!
//! ```text
//! {"device":"device-0","image":3,"label":3,"ok":true,"top1":3,"split":6,"codec":"int8-r192",
//!  "bytes":38637,"device_ms":21.4,"total_ms":48.9,"server_ms":19.0,"batch":2}
//! {"device":"device-0","image":4,"ok":false,"error":"deadline_missed","message":"..."}
//! {"device":"device-0","done":true,"requests":20,"ok":19,"correct":16,"errors":{...},...}
//! ```
//!
//! `error` is one of [`crate::client::ClientError::kind`]'s kinds. Logs go to stderr
//! (`COLLAB_LOG`, an env-filter directive, default `warn`).
//!
//! `--config FILE` reads a pipeline config file (see [`crate::pipeline`]): its `[model]`,
//! `[[codecs]]` and `[device]` sections (the server's address, id, backend, deadline, loss
//! limit, slowdown, table, bases, token and the split strategy `[device.split]`) replace those
//! options; the workload options (`--images`, `--rate`, the link emulation, ...) still apply.

mod run;
mod setup;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use clap::Args;
use collab_backends::any::{BackendName, BackendTask};
use collab_core::Backend;
use collab_policies::codec::CodecRegistry;
use collab_policies::split::{SelectorStrategy, SplitStrategyConfig};

use crate::pipeline::PipelineConfig;

/// Options of a device process.
#[derive(Args, Debug, Clone, PartialEq)]
pub struct DeviceArgs {
    /// A pipeline config file (TOML): its `[model]`, `[[codecs]]` and `[device]` sections
    /// replace the matching options.
    #[arg(long = "config", value_name = "FILE")]
    pub pipeline: Option<PathBuf>,
    /// The server's address (required without `--config`).
    #[arg(long, required_unless_present = "pipeline")]
    pub server: Option<SocketAddr>,
    /// The NATS broker to go through instead of `--server` (from a pipeline file's `[nats]`).
    #[arg(skip)]
    pub nats: Option<crate::nats::NatsConfig>,
    /// The model id announced to the server (a ViT classifier).
    #[arg(long, default_value = "deit_tiny_patch16_224")]
    pub model_id: String,
    /// The architecture preset (default: `--model-id`).
    #[arg(long)]
    pub preset: Option<String>,
    /// This device's id (labels its lines, the server's metrics and retries).
    #[arg(long, default_value = "device-0")]
    pub device_id: String,
    /// This device's secret: the server's shared token or its own.
    #[command(flatten)]
    pub token: crate::auth::TokenArgs,
    /// TLS to the server, trusting the CA certificates of this PEM file.
    #[arg(long)]
    pub tls_ca: Option<PathBuf>,
    /// The name the server's certificate must carry (with `--tls-ca`).
    #[arg(long, default_value = "localhost")]
    pub tls_name: String,
    /// DeiT-Tiny safetensors checkpoint (default: the fixtures' copy).
    #[arg(long)]
    pub checkpoint: Option<PathBuf>,
    /// Accuracy table (JSON, `cargo xtask exp svd-accuracy`); without it the device only
    /// chooses between the raw image and uncompressed `f32` activations.
    #[arg(long)]
    pub accuracy_table: Option<PathBuf>,
    /// Split bases (the `bases.bin` written beside the accuracy table): lets the device send
    /// the table's calibrated codecs (`cpca`, `mpca`, `tpca`, ...). The server must be
    /// started with the same file. Without it those table entries are dropped.
    #[arg(long)]
    pub bases: Option<PathBuf>,
    /// Cost profile of this machine (MeasuredProfile JSON), scaled by `--slowdown` for the
    /// device; without it the model is profiled at start-up (about a second).
    #[arg(long)]
    pub device_profile: Option<PathBuf>,
    /// Cost profile of the server (default: the device's, unscaled).
    #[arg(long)]
    pub server_profile: Option<PathBuf>,
    /// How many times slower than this machine the device computes (>= 1): it sleeps
    /// `slowdown - 1` times its measured compute after each head part.
    #[arg(long, default_value_t = 1.0)]
    pub slowdown: f64,
    /// Link bandwidth, Mbit/s each way (default: unlimited).
    #[arg(long)]
    pub mbit: Option<f64>,
    /// Link round-trip time, ms.
    #[arg(long, default_value_t = 0.0)]
    pub rtt_ms: f64,
    /// Link one-way jitter, ms (uniform per segment).
    #[arg(long, default_value_t = 0.0)]
    pub jitter_ms: f64,
    /// Link segment loss probability (each loss costs a retransmission timeout).
    #[arg(long, default_value_t = 0.0)]
    pub loss: f64,
    /// End-to-end deadline per request, ms.
    #[arg(long, default_value_t = 300.0)]
    pub deadline_ms: f64,
    /// Largest accuracy loss a split choice may cost (0.02 = two points of top-1).
    #[arg(long, default_value_t = 0.02)]
    pub max_loss: f64,
    /// Images to classify.
    #[arg(long, default_value_t = 20)]
    pub images: usize,
    /// First sample image (devices take different ranges; wraps around the sample).
    #[arg(long, default_value_t = 0)]
    pub offset: usize,
    /// Requests per second, Poisson arrivals (0: back to back). An operator's `rate` setting
    /// changes it while the device runs (with Poisson arrivals only; a rate of 0 pauses the
    /// device until another rate comes or `--duration-s` is over).
    #[arg(long, default_value_t = 0.0)]
    pub rate: f64,
    /// Keep classifying, cycling through the `--images` images, until this many seconds
    /// have passed (0: classify each image once and stop).
    #[arg(long, default_value_t = 0.0)]
    pub duration_s: f64,
    /// Requests in flight at most (an arrival waits for a free slot).
    #[arg(long, default_value_t = 1)]
    pub concurrency: usize,
    /// Refresh the link estimate this often, ms.
    #[arg(long, default_value_t = 2000)]
    pub probe_every_ms: u64,
    /// Padding of the bandwidth probe, bytes.
    #[arg(long, default_value_t = 32 * 1024)]
    pub probe_bytes: usize,
    /// Seed of the arrivals and the link's jitter and loss (mixed with the device id).
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// The backend the device computes on: `candle-cpu`, `arm-q8`, `arm-q4`, `tch-cpu`, ...
    /// (those compiled into this build).
    #[arg(long, default_value = "candle-cpu")]
    pub backend: BackendName,
}

/// Runs a device process to completion: sets up logging, loads everything, classifies
/// `--images` images and prints the JSON lines.
///
/// # Errors
/// Missing or broken files (checkpoint, table, profiles, fixtures), or a server that could not
/// be reached or refused the device (also reported as the final JSON line).
pub fn main(args: DeviceArgs) -> anyhow::Result<()> {
    let filter = tracing_subscriber::EnvFilter::try_from_env("COLLAB_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
    let parts = match &args.pipeline {
        Some(path) => from_pipeline(args.clone(), &PipelineConfig::load(path)?)?,
        None => Parts {
            args,
            strategy: Arc::new(SelectorStrategy::default()),
            codecs: Arc::new(CodecRegistry::builtin()),
        },
    };
    let backend = parts.args.backend.open()?;
    backend.run(Run(parts))
}

/// What a device process runs with: its options, split strategy and codecs.
#[derive(Debug)]
pub struct Parts {
    /// The options (after a pipeline file replaced its keys).
    pub args: DeviceArgs,
    /// The split strategy to build once the cost models are measured.
    pub strategy: Arc<dyn SplitStrategyConfig>,
    /// The codecs the device encodes with.
    pub codecs: Arc<CodecRegistry>,
}

/// The options, strategy and codecs a pipeline file gives (its `[model]` and `[device]` keys
/// replace those of `args`).
///
/// # Errors
/// A file without `[device]`, or a value that cannot be used (see
/// [`PipelineConfig::device_config`]).
pub fn from_pipeline(mut args: DeviceArgs, pipeline: &PipelineConfig) -> anyhow::Result<Parts> {
    let (config, strategy) = pipeline.device_config()?;
    let device = pipeline
        .device
        .as_ref()
        .context("the pipeline config has no [device] section")?;
    args.server = device.server;
    args.nats.clone_from(&pipeline.nats);
    anyhow::ensure!(
        args.server.is_some() || args.nats.is_some(),
        "the pipeline config's [device] has no `server` and there is no [nats] section"
    );
    args.model_id = pipeline.model.id.clone();
    args.preset = Some(pipeline.model.preset().to_owned());
    if let Some(path) = &pipeline.model.checkpoint {
        args.checkpoint = Some(path.clone());
    }
    if let Some(id) = &device.id {
        args.device_id = id.clone();
    }
    if let Some(backend) = &device.backend {
        args.backend = backend.clone();
    }
    // Checked to be set now; read where the client is configured.
    if pipeline.device_token()?.is_some()
        && let Some(var) = &device.token_env
    {
        args.token.token_env = var.clone();
    }
    if device.tls_ca.is_some() {
        args.tls_ca = device.tls_ca.clone();
    }
    if let Some(name) = &device.tls_name {
        args.tls_name = name.clone();
    }
    args.deadline_ms = config.deadline.as_secs_f64() * 1e3;
    args.max_loss = config.max_loss;
    args.slowdown = config.slowdown;
    if device.accuracy_table.is_some() {
        args.accuracy_table = device.accuracy_table.clone();
    }
    if device.bases.is_some() {
        args.bases = device.bases.clone();
    }
    Ok(Parts {
        args,
        strategy,
        codecs: config.codecs,
    })
}

/// The device process on whichever backend `--backend` opened.
struct Run(Parts);

impl BackendTask for Run {
    type Output = anyhow::Result<()>;

    fn run<B: Backend>(self, backend: &B) -> anyhow::Result<()> {
        let Parts {
            args,
            strategy,
            codecs,
        } = self.0;
        let (setup, strategy) = setup::Setup::load(&args, backend.clone(), strategy, codecs)?;
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()?;
        runtime.block_on(run::run(args, setup, strategy))
    }
}
