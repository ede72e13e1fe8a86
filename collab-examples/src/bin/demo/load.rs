//! The background load generator: a client without a model that sends server-side work at a
//! Poisson rate (seeded-random activations at one split point, int8-encoded, as a device that
//! ran the first blocks would), so the devices share the server with other traffic. It stops
//! when its standard input closes and prints one JSON line per answer.

use std::io::Read;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use clap::Args;
use collab_core::split::{Activation, ActivationCodec};
use collab_net::client::{Arrivals, ClientConfig, DeviceClient, Outgoing, Tick};
use collab_net::transport::{Tcp, Transport};
use collab_policies::svd::{PlainCodec, Precision};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::json;

/// The load generator's device id (the dashboard's background-load control targets it).
pub(crate) const LOAD_ID: &str = "load-generator";

/// Options of the load generator.
#[derive(Args, Debug, Clone)]
pub(crate) struct LoadArgs {
    /// The server's address.
    #[arg(long)]
    server: std::net::SocketAddr,
    /// The server's secret.
    #[command(flatten)]
    token: collab_net::auth::TokenArgs,
    /// Requests per second (Poisson arrivals).
    #[arg(long, default_value_t = 10.0)]
    rate: f64,
    /// Split point the requests enter at.
    #[arg(long, default_value_t = 6)]
    split: u32,
    /// Server time budget per request, ms.
    #[arg(long, default_value_t = 1000)]
    budget_ms: u64,
    /// Tokens x features of the activation (DeiT-Tiny: 197 x 192).
    #[arg(long, default_value_t = 197)]
    tokens: usize,
    /// Features of the activation.
    #[arg(long, default_value_t = 192)]
    features: usize,
    /// Seed of the arrivals and values.
    #[arg(long, default_value_t = 7)]
    seed: u64,
}

/// Runs until standard input closes.
pub(crate) fn main(args: LoadArgs) -> Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?;
    runtime.block_on(run(args))
}

async fn run(args: LoadArgs) -> Result<()> {
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let flag = stop.clone();
    std::thread::spawn(move || {
        let mut sink = Vec::new();
        let _ = std::io::stdin().read_to_end(&mut sink);
        flag.store(true, std::sync::atomic::Ordering::SeqCst);
    });
    let transport: Arc<dyn Transport> = Arc::new(Tcp::new(args.server));
    let config = ClientConfig {
        device_id: LOAD_ID.into(),
        auth_token: args.token.secret().map_err(anyhow::Error::msg)?,
        ..ClientConfig::default()
    };
    let client = DeviceClient::connect(transport, config)
        .await
        .context("load generator: connecting to the server")?;
    let mut rng = StdRng::seed_from_u64(args.seed);
    let codec = PlainCodec {
        precision: Precision::Int8,
    };
    let mut tasks = tokio::task::JoinSet::new();
    // An operator's `rate` (the dashboard's background-load control) replaces `--rate`.
    let mut arrivals = Arrivals::new(client.settings(), args.rate);
    while !stop.load(std::sync::atomic::Ordering::SeqCst) {
        if arrivals.next(&mut rng).await == Tick::Idle {
            continue;
        }
        let values = (0..args.tokens * args.features)
            .map(|_| rng.random_range(-2.0f32..2.0))
            .collect();
        let payload = codec.encode(&Activation::new(args.tokens, args.features, values)?)?;
        let request = Outgoing {
            split: args.split,
            codec: "int8".parse()?,
            payload,
            budget: Duration::from_millis(args.budget_ms),
            max_loss: 1.0,
            meta: None,
        };
        let client = client.clone();
        let timeout = Duration::from_millis(args.budget_ms) * 3;
        tasks.spawn(async move {
            let t = Instant::now();
            let outcome = client.infer(request, timeout).await;
            let ms = t.elapsed().as_secs_f64() * 1e3;
            let line = match outcome {
                Ok(p) => json!({"ok": true, "total_ms": ms, "batch": p.batch}),
                Err(e) => {
                    json!({"ok": false, "error": crate::error_kind(&e), "message": e.to_string()})
                }
            };
            println!("{line}");
        });
        while tasks.try_join_next().is_some() {}
    }
    while tasks.join_next().await.is_some() {}
    println!("{}", json!({"done": true}));
    client.close().await;
    Ok(())
}
