//! `cargo xtask exp live-tokens`: token merging on the live server (OTAS's gamma < 0, SPEC §4,
//! issue 25), measured over real loopback TCP on DeiT-Tiny with its real weights.
//!
//! For each gamma (0: no merging), a real server runs `[server.tokens] kind = "fixed"` at
//! that gamma and one device client keeps `--concurrency` server-only requests outstanding
//! (closed loop) over the first `--images` labelled ImageNet sample images. The gammas run
//! interleaved, round by round, so the machine's noise hits each alike. Reported per gamma:
//! the median throughput over the rounds and its ratio to gamma 0, p50/p95 server-side
//! latency, the mean batch, and top-1 accuracy against the labels (the same images at every
//! gamma). Writes `results/live-tokens/live-tokens.csv`; the last line is
//! `live-tokens gamma=G throughput/plain=X accuracy=A plain_accuracy=P` for the most merging
//! gamma.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::Args as ClapArgs;
use collab_backends::candle::CandleBackend;
use collab_core::adaptive::Gamma;
use collab_core::cost::{median, quantile};
use collab_core::fixtures;
use collab_core::input::ImagePreprocess;
use collab_core::model::Transformer;
use collab_net::client::{ClientConfig, DeviceClient, Outgoing};
use collab_net::server::{Server, ServerConfig};
use collab_net::transport::{Tcp, TcpAcceptor, Transport};
use collab_net::wire::raw_rgb8;
use collab_policies::batch::SharedModelConfig;
use collab_policies::token::live::FixedTokens;

use super::results_dir;

/// Options.
#[derive(ClapArgs, Debug)]
pub(crate) struct Args {
    /// Gammas to serve at (0: no merging; each < 0 merges |gamma| tokens per block).
    #[arg(
        long,
        value_delimiter = ',',
        allow_hyphen_values = true,
        default_value = "0,-4,-8,-12,-16"
    )]
    gammas: Vec<Gamma>,
    /// Labelled sample images sent per run (each once).
    #[arg(long, default_value_t = 200)]
    images: usize,
    /// Requests outstanding at once.
    #[arg(long, default_value_t = 16)]
    concurrency: usize,
    /// Server batch budget.
    #[arg(long, default_value_t = 8)]
    batch: usize,
    /// Interleaved rounds (medians reported).
    #[arg(long, default_value_t = 3)]
    rounds: usize,
}

/// What one run at one gamma measured.
#[derive(Clone, Debug)]
struct Run {
    rate: f64,
    correct: usize,
    server_ms: Vec<f64>,
    batches: Vec<f64>,
}

