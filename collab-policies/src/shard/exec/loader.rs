//! The loader thread: reads a plan's shards from the file in order, at a throttled bandwidth,
//! into a buffer bounded in bytes.
//!
//! Throttling is a device with a fixed IO bandwidth: a shard of `n` bytes occupies the device
//! for `n / rate` seconds, back to back while the loader has room in the buffer, so shard `k`
//! is ready no earlier than `(bytes of shards 1..=k) / rate` after the device last went idle;
//! idle time (the buffer full) is never banked as burst credit. Real reads from the page cache are faster than
//! the flash-like rates we emulate; the pread itself is real and its bytes are counted by the
//! [`ShardFile`].

use std::sync::mpsc::Sender;
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::time::{Duration, Instant};

use collab_core::Result;

use super::super::file::ShardFile;
use super::super::meter::{Held, WeightMeter};
use super::super::{Fidelity, ShardKey};

/// A buffer bounded in bytes, shared by the loader (which acquires) and compute (which
/// releases when a layer is done). Closing it wakes and stops the loader.
#[derive(Debug)]
pub(crate) struct BufferGate {
    state: Mutex<(u64, bool)>,
    cv: Condvar,
    capacity: u64,
}

impl BufferGate {
    pub(crate) fn new(capacity: u64) -> Self {
        Self {
            state: Mutex::new((0, false)),
            cv: Condvar::new(),
            capacity,
        }
    }

    /// Waits until `bytes` fit (an empty buffer always takes one shard, however large) and
    /// takes them: `Some(waited)`, saying whether it had to wait; `None` once the gate is
    /// closed.
    pub(crate) fn acquire(&self, bytes: u64) -> Option<bool> {
        let mut s = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        let mut waited = false;
        while !s.1 && s.0 > 0 && s.0 + bytes > self.capacity {
            waited = true;
            s = self.cv.wait(s).unwrap_or_else(PoisonError::into_inner);
        }
        if s.1 {
            return None;
        }
        s.0 += bytes;
        Some(waited)
    }

    pub(crate) fn release(&self, bytes: u64) {
        let mut s = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        s.0 = s.0.saturating_sub(bytes);
        self.cv.notify_all();
    }

    pub(crate) fn close(&self) {
        let mut s = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        s.1 = true;
        self.cv.notify_all();
    }
}

/// One shard read by the loader.
#[derive(Debug)]
pub(crate) struct Loaded {
    pub(crate) key: ShardKey,
    pub(crate) bytes: Vec<u8>,
    /// Seconds after the run's start when the read (and its throttle) finished.
    pub(crate) at_s: f64,
    pub(crate) _held: Held,
}

/// What the loader needs.
#[derive(Debug)]
pub(crate) struct LoaderJob<'a> {
    pub(crate) file: &'a ShardFile,
    pub(crate) order: Vec<(ShardKey, Fidelity)>,
    pub(crate) io_bytes_per_s: Option<f64>,
    pub(crate) gate: &'a BufferGate,
    pub(crate) meter: &'a Arc<WeightMeter>,
    pub(crate) start: Instant,
}

/// Reads every shard of `job.order` and sends it; stops at the first error (sent too) or when
/// the receiver or the gate closes.
pub(crate) fn run_loader(job: LoaderJob<'_>, tx: Sender<Result<Loaded>>) {
    let mut device_free = job.start;
    for (key, fidelity) in job.order {
        let len = match job.file.shard_len(key, fidelity) {
            Ok(len) => len,
            Err(e) => {
                let _ = tx.send(Err(e));
                return;
            }
        };
        let Some(waited) = job.gate.acquire(len) else {
            return;
        };
        let held = job.meter.hold(len);
        // The emulated flash is busy back to back while the loader has work: a late wake-up
        // of this thread (the compute threads hold both cores) is caught up, not charged as
        // IO time. Time spent waiting for buffer room is idle flash time, never banked.
        let begin = if waited {
            Instant::now().max(device_free)
        } else {
            device_free
        };
        let bytes = match job.file.read_shard(key, fidelity) {
            Ok(b) => b,
            Err(e) => {
                let _ = tx.send(Err(e));
                return;
            }
        };
        if let Some(rate) = job.io_bytes_per_s {
            device_free = begin + Duration::from_secs_f64(len as f64 / rate);
            let now = Instant::now();
            if device_free > now {
                std::thread::sleep(device_free - now);
            }
        }
        let loaded = Loaded {
            key,
            bytes,
            at_s: job.start.elapsed().as_secs_f64(),
            _held: held,
        };
        if tx.send(Ok(loaded)).is_err() {
            return;
        }
    }
}
