//! Serving by token adaptation (OTAS, SPEC §4): the data a serving loop schedules on and the
//! two policy traits it calls.
//!
//! One Transformer serves every task; a *batch* of queries runs with one `gamma` (prompt tokens
//! added per layer when `gamma > 0`, tokens merged away per layer when `gamma < 0`). The serving
//! loop
//! 1. hands each arriving [`Query`] to a [`BatchFormer`] (adaptive batching, Alg. 1),
//! 2. evicts queries whose deadline has passed ([`BatchFormer::evict_expired`]),
//! 3. asks a [`TokenAllocator`] for a gamma per pending batch ([`Allocation`]; DP, Alg. 2, or the
//!    load-based rule, Alg. 3), predicted with a [`TokenProfile`] (profiled accuracy and
//!    per-sample time per task, gamma and batch size; [`ProfileTable`] is the stored form),
//! 4. takes the first batch the allocation runs ([`Allocation::next`], [`BatchFormer::take`])
//!    and runs it at its gamma.
//!
//! Everything here is pure and synchronous; times are `f64` seconds on the server's clock.
//! A query or batch is *on time* when it finishes strictly before its deadline (SPEC §4:
//! "feasible when previous clock + predicted processing time < batch deadline"), which matches
//! [`BatchFormer::evict_expired`] evicting queries whose deadline is `<= now`.

mod allocation;
mod pass;
mod profile;

use std::fmt::Debug;

use serde::{Deserialize, Serialize};

pub use allocation::deadline_order;
pub use pass::{PassContext, PassTokenPolicy, TokenPlan, TokenPolicyConfig, TokenPolicyContext};
pub use profile::{ProfileTable, ProfileTableData};

/// The token adaptation of one batch: prompt tokens per layer (`> 0`), tokens merged per layer
/// (`< 0`) or the plain model (`0`) (SPEC §4).
pub type Gamma = i32;

/// One query: which task, when it arrived, when its answer is due, and what a correct answer
/// in time is worth (SPEC §4, "Evaluation": query types are (task, latency budget, utility)).
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Query {
    /// The query's id (unique among the queries a server holds).
    pub id: u64,
    /// The task index (selects the prompt repository and the classification head).
    pub task: usize,
    /// Arrival time (s).
    pub arrival: f64,
    /// Absolute deadline (s): arrival + latency budget.
    pub deadline: f64,
    /// Utility of a correct answer delivered before the deadline.
    pub utility: f64,
}

/// A batch of queries that will run with one gamma, in the order they were added (SPEC §4,
/// batching). Its arrival is the earliest arrival and its deadline the earliest deadline of its
/// members; an empty batch has arrival and deadline `+inf`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Batch {
    /// The members, in the order they were added.
    pub queries: Vec<Query>,
}

impl Batch {
    /// A batch holding `queries`, in this order.
    pub fn new(queries: Vec<Query>) -> Self {
        Self { queries }
    }

    /// The earliest arrival of its members (`+inf` when empty).
    pub fn arrival(&self) -> f64 {
        self.queries
            .iter()
            .map(|q| q.arrival)
            .fold(f64::INFINITY, f64::min)
    }

    /// The earliest deadline of its members (`+inf` when empty): the batch's deadline.
    pub fn deadline(&self) -> f64 {
        self.queries
            .iter()
            .map(|q| q.deadline)
            .fold(f64::INFINITY, f64::min)
    }

    /// The number of queries.
    pub fn len(&self) -> usize {
        self.queries.len()
    }

    /// Whether it holds no query.
    pub fn is_empty(&self) -> bool {
        self.queries.is_empty()
    }

    /// The utility of its first query (0 when empty): what Alg. 1 compares a new query with.
    pub fn first_utility(&self) -> f64 {
        self.queries.first().map_or(0.0, |q| q.utility)
    }

    /// The mean utility of its queries (0 when empty): what Alg. 3 compares with kappa.
    pub fn mean_utility(&self) -> f64 {
        if self.queries.is_empty() {
            return 0.0;
        }
        self.queries.iter().map(|q| q.utility).sum::<f64>() / self.queries.len() as f64
    }

