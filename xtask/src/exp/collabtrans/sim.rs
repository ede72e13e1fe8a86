//! One trial: seeded Poisson arrivals from the device profiles, device compute and transfer
//! from the profiles, and the server's real batched compute of the real model driven by a
//! [`Worker`] in simulated time (each step advances the clock by its measured wall time).

use std::sync::Arc;
use std::time::Instant;

use anyhow::Result;
use collab_core::Backend;
use collab_core::batch::BatchPolicy;
use collab_core::cost::{CostModel, MeasuredProfile, Workload};
use collab_policies::batch::{ModelExecutor, Payload, Work, Worker};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// A device's fixed plan for a trial: where it splits and what its requests cost it.
#[derive(Clone, Debug)]
pub(super) struct DevicePlan<B: Backend> {
    /// Share of the arrivals.
    pub(super) weight: f64,
    /// Split point (0: server-only).
    pub(super) split: usize,
    /// Seconds from arrival to the server's receipt (device compute, encode, uplink).
    pub(super) to_server: f64,
    /// Seconds for the response to come back.
    pub(super) back: f64,
    /// The request's latency budget.
    pub(super) budget: f64,
    /// What the request carries to the server.
    pub(super) payload: Payload<B>,
}

/// What one or more trials measured, as sums so that trials over several seeds pool: the
/// pooled fraction on time is total met over total counted, not a mean of fractions.
#[derive(Clone, Copy, Debug, Default)]
pub(super) struct Trial {
    /// Requests that arrived inside the measured window.
    pub(super) counted: usize,
    /// Of those, answered with a result within their deadline.
    pub(super) met_count: usize,
    /// Batched steps the server ran, and the batch sizes summed over them.
    steps: usize,
    batch_sum: usize,
    /// Server compute seconds (measured wall time of the steps that ran).
    busy: f64,
    /// Requests (all, not only the window's) answered with a result.
    done: usize,
    /// Simulated seconds from the first arrival to the last response.
    span: f64,
}

impl Trial {
    /// Fraction of the measured window's requests answered within their deadline.
    pub(super) fn met(&self) -> f64 {
        self.met_count as f64 / self.counted.max(1) as f64
    }

    /// Mean batch size over the positions computed.
    pub(super) fn mean_batch(&self) -> f64 {
        self.batch_sum as f64 / self.steps.max(1) as f64
    }

    /// Server compute seconds per request answered with a result: the server's cost of a
    /// request under this scheme at this load.
    pub(super) fn busy_per_done(&self) -> f64 {
        self.busy / self.done.max(1) as f64
    }

    /// Server compute seconds over the simulated span: how loaded the server was.
    pub(super) fn utilisation(&self) -> f64 {
        self.busy / self.span.max(1e-9)
    }

    /// A trial of 1000 counted requests of which `met` (a fraction) were on time; for tests.
    #[cfg(test)]
    pub(super) fn with_fraction(met: f64) -> Trial {
        Trial {
            counted: 1000,
            met_count: (met * 1000.0).round() as usize,
            ..Trial::default()
        }
    }

    /// The trials of `self` and `other` pooled, as if run one after the other.
    pub(super) fn pooled(self, other: Trial) -> Trial {
        Trial {
            counted: self.counted + other.counted,
            met_count: self.met_count + other.met_count,
            steps: self.steps + other.steps,
            batch_sum: self.batch_sum + other.batch_sum,
            busy: self.busy + other.busy,
            done: self.done + other.done,
            span: self.span + other.span,
        }
    }
}

/// Estimated seconds to finish from position `p` at batch `b`, from the server profile.
pub(super) fn remaining(
    profile: &Arc<MeasuredProfile>,
    tokens: usize,
) -> impl Fn(usize, usize) -> f64 + Send + 'static {
    let profile = profile.clone();
    move |p: usize, b: usize| {
        let b = b.max(1);
        let l = profile.layers;
        let blocks = profile
            .blocks_seconds(p.min(l)..l, b, tokens)
            .unwrap_or(0.0);
        let head = profile
            .seconds(&Workload::Head { batch: b, tokens })
            .unwrap_or(0.0);
        let embed = if p == 0 {
            profile
                .seconds(&Workload::Embed { batch: b, tokens })
                .unwrap_or(0.0)
        } else {
            0.0
        };
        blocks + head + embed
    }
}

/// The load of one trial: who sends, how fast, for how long, on which arrival trace.
pub(super) struct Load<'a, B: Backend> {
    /// The devices' plans.
    pub(super) devices: &'a [DevicePlan<B>],
    /// Total arrival rate (requests per second).
    pub(super) rate: f64,
    /// The least number of arrivals in the measured window.
    pub(super) requests: usize,
    /// The arrival trace's seed.
    pub(super) seed: u64,
}

