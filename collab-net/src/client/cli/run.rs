//! The request loop of a device process and its JSON lines.

use std::collections::BTreeMap;
use std::io::Write;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Result;
use collab_core::Backend;
use collab_core::split::SplitStrategy;
use rand::SeedableRng;
use rand::rngs::StdRng;
use rand_distr::{Distribution, Exp};
use serde_json::{Value, json};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

use super::DeviceArgs;
use super::setup::{Setup, seed};
use crate::client::{Classified, ClientConfig, ClientError, Device, DeviceClient, DeviceConfig};

/// Counts for the final line.
#[derive(Debug, Default)]
struct Summary {
    ok: usize,
    correct: usize,
    errors: BTreeMap<&'static str, usize>,
    total_ms: Vec<f64>,
}

/// One request's line, and the summary updated.
fn report(
    device: &str,
    image: usize,
    label: usize,
    outcome: &Result<Classified, ClientError>,
    summary: &Mutex<Summary>,
) -> Value {
    let mut s = summary.lock().unwrap_or_else(|p| p.into_inner());
    match outcome {
        Ok(c) => {
            let top1 = c.top.first().map(|t| t.0);
            s.ok += 1;
            s.correct += usize::from(top1.is_some_and(|t| t as usize == label));
            s.total_ms.push(c.total_ms);
            json!({
                "device": device, "image": image, "label": label, "ok": true, "top1": top1,
                "split": c.split, "codec": c.codec.to_string(), "bytes": c.bytes, "device_ms": c.device_ms,
                "total_ms": c.total_ms, "server_ms": c.server_ms, "batch": c.batch,
            })
        }
        Err(e) => {
            *s.errors.entry(e.kind()).or_default() += 1;
            json!({
                "device": device, "image": image, "ok": false, "error": e.kind(),
                "message": e.to_string(),
            })
        }
    }
}

/// Prints one line, whole (a closed stdout is ignored: the reader is gone).
fn emit(line: &Value) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

/// Decodes sample `index` and classifies it.
async fn classify_one<B: Backend>(
    device: &Device<B>,
    setup: &Setup<B>,
    index: usize,
) -> (usize, Result<Classified, ClientError>) {
    let sample = &setup.samples[index % setup.samples.len()];
    let path = sample.path.clone();
    let decoded = tokio::task::spawn_blocking(move || image::open(&path).map(|i| i.to_rgb8()))
        .await
        .map_err(|e| ClientError::Local(format!("decode task: {e}")))
        .and_then(|r| {
            r.map_err(|e| ClientError::Local(format!("decoding {}: {e}", sample.path.display())))
        });
    let outcome = match decoded {
        Ok(img) => device.classify(&img).await,
        Err(e) => Err(e),
    };
    (sample.label, outcome)
}

/// Connects, classifies `args.images` images and prints the lines.
pub(super) async fn run<B: Backend>(
    args: DeviceArgs,
    setup: Setup<B>,
    strategy: Box<dyn SplitStrategy>,
) -> Result<()> {
    let id = args.device_id.clone();
    let config = ClientConfig {
        device_id: id.clone(),
        model_id: args.model_id.clone(),
        auth_token: args.token.secret().map_err(anyhow::Error::msg)?,
        ..ClientConfig::default()
    };
    let client = match DeviceClient::connect(setup.transport.clone(), config).await {
        Ok(c) => c,
        Err(e) => {
            emit(&json!({
                "device": id, "done": true, "requests": 0, "error": e.kind(),
                "message": e.to_string(),
            }));
            return Err(e.into());
        }
    };
    let device_config = DeviceConfig {
        deadline: Duration::from_secs_f64(args.deadline_ms.max(0.0) / 1e3),
        max_loss: args.max_loss,
        slowdown: args.slowdown,
        probe_every: Duration::from_millis(args.probe_every_ms),
        probe_bytes: args.probe_bytes,
        bases: setup.bases.clone(),
        codecs: setup.codecs.clone(),
    };
    let setup = Arc::new(setup);
    let device = Arc::new(Device::new(
        setup.model.clone(),
        strategy,
        client.clone(),
        device_config,
    ));
    let summary = Arc::new(Mutex::new(Summary::default()));
    let slots = Arc::new(Semaphore::new(args.concurrency.max(1)));
    let arrivals = Exp::new(args.rate).ok().filter(|_| args.rate > 0.0);
    let mut rng = StdRng::seed_from_u64(seed(&args));
    let next = Arc::new(AtomicUsize::new(0));
    let start = Instant::now();
    let mut due = tokio::time::Instant::now();
    let mut tasks = JoinSet::new();
    // Back to back: `concurrency` workers each take the next image; Poisson: one task per
    // arrival, waiting for a free slot.
    let spawns = if arrivals.is_some() {
        args.images
    } else {
        args.concurrency.max(1)
    };
    for _ in 0..spawns {
        if let Some(exp) = &arrivals {
            due += Duration::from_secs_f64(exp.sample(&mut rng));
            tokio::time::sleep_until(due).await;
        }
        let permit = slots.clone().acquire_owned().await?;
        let (device, setup, summary, next, id) = (
            device.clone(),
            setup.clone(),
            summary.clone(),
            next.clone(),
            id.clone(),
        );
        let (images, offset, once) = (args.images, args.offset, arrivals.is_some());
        tasks.spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= images {
                    break;
                }
                let image = offset + i;
                let (label, outcome) = classify_one(&device, &setup, image).await;
                emit(&report(&id, image, label, &outcome, &summary));
                if once {
                    break;
                }
            }
            drop(permit);
        });
    }
    while tasks.join_next().await.is_some() {}
    let elapsed = start.elapsed().as_secs_f64();
    let line = {
        let s = summary.lock().unwrap_or_else(|p| p.into_inner());
        let quantile = |q: f64| {
            let v = collab_core::cost::quantile(&s.total_ms, q);
            v.is_finite().then_some(v)
        };
        json!({
            "device": id, "done": true, "requests": args.images, "ok": s.ok,
            "correct": s.correct, "errors": s.errors, "elapsed_s": elapsed,
            "throughput": if elapsed > 0.0 { s.ok as f64 / elapsed } else { 0.0 },
            "p50_ms": quantile(0.5), "p95_ms": quantile(0.95),
            "reconnects": client.reconnects(),
        })
    };
    emit(&line);
    client.close().await;
    Ok(())
}
