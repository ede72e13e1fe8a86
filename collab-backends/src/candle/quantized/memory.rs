//! Weight-memory accounting of the quantised backend: what the tensors created from host data
//! hold, split into linear-layer weights and everything else.

use std::sync::atomic::{AtomicU64, Ordering};

/// Running totals shared by a backend value and its clones.
#[derive(Debug, Default)]
pub(super) struct Ledger {
    linear_weights: AtomicU64,
    packed_weights: AtomicU64,
    linear_elements: AtomicU64,
    linear_bytes: AtomicU64,
    interleaved_bytes: AtomicU64,
    other_bytes: AtomicU64,
}

impl Ledger {
    /// Records one linear weight of `elements` logical values holding `bytes` (plus
    /// `interleaved` bytes of candle's kernel copy once used).
    pub(super) fn linear(&self, elements: usize, bytes: usize, interleaved: usize, packed: bool) {
        self.linear_weights.fetch_add(1, Ordering::Relaxed);
        self.packed_weights
            .fetch_add(u64::from(packed), Ordering::Relaxed);
        self.linear_elements
            .fetch_add(elements as u64, Ordering::Relaxed);
        self.linear_bytes.fetch_add(bytes as u64, Ordering::Relaxed);
        self.interleaved_bytes
            .fetch_add(interleaved as u64, Ordering::Relaxed);
    }

    /// Records a dense tensor of `bytes` created from host data.
    pub(super) fn other(&self, bytes: usize) {
        self.other_bytes.fetch_add(bytes as u64, Ordering::Relaxed);
    }

    pub(super) fn snapshot(&self) -> WeightMemory {
        WeightMemory {
            linear_weights: self.linear_weights.load(Ordering::Relaxed),
            packed_weights: self.packed_weights.load(Ordering::Relaxed),
            linear_elements: self.linear_elements.load(Ordering::Relaxed),
            linear_bytes: self.linear_bytes.load(Ordering::Relaxed),
            interleaved_bytes: self.interleaved_bytes.load(Ordering::Relaxed),
            other_bytes: self.other_bytes.load(Ordering::Relaxed),
        }
    }

    pub(super) fn reset(&self) {
        for c in [
            &self.linear_weights,
            &self.packed_weights,
            &self.linear_elements,
            &self.linear_bytes,
            &self.interleaved_bytes,
            &self.other_bytes,
        ] {
            c.store(0, Ordering::Relaxed);
        }
    }
}

/// Bytes held by the tensors a backend created from host data (`from_vec`, `zeros`,
/// `linear_weight`) since it was made or last reset. Taken right after loading a model, it is
/// that model's weight memory: `linear_bytes` for its linear-layer weights (packed or dense)
/// and `other_bytes` for everything else (embeddings, norms, biases), all dense `f32`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct WeightMemory {
    /// Linear-layer weights created.
    pub linear_weights: u64,
    /// How many of them were packed (the rest stayed dense: `f32` mode, or an input dim that
    /// is not a multiple of 32).
    pub packed_weights: u64,
    /// Logical values of the linear weights (`out * in`, summed).
    pub linear_elements: u64,
    /// Bytes the linear weights hold (packed blocks, or 4 per value when dense).
    pub linear_bytes: u64,
    /// Bytes of the interleaved copies candle's CPU kernels build beside packed weights at
    /// their first use on this CPU (see
    /// [`PackedWeight::interleaved_copy_bytes`](super::PackedWeight::interleaved_copy_bytes));
    /// not part of `linear_bytes`.
    pub interleaved_bytes: u64,
    /// Bytes of the other dense tensors created from host data.
    pub other_bytes: u64,
}

impl WeightMemory {
    /// `linear_bytes + other_bytes`: the weights as stored.
    pub fn total_bytes(&self) -> u64 {
        self.linear_bytes + self.other_bytes
    }

    /// What the linear weights would hold as dense `f32`.
    pub fn linear_f32_bytes(&self) -> u64 {
        self.linear_elements * 4
    }

    /// Bits per linear-layer weight value as stored.
    pub fn linear_bits_per_weight(&self) -> f64 {
        if self.linear_elements == 0 {
            0.0
        } else {
            self.linear_bytes as f64 * 8.0 / self.linear_elements as f64
        }
    }
}

/// Bytes as megabytes (10^6 bytes), for reports.
pub fn megabytes(bytes: u64) -> f64 {
    bytes as f64 / 1e6
}
