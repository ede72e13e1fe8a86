//! One simulated trial: seeded Poisson arrivals, devices that reach the server after their own
//! delays, one worker stepping in simulated time.

use std::time::Instant;

use collab_core::batch::{BatchPolicy, Outcome};
use collab_core::{Error, Result};
use collab_policies::batch::{Executor, Work, Worker};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::StepClock;

/// A device's fixed plan for a trial: where it splits and what its requests cost it.
#[derive(Clone, Debug)]
pub struct DevicePlan<P> {
    /// Share of the arrivals (any positive weight; shares are weights over their sum).
    pub weight: f64,
    /// Split point: the block its requests enter the server at (0: server-only).
    pub split: usize,
    /// Seconds from arrival to the server's receipt (device compute, encode, uplink).
    pub to_server: f64,
    /// Seconds for the response to come back.
    pub back: f64,
    /// The request's latency budget, from arrival to the answer back on the device.
    pub budget: f64,
    /// What the request carries to the server (`()` for a [`ReplayExecutor`](super::ReplayExecutor)).
    pub payload: P,
}

/// What one or more trials measured, as sums so that trials over several seeds pool: the
/// pooled fraction on time is total met over total counted, not a mean of fractions.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Trial {
    /// Requests that arrived inside the measured window.
    pub counted: usize,
    /// Of those, answered with a result within their deadline.
    pub met_count: usize,
    /// Batched steps the server ran.
    pub steps: usize,
    /// The batch sizes summed over those steps.
    pub batch_sum: usize,
    /// Server compute seconds (the cost of the steps that ran).
    pub busy: f64,
    /// Requests (all, not only the window's) answered with a result.
    pub done: usize,
    /// Simulated seconds from the first arrival to the last response.
    pub span: f64,
}

impl Trial {
    /// A trial known only by how many requests were counted and how many of them were on time
    /// (to drive a [`RateSearch`](crate::search::RateSearch) by hand, or in tests).
    pub fn on_time(counted: usize, met_count: usize) -> Trial {
        Trial {
            counted,
            met_count,
            ..Trial::default()
        }
    }

    /// Fraction of the measured window's requests answered within their deadline.
    pub fn met(&self) -> f64 {
        self.met_count as f64 / self.counted.max(1) as f64
    }

    /// Mean batch size over the positions computed.
    pub fn mean_batch(&self) -> f64 {
        self.batch_sum as f64 / self.steps.max(1) as f64
    }

    /// Server compute seconds per request answered with a result: the server's cost of a
    /// request under this scheme at this load.
    pub fn busy_per_done(&self) -> f64 {
        self.busy / self.done.max(1) as f64
    }

    /// Server compute seconds over the simulated span: how loaded the server was.
    pub fn utilisation(&self) -> f64 {
        self.busy / self.span.max(1e-9)
    }

    /// The trials of `self` and `other` pooled, as if run one after the other.
    #[must_use]
    pub fn pooled(self, other: Trial) -> Trial {
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

/// The most arrivals a trial may expect (rate × simulated span): a bound on what a bad rate or
/// a profile that prices everything at zero can make a trial allocate.
pub const MAX_ARRIVALS: f64 = 5e6;

/// The load of one trial: who sends, how fast, for how long, on which arrival trace.
#[derive(Clone, Copy, Debug)]
pub struct Load<'a, P> {
    /// The devices' plans.
    pub devices: &'a [DevicePlan<P>],
    /// Total arrival rate (requests per second).
    pub rate: f64,
    /// The least number of arrivals in the measured window.
    pub requests: usize,
    /// The arrival trace's seed.
    pub seed: u64,
}

/// Runs one trial of `load` through a worker with `policy` and `executor`, in steady state,
/// advancing simulated time by `clock`'s cost of each step.
///
/// The devices reach the server after different delays (up to `D`, the slowest device's
/// compute and uplink), so a burst of arrivals reaches the server spread over `D`, a load far
/// below the rate when `D` is long. Arrivals therefore run for `D + W + D`: the first `D` until
/// every device's stream reaches the server, a measured window `W` (at least `requests`
/// arrivals and `2D`), and `D` more so that the window's requests share the server with every
/// stream to the end. Only requests that arrive inside the window are counted. The server's
/// deadline for a request is its arrival plus its budget less the time its answer needs to
/// travel back.
///
/// # Errors
/// [`Error::Config`] for a load without devices, a rate that is not positive and finite, a
/// device plan with a weight that is not positive or a delay or budget that is negative or not
/// finite, more than [`MAX_ARRIVALS`] expected arrivals, or a request the worker refuses on
/// arrival (a split the policy does not serve); what the clock
/// reports.
pub fn run_trial<P: BatchPolicy, E: Executor>(
    policy: P,
    executor: E,
    remaining: impl Fn(usize, usize) -> f64 + Send + 'static,
    clock: &mut dyn StepClock,
    load: &Load<'_, E::Payload>,
) -> Result<Trial>
where
    E::Payload: Clone,
{
    let Load {
        devices,
        rate,
        requests,
        seed,
    } = *load;
    if devices.is_empty() || !(rate.is_finite() && rate > 0.0) {
        return Err(Error::Config(format!(
            "a trial needs devices and a positive rate (got {} devices, rate {rate})",
            devices.len()
        )));
    }
    for (i, d) in devices.iter().enumerate() {
        let finite = |x: f64| x.is_finite() && x >= 0.0;
        let sane = d.weight.is_finite()
            && d.weight > 0.0
            && finite(d.to_server)
            && finite(d.back)
            && finite(d.budget);
        if !sane {
            return Err(Error::Config(format!(
                "device plan {i}: weight {} must be positive, delays {} and {} and budget {} finite and not negative",
                d.weight, d.to_server, d.back, d.budget
            )));
        }
    }
    let mut rng = StdRng::seed_from_u64(seed);
    let total: f64 = devices.iter().map(|d| d.weight).sum();
    let delay = devices.iter().map(|d| d.to_server).fold(0.0f64, f64::max);
    let window = (requests as f64 / rate).max(2.0 * delay);
    let (from, to, end) = (delay, delay + window, 2.0 * delay + window);
    if rate * end > MAX_ARRIVALS {
        return Err(Error::Config(format!(
            "a trial of {:.0} expected arrivals (rate {rate} over {end:.1} s) is past the {MAX_ARRIVALS:.0} a trial may hold",
            rate * end
        )));
    }
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
    let mut worker = Worker::new(policy, executor, remaining);
    let (mut now, mut next, mut met, mut steps, mut batch_sum) =
        (0.0f64, 0usize, 0usize, 0usize, 0usize);
    let (mut busy, mut done) = (0.0f64, 0usize);
    let first = arrivals.iter().map(|a| a.1).fold(f64::INFINITY, f64::min);
    let first = if first.is_finite() { first } else { 0.0 };
    loop {
        while next < arrivals.len() && arrivals[next].0 <= now {
            let (recv, arrival, dev, _) = arrivals[next];
            let d = &devices[dev];
            let deadline = arrival + d.budget - d.back;
            if let Err(r) = worker.enqueue(next as u64, d.split, recv, deadline, d.payload.clone())
            {
                let why = match r.outcome {
                    Outcome::Invalid(why) => why,
                    _ => "refused".into(),
                };
                return Err(Error::Config(format!(
                    "request refused at split {}: {why}",
                    d.split
                )));
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
        let spent = clock.step_seconds(step.work, t0)?;
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
