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
use serde_json::{Value, json};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

use super::DeviceArgs;
use super::setup::{Setup, seed};
use crate::client::{
    Arrivals, Classified, ClientConfig, ClientError, Device, DeviceClient, DeviceConfig, Tick,
};

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

/// Which images a device classifies: `count` from `offset` on, or, until `until`, those
/// images over and over.
#[derive(Clone, Copy, Debug)]
struct Work {
    images: usize,
    offset: usize,
    count: usize,
    until: Option<Instant>,
}

impl Work {
    /// The sample index of the `i`-th request, or `None` when there is no `i`-th.
    fn image(&self, i: usize) -> Option<usize> {
        match self.until {
            Some(t) if Instant::now() < t => Some(self.offset + i % self.images),
            Some(_) => None,
            None => (i < self.count).then_some(self.offset + i),
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
    let connected = match (&args.nats, &setup.transport) {
        (Some(nats), _) => DeviceClient::connect_nats(nats, config).await,
        (None, Some(transport)) => DeviceClient::connect(transport.clone(), config).await,
        (None, None) => Err(crate::client::ClientError::Local(
            "no server address and no [nats]".into(),
        )),
    };
    let client = match connected {
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
        emulated_link: setup.link.clone(),
        report: true,
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
    let mut rng = StdRng::seed_from_u64(seed(&args));
    let next = Arc::new(AtomicUsize::new(0));
    let start = Instant::now();
    let work = Work {
        images: args.images.max(1),
        offset: args.offset,
        count: args.images,
        until: (args.duration_s > 0.0).then(|| start + Duration::from_secs_f64(args.duration_s)),
    };
    let mut tasks = JoinSet::new();
    let spawn = |tasks: &mut JoinSet<()>, permit, once: bool| {
        let (device, setup, summary, next, id) = (
            device.clone(),
            setup.clone(),
            summary.clone(),
            next.clone(),
            id.clone(),
        );
        tasks.spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some(image) = work.image(i) else {
                    break;
                };
                let (label, outcome) = classify_one(&device, &setup, image).await;
                emit(&report(&id, image, label, &outcome, &summary));
                if once {
                    break;
                }
            }
            drop(permit);
        });
    };
    if args.rate > 0.0 {
        // Poisson arrivals, one task each, at the latest rate an operator set (0 pauses
        // until a rate is set again or the run's time is up).
        let mut arrivals = Arrivals::new(client.settings(), args.rate);
        let mut i = 0;
        loop {
            while tasks.try_join_next().is_some() {}
            if work.until.is_some_and(|t| Instant::now() >= t) {
                break;
            }
            if arrivals.next(&mut rng).await == Tick::Idle {
                continue;
            }
            if work.image(i).is_none() {
                break;
            }
            i += 1;
            let permit = slots.clone().acquire_owned().await?;
            spawn(&mut tasks, permit, true);
        }
    } else {
        // Back to back: `concurrency` workers each take the next image.
        for _ in 0..args.concurrency.max(1) {
            let permit = slots.clone().acquire_owned().await?;
            spawn(&mut tasks, permit, false);
        }
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
            "device": id, "done": true, "requests": s.ok + s.errors.values().sum::<usize>(), "ok": s.ok,
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
