//! Arrival traces for serving experiments (OTAS, SPEC §4, "Evaluation"), as `cargo xtask exp
//! otas` replays them.
//!
//! Rates are stated in the paper's units (queries/s on its GPU) and multiplied by `scale` (this
//! machine's measured throughput over the paper's) when arrivals are drawn, so that the load
//! relative to capacity matches the paper's.
//!
//! - [`poisson_moving`]: Poisson arrivals whose rate moves between about 200 and 700 queries/s,
//!   a new target every `step` seconds, linearly interpolated in between.
//! - [`bursty`]: a production-like bursty trace. The Azure Functions 2021 invocation trace cannot
//!   be downloaded here (no registry carries it), so this is a GENERATOR matching the statistics
//!   SPEC §4 gives for it: per-second counts with about 60% of seconds below 300 queries/s and
//!   bursts above 4000 queries/s. It is labelled as generated wherever it is reported.

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rand_distr::{Distribution, Exp, LogNormal};

use collab_core::{Error, Result};

/// A trace: arrival times in seconds from 0, ascending, and the paper-unit rate per second.
#[derive(Clone, Debug, PartialEq)]
pub struct Trace {
    /// What generated it (`poisson-moving`, `bursty-generated`).
    pub name: String,
    /// Arrival times in seconds from 0, ascending.
    pub arrivals: Vec<f64>,
    /// Paper-unit rate of each whole second (for plots and statistics).
    pub rate_per_second: Vec<f64>,
}

/// The longest trace the generators make, in seconds (a day).
pub const MAX_SECONDS: f64 = 86_400.0;

/// Checks a generator's arguments.
fn check(seconds: f64, scale: f64) -> Result<()> {
    let sane = seconds > 0.0 && seconds <= MAX_SECONDS && scale > 0.0 && scale.is_finite();
    if !sane {
        return Err(Error::Config(format!(
            "a trace needs 0 < seconds <= {MAX_SECONDS} and a positive scale (got {seconds} s, scale {scale})"
        )));
    }
    Ok(())
}

impl Trace {
    /// Share of seconds whose paper-unit rate is below `limit`, and the peak rate.
    pub fn stats(&self, limit: f64) -> (f64, f64) {
        let n = self.rate_per_second.len().max(1) as f64;
        let below = self.rate_per_second.iter().filter(|&&r| r < limit).count() as f64;
        let peak = self.rate_per_second.iter().copied().fold(0.0, f64::max);
        (below / n, peak)
    }
}

/// Poisson arrivals over `seconds` with a paper-unit rate moving between 200 and 700, a new
/// random target every `step` seconds; arrival rate = paper rate x `scale`.
///
/// # Errors
/// [`Error::Config`] for `seconds` outside `(0, MAX_SECONDS]`, a step that is not positive or
/// below a millisecond, or a scale that is not positive.
pub fn poisson_moving(seconds: f64, step: f64, scale: f64, seed: u64) -> Result<Trace> {
    check(seconds, scale)?;
    if !(step >= 1e-3 && step.is_finite()) {
        return Err(Error::Config(format!(
            "a trace's rate step must be at least 1 ms (got {step} s)"
        )));
    }
    let mut rng = StdRng::seed_from_u64(seed);
    let knots = (seconds / step).ceil() as usize + 1;
    let targets: Vec<f64> = (0..=knots)
        .map(|_| rng.random_range(200.0..700.0))
        .collect();
    let rate_at = |t: f64| {
        let k = (t / step).floor() as usize;
        let f = t / step - k as f64;
        let (a, b) = (targets[k.min(knots)], targets[(k + 1).min(knots)]);
        a + (b - a) * f
    };
    // Thinning (Lewis & Shedler): candidates at the peak rate, kept with probability rate/peak.
    let peak = 700.0 * scale;
    let gap = Exp::new(peak).unwrap_or_else(|_| Exp::new(1.0).expect("1 is a valid rate"));
    let (mut t, mut arrivals) = (0.0, Vec::new());
    loop {
        t += gap.sample(&mut rng);
        if t >= seconds {
            break;
        }
        if rng.random::<f64>() * peak < rate_at(t) * scale {
            arrivals.push(t);
        }
    }
    let rate_per_second = (0..seconds.ceil() as usize)
        .map(|s| rate_at(s as f64 + 0.5))
        .collect();
    Ok(Trace {
        name: "poisson-moving".into(),
        arrivals,
        rate_per_second,
    })
}

