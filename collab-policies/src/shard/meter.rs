//! Precise accounting of the model weights a process holds, and its peak resident set.
//!
//! Every weight buffer the STI executor creates (a shard's bytes read from the file, the f32
//! tensors dequantised from it, resident norms and embedding rows) is registered with a
//! [`WeightMeter`] for as long as it lives, through a [`Held`] guard that releases on drop.
//! The meter's peak is therefore the largest number of weight bytes alive at once, counted
//! exactly rather than sampled. The process-wide peak RSS (`VmHWM`), which also counts code,
//! activations and allocator slack, is read from `/proc` beside it.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

/// Bytes of model weights held now and at peak. Shared through `Arc`; thread-safe.
#[derive(Debug, Default)]
pub struct WeightMeter {
    current: AtomicU64,
    peak: AtomicU64,
}

impl WeightMeter {
    /// A meter at zero.
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    /// Registers `bytes` of weights until the returned guard drops.
    pub fn hold(self: &Arc<Self>, bytes: u64) -> Held {
        let now = self.current.fetch_add(bytes, Ordering::SeqCst) + bytes;
        self.peak.fetch_max(now, Ordering::SeqCst);
        Held {
            meter: Arc::clone(self),
            bytes,
        }
    }

    /// Weight bytes held now.
    pub fn current(&self) -> u64 {
        self.current.load(Ordering::SeqCst)
    }

    /// The most weight bytes held at once since creation or the last [`WeightMeter::reset_peak`].
    pub fn peak(&self) -> u64 {
        self.peak.load(Ordering::SeqCst)
    }

    /// Restarts peak tracking from what is held now.
    pub fn reset_peak(&self) {
        self.peak.store(self.current(), Ordering::SeqCst);
    }
}

/// Weight bytes registered with a [`WeightMeter`]; released when dropped.
#[derive(Debug)]
pub struct Held {
    meter: Arc<WeightMeter>,
    bytes: u64,
}

impl Held {
    /// The bytes this guard holds.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        self.meter.current.fetch_sub(self.bytes, Ordering::SeqCst);
    }
}

/// A field of `/proc/self/status` in bytes (`VmHWM`, `VmRSS`), or `None` off Linux.
fn proc_status_bytes(field: &str) -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with(field))?;
    let kb: u64 = line
        .trim_start_matches(field)
        .trim_start_matches(':')
        .split_whitespace()
        .next()?
        .parse()
        .ok()?;
    Some(kb * 1024)
}

/// The process's peak resident set size (`VmHWM`), if the platform reports it.
pub fn peak_rss_bytes() -> Option<u64> {
    proc_status_bytes("VmHWM")
}

/// The process's resident set size now (`VmRSS`), if the platform reports it.
pub fn current_rss_bytes() -> Option<u64> {
    proc_status_bytes("VmRSS")
}

/// Resets the peak RSS to the current RSS (Linux: writes `5` to `/proc/self/clear_refs`).
/// Returns whether the reset took effect.
pub fn reset_peak_rss() -> bool {
    std::fs::write("/proc/self/clear_refs", "5").is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn meter_counts_exactly_what_is_alive_and_its_peak() {
        let m = WeightMeter::new();
        let a = m.hold(100);
        {
            let _b = m.hold(50);
            assert_eq!((m.current(), m.peak()), (150, 150));
        }
        assert_eq!((m.current(), m.peak()), (100, 150));
        m.reset_peak();
        assert_eq!(m.peak(), 100);
        let v = m.hold(10);
        assert_eq!((m.current(), v.bytes()), (110, 10));
        drop((a, v));
        assert_eq!((m.current(), m.peak()), (0, 110));
    }

    #[test]
    fn meter_is_exact_under_concurrent_holders() {
        let m = WeightMeter::new();
        std::thread::scope(|s| {
            for _ in 0..4 {
                let m = Arc::clone(&m);
                s.spawn(move || {
                    for i in 0..1000 {
                        let _h = m.hold(i % 7);
                    }
                });
            }
        });
        assert_eq!(m.current(), 0);
        assert!(m.peak() <= 4 * 6);
    }

    #[test]
    fn peak_rss_is_reported_and_at_least_the_current_rss() {
        let now = current_rss_bytes();
        let peak = peak_rss_bytes();
        if cfg!(target_os = "linux") {
            let (now, peak) = (now.expect("VmRSS on Linux"), peak.expect("VmHWM on Linux"));
            assert!(peak >= now && now > 0, "peak {peak} now {now}");
        }
    }
}