/// Runs a trial of `load` through a worker with `policy`, measured in steady state.
///
/// The devices reach the server after different delays (up to `D`, the slowest device's
/// compute and uplink), so a burst of arrivals reaches the server spread over `D`, a load far
/// below the rate when `D` is long. Arrivals therefore run for `D + W + D`: the first `D` until
/// every device's stream reaches the server, a measured window `W` (at least `requests`
/// arrivals and `2D`), and `D` more so that the window's requests share the server with every
/// stream to the end. Only requests that arrive inside the window are counted.
pub(super) fn trial<B: Backend, P: BatchPolicy>(
    policy: P,
    executor: ModelExecutor<B>,
    remaining: impl Fn(usize, usize) -> f64 + Send + 'static,
    load: &Load<'_, B>,
) -> Result<Trial> {
    let Load {
        devices,
        rate,
        requests,
        seed,
    } = *load;
    let mut rng = StdRng::seed_from_u64(seed);
    let total: f64 = devices.iter().map(|d| d.weight).sum();
    let delay = devices.iter().map(|d| d.to_server).fold(0.0f64, f64::max);
    let window = (requests as f64 / rate).max(2.0 * delay);
    let (from, to, end) = (delay, delay + window, 2.0 * delay + window);
    // Arrivals: one Poisson stream of `rate`, each request assigned to a device by weight:
    // (received by the server, arrival, device, counted).
    let mut t = 0.0;
    let mut arrivals: Vec<(f64, f64, usize, bool)> = vec![];
    loop {
        t += -(1.0 - rng.random::<f64>()).ln() / rate;
        if t > end {
            break;
        }
        let mut pick = rng.random::<f64>() * total;
        let dev = devices
            .iter()
            .position(|d| {
                pick -= d.weight;
                pick <= 0.0
            })
            .unwrap_or(devices.len() - 1);
        let d = &devices[dev];
        arrivals.push((t + d.to_server, t, dev, (from..=to).contains(&t)));
    }
    arrivals.sort_by(|a, b| a.0.total_cmp(&b.0));
    let backend = executor.model().backend().clone();
    let mut worker = Worker::new(policy, executor, remaining);
    let (mut now, mut next, mut met, mut steps, mut batch_sum) =
        (0.0f64, 0usize, 0usize, 0usize, 0usize);
    let (mut busy, mut done) = (0.0f64, 0usize);
    let first = arrivals.first().map_or(0.0, |a| a.1);
    loop {
        while next < arrivals.len() && arrivals[next].0 <= now {
            let (recv, arrival, dev, _) = arrivals[next];
            let d = &devices[dev];
            // The server's own deadline leaves time for the response to travel back.
            let deadline = arrival + d.budget - d.back;
            if let Err(r) = worker.enqueue(next as u64, d.split, recv, deadline, d.payload.clone())
            {
                anyhow::bail!("request refused: {:?}", r.outcome);
            }
            next += 1;
        }
        if worker.is_empty() {
            match arrivals.get(next) {
                Some(a) => {
                    now = now.max(a.0);
                    continue;
                }
                None => break,
            }
        }
        let t0 = Instant::now();
        let mut step = worker.step(now);
        // A step's work may still be queued on an asynchronous (CUDA) device: wait for it,
        // so that the clock advances by the step's compute, not its launch.
        backend.synchronize()?;
        let spent = t0.elapsed().as_secs_f64();
        now += spent;
        step.set_finished(now);
        done += step.responses.iter().filter(|r| r.is_done()).count();
        if let Work::Ran { batch, .. } = step.work {
            busy += spent;
            steps += 1;
            batch_sum += batch;
        } else if let Some(a) = arrivals.get(next) {
            now = now.max(a.0);
        } else if step.responses.is_empty() {
            break; // idle with work held and nothing left to arrive: the rest count as missed
        }
        met += step
            .responses
            .iter()
            .filter(|r| r.is_done() && r.met_deadline())
            .filter(|r| usize::try_from(r.id).is_ok_and(|i| arrivals.get(i).is_some_and(|a| a.3)))
            .count();
    }
    Ok(Trial {
        counted: arrivals.iter().filter(|a| a.3).count(),
        met_count: met,
        steps,
        batch_sum,
        busy,
        done,
        span: (now - first).max(0.0),
    })
}

/// Seconds the device needs for the embedding and blocks `0..k` (0 for server-only).
pub(super) fn device_seconds(device: &dyn CostModel, k: usize, tokens: usize) -> Result<f64> {
    if k == 0 {
        return Ok(0.0);
    }
    Ok(device.seconds(&Workload::Embed { batch: 1, tokens })?
        + device.blocks_seconds(0..k, 1, tokens)?)
}
