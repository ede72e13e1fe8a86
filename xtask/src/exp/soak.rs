//! `cargo xtask exp soak`: many requests from several devices through one server over real
//! loopback TCP while faults are injected, in one bounded run (issue 31).
//!
//! - devices: `--devices` [`DeviceClient`]s, each keeping `--in-flight` requests outstanding,
//!   over [`Faulty`] connections that die after a random lifetime (mean `--mean-life-s`) and
//!   stall their reads now and then (`--stall-ms` every `--stall-every-s` on average);
//! - restarts: every `--restart-every-s` the server is stopped, gracefully and by a kill in
//!   turn, and a new one starts on the same port;
//! - malformed frames: every `--malformed-every-ms` a hostile peer sends random bytes, an
//!   oversized frame, a wrong token or garbage after a valid Hello.
//!
//! The model is the seeded tiny ViT of `collab_net::testing` (the run is about the protocol,
//! not accuracy); each answer is checked against the unsplit model's top-1 for its payload.
//! A request is *answered once* when its call returned the server's one answer: a prediction
//! with the right class or a typed error (`Overloaded`, `DeadlineMissed`, ...); *lost* when it
//! ended without one (timed out, unreachable); *duplicated* counts answers a device received
//! for a request already answered. Writes `results/soak/soak.csv`; the last line is
//! `soak requests=N answered_once=N lost=0 duplicated=0 peak_rss_mb=M`.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use clap::Args as ClapArgs;
use collab_backends::candle::CandleBackend;
use collab_core::Backend;
use collab_core::input::ImagePreprocess;
use collab_core::model::{Input, Transformer};
use collab_core::split::{Activation, ActivationCodec};
use collab_net::client::{Backoff, ClientConfig, ClientError, DeviceClient, Outgoing};
use collab_net::server::{Server, ServerConfig, ServerHandle};
use collab_net::transport::{Faults, Faulty, Tcp, TcpAcceptor, Transport};
use collab_net::wire::{FrameCodec, Hello, Message, PROTOCOL_VERSION};
use collab_policies::svd::{PlainCodec, Precision};
use futures_util::SinkExt;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::Mutex;
use tokio_util::codec::FramedWrite;

use super::accuracy::bar;
use super::results_dir;

const MODEL_ID: &str = "tiny-vit";
const TOKEN: &str = "soak-0123456789abcdef";

/// Options.
#[derive(ClapArgs, Debug)]
pub(crate) struct Args {
    /// Requests in all.
    #[arg(long, default_value_t = 10_000)]
    requests: usize,
    /// Devices.
    #[arg(long, default_value_t = 8)]
    devices: usize,
    /// Requests each device keeps outstanding.
    #[arg(long, default_value_t = 8)]
    in_flight: usize,
    /// Seconds between server restarts (graceful and killed in turn; 0: none).
    #[arg(long, default_value_t = 0.5)]
    restart_every_s: f64,
    /// Mean lifetime of a device connection, seconds (0: never dies).
    #[arg(long, default_value_t = 0.3)]
    mean_life_s: f64,
    /// Mean seconds between read stalls of a device connection (0: none).
    #[arg(long, default_value_t = 0.2)]
    stall_every_s: f64,
    /// How long a stall lasts, ms.
    #[arg(long, default_value_t = 50)]
    stall_ms: u64,
    /// Milliseconds between malformed connections (0: none).
    #[arg(long, default_value_t = 10)]
    malformed_every_ms: u64,
    /// Seconds the whole run may take; requests unanswered by then count as lost.
    #[arg(long, default_value_t = 600)]
    limit_s: u64,
    /// Seed of the faults, payloads and hostile bytes.
    #[arg(long, default_value_t = 7)]
    seed: u64,
}

fn seconds(s: f64) -> Duration {
    Duration::try_from_secs_f64(s.max(0.0)).unwrap_or(Duration::ZERO)
}

pub(crate) fn run(args: Args) -> Result<()> {
    anyhow::ensure!(
        args.devices > 0 && args.in_flight > 0,
        "devices and in-flight must be > 0"
    );
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    runtime.block_on(soak(args))
}

/// One payload and the class the whole model gives its image.
struct Payload {
    split: u32,
    bytes: Vec<u8>,
    top1: u32,
}

