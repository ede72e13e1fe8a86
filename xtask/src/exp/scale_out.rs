//! `cargo xtask exp scale-out`: 1, 2 and 4 cloud workers behind one real `nats-server`
//! (JetStream, file store, loopback) under the same offered loads, in one run (issue 32).
//!
//! - Workers are [`EmulatedWorker`]s: the NATS front of every worker (pulls within the free
//!   budget, heartbeats, answers stored before the ack) with the GPU's batch time slept
//!   instead of computed (`--fixed-ms + n * --per-item-ms` for a batch of `n <= --max-batch`):
//!   this 2-core machine has no GPU, and computing here would measure its CPU, not the
//!   scale-out. The answers carry no classes.
//! - The load is open-loop Poisson from `--devices` device clients over NATS, sending one
//!   pre-encoded split payload of `--payload-kb` KB (a compressed activation's size), so device
//!   compute does not cap the measurement.
//! - Per worker count, the offered rate steps through `--fractions` of the workers' nominal
//!   capacity (`workers * max_batch / batch_time(max_batch)`), `--step-s` seconds each; a step
//!   is *sustained* when at least 90% of its requests are answered with a result within the
//!   deadline. Its goodput is those answers per second from its first arrival until its last
//!   call ended (a backlog's draining included), and the sustainable throughput is the
//!   goodput of the highest sustained step.
//! - Then a kill: 4 workers at `--kill-fraction` of capacity, one killed (crash emulation: it
//!   acknowledges nothing it holds) a third of the way in. *Lost* counts calls that ended
//!   without an answer (timed out or unreachable); *duplicated* counts answers a device
//!   received for a request no longer pending.
//!
//! Writes `results/scale-out/scale-out.csv`; the last line is
//! `scale-out workers=4 throughput_ratio=X lost=N duplicated=N`.

use std::fmt::Write as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::Args as ClapArgs;
use collab_core::split::CodecId;
use collab_net::client::{ClientConfig, ClientError, DeviceClient, Outgoing};
use collab_net::nats::{Access, Broker, EmulatedGpu, EmulatedWorker, NatsConfig, Subjects};
use collab_net::wire::Welcome;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio::sync::Mutex;

use super::results_dir;

const MODEL: &str = "scale-out-model";

/// Options.
#[derive(ClapArgs, Debug)]
pub(crate) struct Args {
    /// Worker counts, compared in one run.
    #[arg(long, value_delimiter = ',', default_value = "1,2,4")]
    workers: Vec<usize>,
    /// Emulated batch time: fixed part, ms.
    #[arg(long, default_value_t = 80.0)]
    fixed_ms: f64,
    /// Emulated batch time: per request, ms.
    #[arg(long, default_value_t = 2.5)]
    per_item_ms: f64,
    /// The largest batch.
    #[arg(long, default_value_t = 8)]
    max_batch: usize,
    /// End-to-end deadline per request, ms.
    #[arg(long, default_value_t = 500)]
    deadline_ms: u64,
    /// Offered load per step, as fractions of the workers' nominal capacity.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "0.6,0.7,0.8,0.85,0.9,0.95,1.0,1.05"
    )]
    fractions: Vec<f64>,
    /// Seconds per step.
    #[arg(long, default_value_t = 8.0)]
    step_s: f64,
    /// Device clients sending the load.
    #[arg(long, default_value_t = 8)]
    devices: usize,
    /// Bytes of each request's payload, KB.
    #[arg(long, default_value_t = 16)]
    payload_kb: usize,
    /// Offered load of the kill phase, as a fraction of 4 workers' capacity.
    #[arg(long, default_value_t = 0.6)]
    kill_fraction: f64,
    /// Seconds of the kill phase.
    #[arg(long, default_value_t = 12.0)]
    kill_s: f64,
    /// Seed of the arrivals.
    #[arg(long, default_value_t = 7)]
    seed: u64,
}

/// How one step went.
#[derive(Clone, Debug, Default)]
struct Step {
    workers: usize,
    offered: f64,
    sent: u64,
    in_time: u64,
    late: u64,
    errors: u64,
    lost: u64,
    p50_ms: f64,
    p99_ms: f64,
    goodput: f64,
}

impl Step {
    fn attainment(&self) -> f64 {
        self.in_time as f64 / self.sent.max(1) as f64
    }
}

