//! Measured compute times per position, kept by the compute thread and read by everyone:
//! the worker's deadline estimate, the `ServerLoad` pushed to devices, and the metrics.
//!
//! Per position `p` (block `p`, or the head at `L`) the thread keeps two exponentially
//! weighted moving averages of what it ran: seconds per pass, and seconds per request of the
//! batch (pass time over batch size). Values are `f64` bits in atomics: one writer (the
//! compute thread), any number of readers, no lock.

use std::sync::atomic::{AtomicU64, Ordering};

/// Weight of the newest sample in each average.
const ALPHA: f64 = 0.2;

/// Recent compute times per position (see the module docs).
#[derive(Debug)]
pub(crate) struct Timing {
    pass: Vec<AtomicU64>,
    per_request: Vec<AtomicU64>,
}

fn read(a: &AtomicU64) -> f64 {
    f64::from_bits(a.load(Ordering::Relaxed))
}

fn blend(a: &AtomicU64, sample: f64) {
    let old = read(a);
    let new = if old > 0.0 {
        old + ALPHA * (sample - old)
    } else {
        sample
    };
    a.store(new.to_bits(), Ordering::Relaxed);
}

impl Timing {
    /// No measurements yet, for positions `0..=layers`.
    pub(crate) fn new(layers: usize) -> Self {
        let zeros = || (0..=layers).map(|_| AtomicU64::new(0)).collect();
        Self {
            pass: zeros(),
            per_request: zeros(),
        }
    }

    /// Records that position `position` ran a batch of `batch` in `seconds`. Ignores
    /// positions out of range and samples that are not finite and positive.
    pub(crate) fn record(&self, position: usize, batch: usize, seconds: f64) {
        if !(seconds.is_finite() && seconds > 0.0) || batch == 0 {
            return;
        }
        if let (Some(pass), Some(per)) = (self.pass.get(position), self.per_request.get(position)) {
            blend(pass, seconds);
            blend(per, seconds / batch as f64);
        }
    }

    /// A lower bound of the seconds a batch of `batch` needs from position `position` to its
    /// answer: the sum over positions `position..=L` of the recent seconds per request times
    /// `batch` (0 before anything ran). Per-request times fall as batches grow, so this
    /// under-estimates; the worker uses it to answer `DeadlineMissed` only for requests that
    /// certainly cannot make it.
    pub(crate) fn remaining(&self, position: usize, batch: usize) -> f64 {
        let per: f64 = self.per_request.iter().skip(position).map(read).sum();
        per * batch as f64
    }

    /// Recent milliseconds of one pass per position, as run.
    pub(crate) fn position_ms(&self) -> Vec<f32> {
        self.pass.iter().map(|a| (read(a) * 1e3) as f32).collect()
    }

    /// Recent seconds of one pass at `position` (0 before it ran).
    pub(crate) fn pass_seconds(&self, position: usize) -> f64 {
        self.pass.get(position).map_or(0.0, read)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn averages_and_bounds_the_remaining_time() {
        let t = Timing::new(2);
        assert_eq!(t.remaining(0, 1), 0.0);
        t.record(0, 2, 0.02);
        t.record(1, 1, 0.01);
        t.record(2, 4, 0.004);
        // Per request: 0.01, 0.01, 0.001.
        assert!((t.remaining(0, 1) - 0.021).abs() < 1e-12);
        assert!((t.remaining(1, 2) - 0.022).abs() < 1e-12);
        assert!((t.remaining(3, 1)).abs() < 1e-12);
        t.record(1, 1, 0.02);
        assert!((t.pass_seconds(1) - 0.012).abs() < 1e-12);
        assert_eq!(t.position_ms().len(), 3);
        // Garbage samples are ignored.
        t.record(1, 1, f64::NAN);
        t.record(1, 0, 1.0);
        t.record(9, 1, 1.0);
        assert!((t.pass_seconds(1) - 0.012).abs() < 1e-12);
    }
}
