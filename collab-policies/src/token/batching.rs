//! Batch formers (SPEC §4, batching): OTAS adaptive batching (Alg. 1) and a fixed-size FIFO
//! baseline.
//!
//! Adaptive batching groups a query with recent queries of similar deadline and utility, so
//! that one gamma suits the whole batch: a batch of urgent or valuable queries is not slowed by
//! relaxed or cheap ones, and the batch's deadline (its earliest member's) stays close to each
//! member's own.

use collab_core::adaptive::{Batch, BatchFormer, Query};
use collab_core::{Error, Result};
use serde::{Deserialize, Serialize};

/// The parameters of adaptive batching (Alg. 1, SPEC §4).
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct BatchingParams {
    /// Stop scanning when a batch's first arrival is more than `delta` seconds older than the
    /// new query (only recent batches take new members).
    pub delta: f64,
    /// The most queries a batch holds (the memory limit).
    pub epsilon: usize,
    /// Skip a batch whose deadline differs from the query's by more than `eta` seconds.
    pub eta: f64,
    /// Skip a batch whose first query's utility differs from the query's by more than `mu`.
    pub mu: f64,
}

impl BatchingParams {
    /// The published values: delta = 0.5 s, epsilon = 64, eta = 0.5 s, mu = 0.8 (SPEC §4).
    pub fn published() -> Self {
        Self {
            delta: 0.5,
            epsilon: 64,
            eta: 0.5,
            mu: 0.8,
        }
    }

    /// Checks the parameters.
    ///
    /// # Errors
    /// [`Error::Config`] when `epsilon` is 0 or `delta`, `eta` or `mu` is negative or NaN.
    pub fn validate(&self) -> Result<()> {
        if self.epsilon == 0 {
            return Err(Error::Config(
                "adaptive batching: epsilon (batch size limit) must be >= 1".into(),
            ));
        }
        for (name, v) in [("delta", self.delta), ("eta", self.eta), ("mu", self.mu)] {
            if v.is_nan() || v < 0.0 {
                return Err(Error::Config(format!(
                    "adaptive batching: {name} = {v} must be >= 0"
                )));
            }
        }
        Ok(())
    }
}

impl Default for BatchingParams {
    fn default() -> Self {
        Self::published()
    }
}

/// Removes the queries with `deadline <= now` from `batches`, drops the batches left empty,
/// and returns the removed queries in batch order.
fn evict(batches: &mut Vec<Batch>, now: f64) -> Vec<Query> {
    let mut out = Vec::new();
    for b in batches.iter_mut() {
        let (gone, keep): (Vec<Query>, Vec<Query>) =
            b.queries.drain(..).partition(|q| q.deadline <= now);
        b.queries = keep;
        out.extend(gone);
    }
    batches.retain(|b| !b.is_empty());
    out
}

/// Adaptive batching (OTAS Alg. 1, SPEC §4).
///
/// Adding query `r` scans the batches from the newest:
/// - STOP (and create a new batch for `r`) at the first batch whose first arrival is more than
///   `delta` older than `r`'s arrival;
/// - SKIP a batch that is full (`epsilon` queries), whose deadline differs from `r`'s by more
///   than `eta`, or whose first query's utility differs from `r`'s by more than `mu`;
/// - otherwise append `r` to it and stop.
///
/// If no batch took `r`, `r` starts a new batch (the newest). A batch's arrival is its first
/// (earliest) arrival, its deadline its earliest deadline ([`Batch`]).
#[derive(Clone, Debug)]
pub struct AdaptiveBatcher {
    params: BatchingParams,
    batches: Vec<Batch>,
}

impl AdaptiveBatcher {
    /// An empty batcher with `params`.
    ///
    /// # Errors
    /// As [`BatchingParams::validate`].
    pub fn new(params: BatchingParams) -> Result<Self> {
        params.validate()?;
        Ok(Self {
            params,
            batches: Vec::new(),
        })
    }

    /// An empty batcher with the published parameters.
    pub fn published() -> Self {
        Self {
            params: BatchingParams::published(),
            batches: Vec::new(),
        }
    }

    /// Its parameters.
    pub fn params(&self) -> &BatchingParams {
        &self.params
    }

    /// The batch (index) Alg. 1 would add `r` to, `None` for a new batch.
    fn choose(&self, r: &Query) -> Option<usize> {
        let p = &self.params;
        for (i, b) in self.batches.iter().enumerate().rev() {
            if r.arrival - b.arrival() > p.delta {
                return None;
            }
            let full = b.len() >= p.epsilon;
            let far_deadline = (b.deadline() - r.deadline).abs() > p.eta;
            let far_utility = (b.first_utility() - r.utility).abs() > p.mu;
            if !(full || far_deadline || far_utility) {
                return Some(i);
            }
        }
        None
    }
}

impl BatchFormer for AdaptiveBatcher {
    fn name(&self) -> String {
        "adaptive".into()
    }

    fn add(&mut self, q: Query) {
        match self.choose(&q) {
            Some(i) => self.batches[i].queries.push(q),
            None => self.batches.push(Batch::new(vec![q])),
        }
    }

    fn batches(&self) -> &[Batch] {
        &self.batches
    }

    fn take(&mut self, i: usize) -> Option<Batch> {
        (i < self.batches.len()).then(|| self.batches.remove(i))
    }

    fn evict_expired(&mut self, now: f64) -> Vec<Query> {
        evict(&mut self.batches, now)
    }
}

/// A fixed-size FIFO batch former (baseline): each query joins the newest batch until it holds
/// `size` queries, then a new batch starts. Ignores deadlines and utilities.
#[derive(Clone, Debug)]
pub struct FixedSizeBatcher {
    size: usize,
    batches: Vec<Batch>,
}

impl FixedSizeBatcher {
    /// An empty former of batches of at most `size` queries.
    ///
    /// # Errors
    /// [`Error::Config`] when `size` is 0.
    pub fn new(size: usize) -> Result<Self> {
        if size == 0 {
            return Err(Error::Config(
                "fixed-size batching: size must be >= 1".into(),
            ));
        }
        Ok(Self {
            size,
            batches: Vec::new(),
        })
    }

    /// The batch size limit.
    pub fn size(&self) -> usize {
        self.size
    }
}

impl BatchFormer for FixedSizeBatcher {
    fn name(&self) -> String {
        format!("fixed({})", self.size)
    }

    fn add(&mut self, q: Query) {
        match self.batches.last_mut() {
            Some(b) if b.len() < self.size => b.queries.push(q),
            _ => self.batches.push(Batch::new(vec![q])),
        }
    }

    fn batches(&self) -> &[Batch] {
        &self.batches
    }

    fn take(&mut self, i: usize) -> Option<Batch> {
        (i < self.batches.len()).then(|| self.batches.remove(i))
    }

    fn evict_expired(&mut self, now: f64) -> Vec<Query> {
        evict(&mut self.batches, now)
    }
}