    /// `(task, count)` for every task present, by increasing task id.
    pub fn task_counts(&self) -> Vec<(usize, usize)> {
        // Batches hold few tasks: a linear search per query beats sorting the queries.
        let mut out: Vec<(usize, usize)> = Vec::new();
        for q in &self.queries {
            match out.iter_mut().find(|(t, _)| *t == q.task) {
                Some((_, n)) => *n += 1,
                None => out.push((q.task, 1)),
            }
        }
        out.sort_unstable();
        out
    }
}

/// The gamma of `runnable` (ascending) nearest to `gamma`: `gamma` itself if listed, else the
/// largest below it, else the smallest above it; `None` when `runnable` is empty.
pub fn nearest_gamma(runnable: &[Gamma], gamma: Gamma) -> Option<Gamma> {
    runnable
        .iter()
        .rev()
        .find(|&&g| g <= gamma)
        .or_else(|| runnable.iter().find(|&&g| g > gamma))
        .copied()
}

/// Profiled accuracy and per-sample processing time per (task, gamma, batch size), as measured
/// by `cargo xtask exp token-profile` (SPEC §4: "profiles kept per task, gamma and batch size").
///
/// Implementations return `None` for what they do not know; the provided methods combine the
/// per-task answers into per-batch predictions and return `None` as soon as one task of the
/// batch cannot run at the gamma.
pub trait TokenProfile: Debug + Send + Sync {
    /// The gammas this profile knows, strictly ascending (e.g. -20,-15,-10,-5,0,2,4,8).
    fn gammas(&self) -> &[Gamma];

    /// Accuracy in `[0, 1]` of `task` at `gamma`; `None` when that task cannot run at that gamma
    /// (e.g. no prompts trained) or the task or gamma is unknown.
    fn accuracy(&self, task: usize, gamma: Gamma) -> Option<f64>;

    /// Per-sample processing time (s) of `task` at `gamma` in a batch of `batch` queries; `None`
    /// when unknown.
    fn per_sample_time(&self, task: usize, gamma: Gamma, batch: usize) -> Option<f64>;

    /// Predicted processing time (s) of `batch` at `gamma`: the sum over its tasks of
    /// (count x per-sample time at the batch's total size) (SPEC §4). `Some(0.0)` for an empty
    /// batch; `None` if any task of the batch has no accuracy or no time at `gamma`.
    fn batch_time(&self, batch: &Batch, gamma: Gamma) -> Option<f64> {
        let size = batch.len();
        let mut total = 0.0;
        for (task, count) in batch.task_counts() {
            self.accuracy(task, gamma)?;
            total += count as f64 * self.per_sample_time(task, gamma, size)?;
        }
        Some(total)
    }

    /// Expected utility of `batch` at `gamma` if it finishes in time: the sum over its queries
    /// of utility x profiled accuracy (SPEC §4). `None` as for [`batch_time`](Self::batch_time).
    fn expected_utility(&self, batch: &Batch, gamma: Gamma) -> Option<f64> {
        self.batch_time(batch, gamma)?;
        let mut total = 0.0;
        for q in &batch.queries {
            total += q.utility * self.accuracy(q.task, gamma)?;
        }
        Some(total)
    }

    /// Whether every task of `batch` can run at `gamma` (both predictions are `Some`; the
    /// default [`expected_utility`](Self::expected_utility) is `Some` only when
    /// [`batch_time`](Self::batch_time) is).
    fn runnable(&self, batch: &Batch, gamma: Gamma) -> bool {
        self.expected_utility(batch, gamma).is_some() && self.batch_time(batch, gamma).is_some()
    }

    /// The gammas at which `batch` is runnable, ascending.
    fn runnable_gammas(&self, batch: &Batch) -> Vec<Gamma> {
        self.gammas()
            .iter()
            .copied()
            .filter(|&g| self.runnable(batch, g))
            .collect()
    }