pub(crate) fn run(args: Args) -> Result<()> {
    if args.gammas.iter().any(|&g| g > 0) || !args.gammas.contains(&0) {
        bail!(
            "--gammas must list gammas <= 0 including 0, the plain model (live serving merges only)"
        );
    }
    let model = Arc::new(fixtures::deit_tiny(CandleBackend::cpu())?);
    let sample = fixtures::imagenet_sample()?;
    let pre = ImagePreprocess::imagenet(224);
    let images: Vec<(Vec<u8>, usize)> = sample
        .iter()
        .take(args.images.max(1))
        .map(|s| {
            let img = image::open(&s.path)
                .with_context(|| s.path.display().to_string())?
                .to_rgb8();
            Ok((pre.crop_rgb(&img)?.into_raw(), s.label))
        })
        .collect::<Result<_>>()?;
    println!(
        "live-tokens: DeiT-Tiny (real weights), server-only requests over loopback TCP, {} labelled images x {} rounds, {} outstanding, batch {}, gammas {:?}",
        images.len(),
        args.rounds,
        args.concurrency,
        args.batch,
        args.gammas
    );
    let images = Arc::new(images);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    // Warm-up: allocators, kernels, connections.
    for &g in &args.gammas {
        runtime.block_on(serve(&model, &images[..images.len().min(16)], g, &args))?;
    }
    let mut runs: Vec<Vec<Run>> = vec![Vec::new(); args.gammas.len()];
    for round in 0..args.rounds.max(1) {
        for (i, &g) in args.gammas.iter().enumerate() {
            let run = runtime.block_on(serve(&model, &images, g, &args))?;
            println!(
                "  round {round} gamma {g:>4}: {:>7.2} req/s, top-1 {}/{}",
                run.rate,
                run.correct,
                images.len()
            );
            runs[i].push(run);
        }
    }
    let at = |gamma: Gamma| args.gammas.iter().position(|&g| g == gamma).unwrap_or(0);
    let (plain_i, most_i) = (at(0), at(*args.gammas.iter().min().unwrap_or(&0)));
    let plain = median(&runs[plain_i].iter().map(|r| r.rate).collect::<Vec<_>>());
    let mut table = String::from(
        "gamma,median_rate,ratio_to_plain,p50_server_ms,p95_server_ms,mean_batch,top1,images\n",
    );
    println!(
        "\n{:>6} {:>9} {:>8} {:>10} {:>10} {:>8} {:>7}",
        "gamma", "req/s", "ratio", "p50 ms", "p95 ms", "batch", "top-1"
    );
    let mut last = String::new();
    for (i, (g, rs)) in args.gammas.iter().zip(&runs).enumerate() {
        let rate = median(&rs.iter().map(|r| r.rate).collect::<Vec<_>>());
        let ms: Vec<f64> = rs
            .iter()
            .flat_map(|r| r.server_ms.iter().copied())
            .collect();
        let batches: Vec<f64> = rs.iter().flat_map(|r| r.batches.iter().copied()).collect();
        let mean_batch = batches.iter().sum::<f64>() / batches.len().max(1) as f64;
        // The answers are deterministic per image and gamma up to batching; report round 0.
        let acc = rs[0].correct as f64 / images.len() as f64;
        let (p50, p95) = (quantile(&ms, 0.5), quantile(&ms, 0.95));
        println!(
            "{g:>6} {rate:>9.2} {:>8.3} {p50:>10.1} {p95:>10.1} {mean_batch:>8.2} {acc:>7.3}",
            rate / plain
        );
        writeln!(
            table,
            "{g},{rate:.3},{:.4},{p50:.2},{p95:.2},{mean_batch:.3},{acc:.4},{}",
            rate / plain,
            images.len()
        )?;
        if i == most_i {
            last = format!(
                "live-tokens gamma={g} throughput/plain={:.3} accuracy={acc:.3} plain_accuracy={:.3}",
                rate / plain,
                runs[plain_i][0].correct as f64 / images.len() as f64
            );
        }
    }
    let dir = results_dir()?.join("live-tokens");
    std::fs::create_dir_all(&dir)?;
    std::fs::write(dir.join("live-tokens.csv"), table)?;
    println!("wrote {}", dir.join("live-tokens.csv").display());
    println!("{last}");
    Ok(())
}

/// Serves `images` once each at `gamma` from a fresh server over loopback TCP.
async fn serve(
    model: &Arc<Transformer<CandleBackend>>,
    images: &[(Vec<u8>, usize)],
    gamma: Gamma,
    args: &Args,
) -> Result<Run> {
    let acceptor = TcpAcceptor::bind(SocketAddr::from(([127, 0, 0, 1], 0))).await?;
    let addr = acceptor.local_addr()?;
    let config = ServerConfig {
        capacity: 4 * args.concurrency.max(1),
        policy: Arc::new(SharedModelConfig::new(args.batch.max(1))),
        tokens: (gamma < 0).then(|| {
            Arc::new(FixedTokens {
                gamma,
                schedule: None,
            }) as _
        }),
        ..ServerConfig::default()
    };
    let handle = Server::start(model.clone(), config, acceptor)?;
    let transport: Arc<dyn Transport> = Arc::new(Tcp::new(addr));
    let client = DeviceClient::connect(transport, ClientConfig::default()).await?;
    let images: Arc<Vec<(Vec<u8>, usize)>> = Arc::new(images.to_vec());
    let next = Arc::new(AtomicUsize::new(0));
    let start = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..args.concurrency.max(1) {
        let (client, next, images) = (client.clone(), next.clone(), images.clone());
        tasks.spawn(async move {
            let mut seen = Vec::new();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some((pixels, label)) = images.get(i) else {
                    break;
                };
                let request = Outgoing {
                    split: 0,
                    codec: raw_rgb8(),
                    payload: pixels.clone(),
                    budget: Duration::from_secs(120),
                    max_loss: 1.0,
                    meta: None,
                };
                let p = client.infer(request, Duration::from_secs(300)).await?;
                let top1 = p.top.first().map(|t| t.0 as usize);
                seen.push((
                    top1 == Some(*label),
                    f64::from(p.server_ms),
                    f64::from(p.batch),
                ));
            }
            anyhow::Ok(seen)
        });
    }
    let mut run = Run {
        rate: 0.0,
        correct: 0,
        server_ms: Vec::new(),
        batches: Vec::new(),
    };
    while let Some(r) = tasks.join_next().await {
        for (ok, ms, batch) in r?? {
            run.correct += usize::from(ok);
            run.server_ms.push(ms);
            run.batches.push(batch);
        }
    }
    run.rate = images.len() as f64 / start.elapsed().as_secs_f64();
    client.close().await;
    handle.shutdown().await;
    Ok(run)
}