/// 8 images x splits 1..=3 of the tiny model, `f32`-encoded.
fn payloads(model: &Transformer<CandleBackend>, seed: u64) -> Result<Vec<Payload>> {
    let be = model.backend();
    let side = collab_net::testing::TINY_SIDE;
    let pre = ImagePreprocess::imagenet(side as u32);
    let mut rng = StdRng::seed_from_u64(seed);
    let mut out = vec![];
    for _ in 0..8 {
        let pixels: Vec<u8> = (0..3 * side * side).map(|_| rng.random()).collect();
        let x = be.from_vec(pre.normalize(&pixels)?, &[1, 3, side, side])?;
        let input = Input::Images(x);
        let logits = be.to_vec(&model.forward(&input)?)?;
        let top1 = logits
            .iter()
            .enumerate()
            .max_by(|a, b| a.1.total_cmp(b.1))
            .map_or(0, |(i, _)| i as u32);
        for split in 1..=3usize {
            let h = model.run_blocks(model.embed(&input)?, 0..split)?;
            let (_, n, d) = h.dims3(be)?;
            let act = Activation::new(n, d, be.to_vec(&h.x)?)?;
            let bytes = PlainCodec {
                precision: Precision::F32,
            }
            .encode(&act)?;
            out.push(Payload {
                split: split as u32,
                bytes,
                top1,
            });
        }
    }
    Ok(out)
}

fn server_config() -> ServerConfig {
    ServerConfig {
        model_id: MODEL_ID.into(),
        auth_token: TOKEN.into(),
        ..ServerConfig::default()
    }
}