    /// The runnable gamma nearest to `gamma` for `batch` ([`nearest_gamma`] of
    /// [`runnable_gammas`](Self::runnable_gammas)): `gamma` itself when runnable, else the
    /// largest runnable gamma below it, else the smallest above it; `None` when the batch is
    /// runnable at no gamma. Used by allocators whose preferred gamma is not runnable (a task
    /// without trained prompts) or not profiled.
    fn nearest_runnable(&self, batch: &Batch, gamma: Gamma) -> Option<Gamma> {
        nearest_gamma(&self.runnable_gammas(batch), gamma)
    }
}

/// What an allocator knows about the load (SPEC §4, token allocation).
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct LoadInfo {
    /// Measured arrival rate q (queries/s), the input of the load-based rule (Alg. 3).
    pub rate: f64,
    /// Seconds since the service started (the "initial stage" of Alg. 2 is its first 2 s).
    pub uptime: f64,
}

/// An allocator's decision for a list of pending batches (SPEC §4, token allocation).
///
/// Batches run one after another from `now` in [`order`](Self::order); `choices`, `start` and
/// `finish` are parallel to `order`. [`verify`](Self::verify) checks that an allocation is
/// consistent with its batches and profile.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Allocation {
    /// Indices into the input slice, sorted by deadline (ties: earlier arrival, then smaller
    /// index); see [`deadline_order`].
    pub order: Vec<usize>,
    /// `Some(gamma)` to run batch `order[k]` at gamma, `None` to skip (evict) it.
    pub choices: Vec<Option<Gamma>>,
    /// Predicted start time of each batch that runs (`None` when skipped).
    pub start: Vec<Option<f64>>,
    /// Predicted finish time of each batch that runs (`None` when skipped).
    pub finish: Vec<Option<f64>>,
    /// The sum of the expected utilities of the batches that run AND finish strictly before
    /// their deadlines in the prediction.
    pub expected_utility: f64,
}

/// Chooses a gamma for each pending batch (SPEC §4, token allocation; Alg. 2 and Alg. 3).
///
/// # Contract
/// The returned [`Allocation`] covers every batch of `batches` exactly once, in
/// [`deadline_order`]; chooses only gammas of `profile.gammas()` at which the batch is
/// [`runnable`](TokenProfile::runnable); predicts start and finish times by running the chosen
/// batches one after another from `now` with [`TokenProfile::batch_time`]; and reports the
/// expected utility of the batches predicted on time ([`Allocation::verify`] checks all of
/// this). It never panics, whatever the inputs (NaN times included).
pub trait TokenAllocator: Debug + Send {
    /// A short name for reports (e.g. `"dp"`, `"load-rule"`, `"fixed(-5)"`).
    fn name(&self) -> String;

    /// Allocates a gamma (or skip) to each of `batches` at time `now`.
    fn allocate(
        &mut self,
        now: f64,
        batches: &[Batch],
        profile: &dyn TokenProfile,
        load: &LoadInfo,
    ) -> Allocation;
}

/// Groups arriving queries into batches (SPEC §4, batching; Alg. 1).
///
/// # Contract
/// Every query added is in exactly one batch until [`take`](Self::take) or
/// [`evict_expired`](Self::evict_expired) returns it; within a batch, queries keep the order
/// they were added in; batches are kept in creation order and are never empty.
pub trait BatchFormer: Debug + Send {
    /// A short name for reports (e.g. `"adaptive"`, `"fixed(8)"`).
    fn name(&self) -> String;

    /// Adds query `q` to a batch (possibly a new one).
    fn add(&mut self, q: Query);

    /// The pending batches, oldest first.
    fn batches(&self) -> &[Batch];

    /// Removes and returns batch `i` (after the server picked it); `None` when out of range.
    fn take(&mut self, i: usize) -> Option<Batch>;

    /// Removes every query whose deadline is `<= now` (the server evicts them) and returns them
    /// in batch order; batches left empty are dropped.
    fn evict_expired(&mut self, now: f64) -> Vec<Query>;
}

#[cfg(test)]
mod tests;