pub(crate) fn run(args: Args) -> Result<()> {
    if Broker::binary().is_none() {
        bail!("nats-server is not installed (apt-get install nats-server)");
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(run_async(args))
}

fn gpu(args: &Args) -> EmulatedGpu {
    EmulatedGpu {
        fixed: Duration::from_secs_f64(args.fixed_ms / 1e3),
        per_item: Duration::from_secs_f64(args.per_item_ms / 1e3),
        max_batch: args.max_batch,
    }
}

/// Requests per second one worker serves at full batches.
fn capacity(args: &Args) -> f64 {
    args.max_batch as f64 / gpu(args).batch_time(args.max_batch).as_secs_f64()
}

fn welcome() -> Welcome {
    Welcome {
        model_id: MODEL.into(),
        layers: 12,
        tokens: 197,
        features: 192,
        max_frame: 8 << 20,
    }
}

async fn run_async(args: Args) -> Result<()> {
    let out = results_dir()?.join("scale-out");
    std::fs::create_dir_all(&out)?;
    let store = std::env::temp_dir().join(format!("collab-scale-out-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&store);
    let subjects = Subjects::new("collab")?;
    let broker = Broker::start(&store, &subjects, &Access::default(), None)
        .context("starting nats-server")?;
    let nats = NatsConfig {
        max_held: Some(2 * args.max_batch),
        ..NatsConfig::new(broker.url())
    };
    let mut clients = Vec::new();
    // Devices connect once a worker answers their handshake: start one for that.
    let first = EmulatedWorker::start(&nats, welcome(), gpu(&args)).await?;
    for d in 0..args.devices {
        let config = ClientConfig {
            device_id: format!("load-{d}"),
            model_id: MODEL.into(),
            ..ClientConfig::default()
        };
        clients.push(DeviceClient::connect_nats(&nats, config).await?);
    }
    first.kill().await;
    let payload = Arc::new(vec![7u8; args.payload_kb * 1024]);
    println!(
        "scale-out: emulated GPU {} ms + {} ms/request, batches of {} ({:.0} req/s per worker), \
         deadline {} ms, {} KB payloads, {} devices, nats-server at {}",
        args.fixed_ms,
        args.per_item_ms,
        args.max_batch,
        capacity(&args),
        args.deadline_ms,
        args.payload_kb,
        args.devices,
        broker.url()
    );
    let mut rng = StdRng::seed_from_u64(args.seed);
    let mut steps = Vec::new();
    for &w in &args.workers {
        let workers = start_workers(&nats, &args, w).await?;
        for &f in &args.fractions {
            let offered = f * w as f64 * capacity(&args);
            let step = load(&clients, &payload, &args, offered, args.step_s, &mut rng).await;
            let step = Step { workers: w, ..step };
            println!(
                "  workers={w} offered={offered:.0}/s goodput={:.0}/s in_time={:.3} p50={:.0} ms \
                 p99={:.0} ms late={} errors={} lost={}",
                step.goodput,
                step.attainment(),
                step.p50_ms,
                step.p99_ms,
                step.late,
                step.errors,
                step.lost
            );
            steps.push(step);
        }
        for worker in workers {
            worker.kill().await;
        }
        // What the killed workers held is redelivered to the next count's workers.
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    // The kill phase.
    let unmatched_before: u64 = clients.iter().map(DeviceClient::unmatched_answers).sum();
    let workers = start_workers(&nats, &args, 4).await?;
    let victim = Arc::new(Mutex::new(Some(workers)));
    let offered = args.kill_fraction * 4.0 * capacity(&args);
    let kill_at = Duration::from_secs_f64(args.kill_s / 3.0);
    let killer = {
        let victim = victim.clone();
        tokio::spawn(async move {
            tokio::time::sleep(kill_at).await;
            let mut guard = victim.lock().await;
            if let Some(workers) = guard.as_mut()
                && let Some(w) = workers.pop()
            {
                w.kill().await;
            }
        })
    };
    let kill = load(&clients, &payload, &args, offered, args.kill_s, &mut rng).await;
    killer.await?;
    // A second answer would come after a redelivery: wait past the ack wait before counting.
    tokio::time::sleep(nats.ack_wait()? + Duration::from_secs(2)).await;
    let duplicated = clients
        .iter()
        .map(DeviceClient::unmatched_answers)
        .sum::<u64>()
        - unmatched_before;
    println!(
        "  kill: 4 workers at {offered:.0}/s, one killed after {:.0} s: sent={} answered={} \
         (in time {}, late {}, errors {}) lost={} duplicated={duplicated}",
        kill_at.as_secs_f64(),
        kill.sent,
        kill.in_time + kill.late + kill.errors,
        kill.in_time,
        kill.late,
        kill.errors,
        kill.lost
    );
    if let Some(workers) = victim.lock().await.take() {
        for w in workers {
            w.kill().await;
        }
    }
    for c in clients {
        c.close().await;
    }
    drop(broker);
    let _ = std::fs::remove_dir_all(&store);

    // The table.
    let mut csv = String::from(
        "workers,offered_per_s,sent,in_time,late,errors,lost,attainment,goodput_per_s,p50_ms,p99_ms\n",
    );
    for s in &steps {
        let _ = writeln!(
            csv,
            "{},{:.1},{},{},{},{},{},{:.4},{:.1},{:.1},{:.1}",
            s.workers,
            s.offered,
            s.sent,
            s.in_time,
            s.late,
            s.errors,
            s.lost,
            s.attainment(),
            s.goodput,
            s.p50_ms,
            s.p99_ms
        );
    }
    std::fs::write(out.join("scale-out.csv"), &csv)?;
    println!(
        "\n| workers | sustainable goodput (req/s, >= 90% in time) | ratio to 1 | p99 at it (ms) |"
    );
    println!("| --- | --- | --- | --- |");
    let sustained = |w: usize| {
        steps
            .iter()
            .filter(|s| s.workers == w && s.attainment() >= 0.9)
            .max_by(|a, b| a.offered.total_cmp(&b.offered))
            .cloned()
    };
    let base = sustained(1).map_or(0.0, |s| s.goodput);
    let mut ratio4 = 0.0;
    for &w in &args.workers {
        let (goodput, p99) = sustained(w).map_or((0.0, f64::NAN), |s| (s.goodput, s.p99_ms));
        let ratio = if base > 0.0 { goodput / base } else { 0.0 };
        if w == 4 {
            ratio4 = ratio;
        }
        println!("| {w} | {goodput:.0} | {ratio:.2} | {p99:.0} |");
    }
    println!("wrote {}", out.join("scale-out.csv").display());
    println!(
        "scale-out workers=4 throughput_ratio={ratio4:.2} lost={} duplicated={duplicated}",
        kill.lost
    );
    Ok(())
}

async fn start_workers(nats: &NatsConfig, args: &Args, n: usize) -> Result<Vec<EmulatedWorker>> {
    let mut workers = Vec::new();
    for _ in 0..n {
        workers.push(EmulatedWorker::start(nats, welcome(), gpu(args)).await?);
    }
    Ok(workers)
}

/// Offers Poisson arrivals at `rate` per second for `seconds`, spread over the clients, and
/// waits for every call to end.
async fn load(
    clients: &[DeviceClient],
    payload: &Arc<Vec<u8>>,
    args: &Args,
    rate: f64,
    seconds: f64,
    rng: &mut StdRng,
) -> Step {
    let deadline = Duration::from_millis(args.deadline_ms);
    let latencies = Arc::new(std::sync::Mutex::new(Vec::new()));
    let counts = Arc::new([
        AtomicU64::new(0),
        AtomicU64::new(0),
        AtomicU64::new(0),
        AtomicU64::new(0),
    ]);
    let start = Instant::now();
    let end = start + Duration::from_secs_f64(seconds);
    let mut next = start;
    let mut calls = Vec::new();
    let mut sent = 0u64;
    while next < end {
        tokio::time::sleep_until(next.into()).await;
        let client = clients[sent as usize % clients.len()].clone();
        let (payload, latencies, counts) = (payload.clone(), latencies.clone(), counts.clone());
        calls.push(tokio::spawn(async move {
            let t0 = Instant::now();
            let outgoing = Outgoing {
                split: 6,
                codec: CodecId::raw(),
                payload: payload.to_vec(),
                budget: deadline,
                max_loss: 0.0,
                meta: None,
            };
            // Generous: a call ends with the worker's answer, not with this timeout.
            let r = client
                .infer(outgoing, deadline + Duration::from_secs(30))
                .await;
            let ms = t0.elapsed().as_secs_f64() * 1e3;
            let k = match r {
                Ok(_) if ms <= deadline.as_secs_f64() * 1e3 => 0,
                Ok(_) => 1,
                Err(ClientError::Remote(_)) => 2,
                Err(_) => 3,
            };
            counts[k].fetch_add(1, Ordering::Relaxed);
            if k <= 1
                && let Ok(mut l) = latencies.lock()
            {
                l.push(ms);
            }
        }));
        sent += 1;
        let gap: f64 = -(1.0 - rng.random::<f64>()).ln() / rate;
        next += Duration::from_secs_f64(gap);
    }
    for c in calls {
        let _ = c.await;
    }
    // Over the whole time, the backlog's draining included: a step past capacity cannot
    // show more than the workers served.
    let elapsed = start.elapsed().as_secs_f64();
    let mut l = latencies.lock().map(|l| l.clone()).unwrap_or_default();
    l.sort_by(f64::total_cmp);
    let q = |p: f64| {
        if l.is_empty() {
            f64::NAN
        } else {
            l[((l.len() - 1) as f64 * p).round() as usize]
        }
    };
    let in_time = counts[0].load(Ordering::Relaxed);
    Step {
        workers: 0,
        offered: rate,
        sent,
        in_time,
        late: counts[1].load(Ordering::Relaxed),
        errors: counts[2].load(Ordering::Relaxed),
        lost: counts[3].load(Ordering::Relaxed),
        p50_ms: q(0.5),
        p99_ms: q(0.99),
        goodput: in_time as f64 / elapsed,
    }
}