/// Starts a server on `addr`, retrying while the port is still held by the last one.
async fn start(model: &Arc<Transformer<CandleBackend>>, addr: SocketAddr) -> Result<ServerHandle> {
    let mut tries = 0;
    let acceptor = loop {
        match TcpAcceptor::bind(addr).await {
            Ok(a) => break a,
            Err(e) if tries < 100 => {
                tries += 1;
                tracing::debug!("binding {addr}: {e}");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(e) => return Err(e).with_context(|| format!("binding {addr}")),
        }
    };
    Ok(Server::start(model.clone(), server_config(), acceptor)?)
}

/// What happened to the requests.
#[derive(Default)]
struct Tally {
    answered_once: AtomicU64,
    predictions: AtomicU64,
    wrong: AtomicU64,
    lost: AtomicU64,
    /// Typed answers and local failures, by kind.
    kinds: std::sync::Mutex<BTreeMap<&'static str, u64>>,
}

impl Tally {
    fn record(&self, outcome: &Result<bool, ClientError>) {
        let kind = match outcome {
            Ok(true) => {
                self.answered_once.fetch_add(1, Ordering::Relaxed);
                self.predictions.fetch_add(1, Ordering::Relaxed);
                "prediction"
            }
            Ok(false) => {
                self.wrong.fetch_add(1, Ordering::Relaxed);
                "wrong answer"
            }
            Err(e @ ClientError::Remote(_)) => {
                self.answered_once.fetch_add(1, Ordering::Relaxed);
                e.kind()
            }
            Err(e) => {
                self.lost.fetch_add(1, Ordering::Relaxed);
                e.kind()
            }
        };
        if let Ok(mut k) = self.kinds.lock() {
            *k.entry(kind).or_default() += 1;
        }
    }
}

/// The hostile peer: one malformed connection every `every` until `stop`.
async fn malformed(addr: SocketAddr, every: Duration, seed: u64, stop: Arc<AtomicBool>) -> u64 {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut sent = 0;
    while !stop.load(Ordering::Relaxed) {
        if let Ok(Ok(mut s)) =
            tokio::time::timeout(Duration::from_secs(1), tokio::net::TcpStream::connect(addr)).await
        {
            let hello = |token: &str| {
                Message::Hello(Hello {
                    device_id: "hostile".into(),
                    instance: 1,
                    model_id: MODEL_ID.into(),
                    protocol_version: PROTOCOL_VERSION,
                    auth_token: token.into(),
                })
            };
            let len = rng.random_range(1..512);
            let random: Vec<u8> = (0..len).map(|_| rng.random()).collect();
            let _ = tokio::time::timeout(Duration::from_secs(1), async {
                match sent % 4 {
                    0 => s.write_all(&random).await,
                    1 => s.write_all(&[0x7f, 0xff, 0xff, 0xff, 0, 3]).await,
                    2 => {
                        let mut w = FramedWrite::new(&mut s, FrameCodec::default());
                        w.send(hello("wrong")).await.map_err(std::io::Error::other)
                    }
                    _ => {
                        let mut w = FramedWrite::new(&mut s, FrameCodec::default());
                        w.send(hello(TOKEN)).await.map_err(std::io::Error::other)?;
                        drop(w);
                        s.write_all(&[0, 0, 0, 8, 0, PROTOCOL_VERSION as u8])
                            .await?;
                        s.write_all(&random[..random.len().min(6)]).await
                    }
                }?;
                let mut sink = [0u8; 1024];
                while s.read(&mut sink).await? > 0 {}
                Ok::<(), std::io::Error>(())
            })
            .await;
        }
        sent += 1;
        tokio::time::sleep(every).await;
    }
    sent
}

/// Stops and restarts the server every `every` until `stop`, gracefully and killed in turn.
async fn restarts(
    model: Arc<Transformer<CandleBackend>>,
    addr: SocketAddr,
    server: Arc<Mutex<Option<ServerHandle>>>,
    every: Duration,
    stop: Arc<AtomicBool>,
) -> Result<(u64, u64)> {
    let (mut graceful, mut killed) = (0, 0);
    loop {
        tokio::time::sleep(every).await;
        if stop.load(Ordering::Relaxed) {
            return Ok((graceful, killed));
        }
        let mut slot = server.lock().await;
        if let Some(old) = slot.take() {
            if (graceful + killed) % 2 == 0 {
                old.shutdown().await;
                graceful += 1;
            } else {
                old.kill().await;
                killed += 1;
            }
        }
        *slot = Some(start(&model, addr).await?);
    }
}

async fn soak(args: Args) -> Result<()> {
    let model = Arc::new(collab_net::testing::tiny_vit(11)?);
    let payloads = Arc::new(payloads(&model, args.seed)?);
    let first = TcpAcceptor::bind(SocketAddr::from(([127, 0, 0, 1], 0))).await?;
    let addr = first.local_addr()?;
    let server = Arc::new(Mutex::new(Some(Server::start(
        model.clone(),
        server_config(),
        first,
    )?)));
    let faults = Faults {
        mean_life: seconds(args.mean_life_s),
        mean_between_stalls: seconds(args.stall_every_s),
        stall: Duration::from_millis(args.stall_ms),
    };
    println!(
        "soak: {} requests from {} devices ({} outstanding each) to the tiny ViT over loopback TCP; \
         connections die after {:.1} s and stall {} ms every {:.1} s on average; restarts every {:.1} s; \
         a malformed connection every {} ms",
        args.requests,
        args.devices,
        args.in_flight,
        args.mean_life_s,
        args.stall_ms,
        args.stall_every_s,
        args.restart_every_s,
        args.malformed_every_ms
    );
    let stop = Arc::new(AtomicBool::new(false));
    let restarter = (args.restart_every_s > 0.0).then(|| {
        tokio::spawn(restarts(
            model.clone(),
            addr,
            server.clone(),
            seconds(args.restart_every_s),
            stop.clone(),
        ))
    });
    let hostile = (args.malformed_every_ms > 0).then(|| {
        tokio::spawn(malformed(
            addr,
            Duration::from_millis(args.malformed_every_ms),
            args.seed ^ 0x5eed,
            stop.clone(),
        ))
    });
    let mut clients = Vec::new();
    for d in 0..args.devices {
        let transport: Arc<dyn Transport> = Arc::new(Faulty::new(
            Arc::new(Tcp::new(addr)),
            faults,
            args.seed + d as u64,
        ));
        let config = ClientConfig {
            device_id: format!("device-{d}"),
            model_id: MODEL_ID.into(),
            auth_token: TOKEN.into(),
            backoff: Backoff {
                initial: Duration::from_millis(20),
                max: Duration::from_millis(500),
                factor: 2.0,
            },
            max_attempts: 40,
            ..ClientConfig::default()
        };
        clients.push(DeviceClient::connect(transport, config).await?);
    }
    let tally = Arc::new(Tally::default());
    let next = Arc::new(AtomicUsize::new(0));
    let pb = bar(args.requests, "soak");
    let started = Instant::now();
    let mut workers = tokio::task::JoinSet::new();
    for client in &clients {
        for _ in 0..args.in_flight {
            let (client, tally, next, payloads, pb) = (
                client.clone(),
                tally.clone(),
                next.clone(),
                payloads.clone(),
                pb.clone(),
            );
            let total = args.requests;
            workers.spawn(async move {
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= total {
                        return;
                    }
                    let p = &payloads[i % payloads.len()];
                    let request = Outgoing {
                        split: p.split,
                        codec: "f32"
                            .parse()
                            .unwrap_or_else(|_| collab_core::split::CodecId::raw()),
                        payload: p.bytes.clone(),
                        budget: Duration::from_secs(60),
                        max_loss: 0.0,
                        meta: None,
                    };
                    let outcome = client
                        .infer(request, Duration::from_secs(120))
                        .await
                        .map(|pred| pred.top.first().map(|t| t.0) == Some(p.top1));
                    tally.record(&outcome);
                    pb.inc(1);
                }
            });
        }
    }
    let finished = tokio::time::timeout(Duration::from_secs(args.limit_s), async {
        while workers.join_next().await.is_some() {}
    })
    .await
    .is_ok();
    workers.abort_all();
    pb.finish_and_clear();
    let elapsed = started.elapsed();
    stop.store(true, Ordering::Relaxed);
    let (graceful, killed) = match restarter {
        Some(t) => t.await??,
        None => (0, 0),
    };
    let malformed = match hostile {
        Some(t) => t.await?,
        None => 0,
    };
    let duplicated: u64 = clients.iter().map(DeviceClient::unmatched_answers).sum();
    let reconnects: u64 = clients.iter().map(DeviceClient::reconnects).sum();
    for c in clients {
        c.close().await;
    }
    if let Some(s) = server.lock().await.take() {
        s.shutdown().await;
    }
    let n = args.requests as u64;
    let answered = tally.answered_once.load(Ordering::Relaxed);
    let recorded =
        answered + tally.wrong.load(Ordering::Relaxed) + tally.lost.load(Ordering::Relaxed);
    // Requests never finished within the limit are lost too.
    let lost = tally.lost.load(Ordering::Relaxed) + n.saturating_sub(recorded);
    let peak = collab_policies::shard::meter::peak_rss_bytes().map_or(0, |b| b >> 20);
    let kinds = tally.kinds.lock().map(|k| k.clone()).unwrap_or_default();
    println!(
        "{} s{}: {} predictions, {} wrong answers; reconnects {reconnects}; server restarts {graceful} graceful + {killed} killed; {malformed} malformed connections",
        elapsed.as_secs(),
        if finished {
            ""
        } else {
            " (stopped at --limit-s)"
        },
        tally.predictions.load(Ordering::Relaxed),
        tally.wrong.load(Ordering::Relaxed),
    );
    println!("| outcome | requests |\n| --- | ---: |");
    for (kind, count) in &kinds {
        println!("| {kind} | {count} |");
    }
    let dir = results_dir()?.join("soak");
    std::fs::create_dir_all(&dir)?;
    let csv = format!(
        "requests,answered_once,lost,duplicated,wrong,predictions,reconnects,graceful_restarts,killed_restarts,malformed,seconds,peak_rss_mb\n{n},{answered},{lost},{duplicated},{},{},{reconnects},{graceful},{killed},{malformed},{:.1},{peak}\n",
        tally.wrong.load(Ordering::Relaxed),
        tally.predictions.load(Ordering::Relaxed),
        elapsed.as_secs_f64()
    );
    std::fs::write(dir.join("soak.csv"), csv)?;
    println!("wrote results/soak/soak.csv");
    println!(
        "soak requests={n} answered_once={answered} lost={lost} duplicated={duplicated} peak_rss_mb={peak}"
    );
    Ok(())
}