/// A bursty per-second trace (generated; see the module docs): a log-normal base rate (median
/// 220, so that about 60% of seconds fall below 300) and bursts of 2-5 s at 1500-4500 queries/s
/// starting in about 4% of seconds; within a second, arrivals are uniform.
///
/// # Errors
/// [`Error::Config`] for `seconds` outside `(0, MAX_SECONDS]` or a scale that is not positive.
pub fn bursty(seconds: f64, scale: f64, seed: u64) -> Result<Trace> {
    check(seconds, scale)?;
    let mut rng = StdRng::seed_from_u64(seed);
    let base = LogNormal::new(220f64.ln(), 0.6).expect("valid log-normal parameters");
    let n = seconds.ceil() as usize;
    let mut rates = vec![0.0; n];
    let mut s = 0;
    while s < n {
        if rng.random::<f64>() < 0.04 {
            let len = rng.random_range(2..=5);
            let peak = rng.random_range(1500.0..4500.0);
            for (i, r) in rates.iter_mut().skip(s).take(len).enumerate() {
                // A burst ramps up to its peak and decays.
                *r = peak * (1.0 - 0.25 * i as f64).max(0.25);
            }
            s += len;
        } else {
            rates[s] = base.sample(&mut rng).min(1200.0);
            s += 1;
        }
    }
    let mut arrivals = Vec::new();
    for (s, &r) in rates.iter().enumerate() {
        let count = poisson_count(&mut rng, r * scale);
        let mut within: Vec<f64> = (0..count)
            .map(|_| s as f64 + rng.random::<f64>())
            .filter(|&t| t < seconds)
            .collect();
        within.sort_by(f64::total_cmp);
        arrivals.extend(within);
    }
    Ok(Trace {
        name: "bursty-generated".into(),
        arrivals,
        rate_per_second: rates,
    })
}

/// A Poisson count with mean `mean` (sum of exponential gaps within one unit of time).
fn poisson_count(rng: &mut StdRng, mean: f64) -> usize {
    if mean <= 0.0 {
        return 0;
    }
    let gap = Exp::new(mean).expect("positive rate");
    let (mut t, mut k) = (gap.sample(rng), 0);
    while t < 1.0 {
        k += 1;
        t += gap.sample(rng);
    }
    k
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_arguments_are_config_errors() {
        assert!(poisson_moving(10.0, 0.0, 1.0, 1).is_err());
        assert!(poisson_moving(f64::NAN, 1.0, 1.0, 1).is_err());
        assert!(bursty(10.0, -1.0, 1).is_err());
        assert!(bursty(1e9, 1.0, 1).is_err());
    }

    #[test]
    fn poisson_trace_follows_its_rate() {
        let t = poisson_moving(200.0, 10.0, 0.1, 7).expect("trace");
        let mean_rate = t.arrivals.len() as f64 / 200.0;
        let expected = t.rate_per_second.iter().sum::<f64>() / 200.0 * 0.1;
        assert!(
            (mean_rate / expected - 1.0).abs() < 0.1,
            "{mean_rate} vs {expected}"
        );
        assert!(t.arrivals.windows(2).all(|w| w[0] <= w[1]));
        assert!(
            t.rate_per_second
                .iter()
                .all(|&r| (200.0..=700.0).contains(&r))
        );
    }

    #[test]
    fn bursty_trace_matches_the_published_statistics() {
        let t = bursty(1800.0, 1.0, 11).expect("trace");
        let (below, peak) = t.stats(300.0);
        assert!(
            (0.5..0.7).contains(&below),
            "share of seconds below 300: {below}"
        );
        assert!(peak > 4000.0, "peak {peak}");
        assert!(t.arrivals.windows(2).all(|w| w[0] <= w[1]));
    }
}
