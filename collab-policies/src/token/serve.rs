//! The OTAS serving loop (SPEC §4): queries arrive, a [`BatchFormer`] groups them, a
//! [`TokenAllocator`] picks the next batch and its gamma, a [`BatchExecutor`] runs it, and
//! every query ends in exactly one [`Outcome`].
//!
//! The loop is synchronous and keeps its own clock, in seconds from the first arrival: it
//! advances by the time the executor reports for each batch (measured compute on a real model,
//! or a prediction in tests) and by the measured time of the scheduler itself, and jumps ahead
//! only while there is nothing to run. Queries whose deadline passes while they wait are
//! evicted; a batch that finishes after a query's deadline makes that query late.

use std::time::Instant;

use collab_core::adaptive::{
    Batch, BatchFormer, Gamma, LoadInfo, Query, TokenAllocator, TokenProfile,
};
use collab_core::{Error, Result};

/// How one query ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Outcome {
    /// Answered correctly by its deadline (earns its utility).
    CorrectInTime,
    /// Answered by its deadline, but wrong.
    WrongInTime,
    /// Answered after its deadline.
    Late,
    /// Never run: its deadline passed while it waited (or the allocator skipped it until then).
    Evicted,
}

/// What running one batch produced.
#[derive(Clone, Debug, PartialEq)]
pub struct BatchRun {
    /// Per query of the batch, in order: whether its answer was correct.
    pub correct: Vec<bool>,
    /// Seconds the batch took (measured, including anything the executor had to do first,
    /// such as loading a model variant).
    pub seconds: f64,
}

/// Runs a batch at a gamma: the model side of the serving loop.
pub trait BatchExecutor: std::fmt::Debug {
    /// Runs `batch` at `gamma` with the load the scheduler saw.
    ///
    /// # Errors
    /// Model errors; the loop stops on the first.
    fn run(&mut self, batch: &Batch, gamma: Gamma, load: &LoadInfo) -> Result<BatchRun>;
}

/// One executed batch.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct BatchLog {
    /// Clock when it started.
    pub start: f64,
    /// Queries in it.
    pub size: usize,
    /// The gamma it ran at.
    pub gamma: Gamma,
    /// Seconds it took.
    pub seconds: f64,
    /// Arrival rate (queries/s) measured when it was chosen.
    pub rate: f64,
}

/// Everything one run produced.
#[derive(Clone, Debug, Default)]
pub struct RunLog {
    /// Every query with its outcome (each query exactly once).
    pub outcomes: Vec<(Query, Outcome)>,
    /// Every executed batch, in order.
    pub batches: Vec<BatchLog>,
    /// Waiting time (start of its batch minus arrival) of every query that ran.
    pub waits: Vec<f64>,
    /// Seconds spent in batch forming and allocation.
    pub scheduler_seconds: f64,
}

impl RunLog {
    /// Total utility: the sum of the utilities of queries answered correctly in time.
    pub fn utility(&self) -> f64 {
        self.outcomes
            .iter()
            .filter(|(_, o)| *o == Outcome::CorrectInTime)
            .map(|(q, _)| q.utility)
            .sum()
    }

    /// The share of queries that ended in `outcome` (0 for an empty log).
    pub fn share(&self, outcome: Outcome) -> f64 {
        let n = self.outcomes.len().max(1) as f64;
        self.outcomes.iter().filter(|(_, o)| *o == outcome).count() as f64 / n
    }
}

/// Loop settings.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ServeConfig {
    /// Window (s) of the measured arrival rate handed to the allocator.
    pub rate_window: f64,
}

impl Default for ServeConfig {
    fn default() -> Self {
        Self { rate_window: 1.0 }
    }
}

/// Arrivals per second over the last `window` seconds among `arrived` (sorted by arrival).
fn rate(arrived: &[Query], now: f64, window: f64) -> f64 {
    let from = arrived.partition_point(|q| q.arrival < now - window);
    (arrived.len() - from) as f64 / window
}

/// Serves `queries` (sorted by arrival, ids unique) to the end.
///
/// # Errors
/// [`Error::InvalidInput`] if the queries are not sorted by arrival or a window is not
/// positive; [`Error::Config`] if the executor answers a batch with the wrong number of
/// results; the executor's errors.
pub fn serve(
    queries: &[Query],
    former: &mut dyn BatchFormer,
    allocator: &mut dyn TokenAllocator,
    profile: &dyn TokenProfile,
    executor: &mut dyn BatchExecutor,
    config: &ServeConfig,
) -> Result<RunLog> {
    if let Some(q) = queries
        .iter()
        .find(|q| !q.arrival.is_finite() || !q.deadline.is_finite())
    {
        return Err(Error::InvalidInput(format!(
            "query {} has arrival {} and deadline {}: both must be finite",
            q.id, q.arrival, q.deadline
        )));
    }
    if queries.windows(2).any(|w| w[1].arrival < w[0].arrival) {
        return Err(Error::InvalidInput(
            "queries must be sorted by arrival".into(),
        ));
    }
    if !config.rate_window.is_finite() || config.rate_window <= 0.0 {
        return Err(Error::InvalidInput(format!(
            "rate window {} must be positive",
            config.rate_window
        )));
    }
    let mut log = RunLog::default();
    let (mut clock, mut next) = (queries.first().map_or(0.0, |q| q.arrival), 0usize);
    loop {
        while next < queries.len() && queries[next].arrival <= clock {
            former.add(queries[next]);
            next += 1;
        }
        for q in former.evict_expired(clock) {
            log.outcomes.push((q, Outcome::Evicted));
        }
        if former.batches().is_empty() {
            match queries.get(next) {
                Some(q) => {
                    clock = clock.max(q.arrival);
                    continue;
                }
                None => break,
            }
        }
        let load = LoadInfo {
            rate: rate(&queries[..next], clock, config.rate_window),
            uptime: clock,
        };
        let t0 = Instant::now();
        let alloc = allocator.allocate(clock, former.batches(), profile, &load);
        let sched = t0.elapsed().as_secs_f64();
        log.scheduler_seconds += sched;
        clock += sched;
        let Some((index, gamma)) = alloc.next() else {
            // Nothing can run in time: wait for the next arrival or the next expiry.
            let expiry = former
                .batches()
                .iter()
                .map(Batch::deadline)
                .fold(f64::INFINITY, f64::min);
            let arrival = queries.get(next).map_or(f64::INFINITY, |q| q.arrival);
            // Deadlines are finite, so a pending batch always expires.
            clock = clock.max(expiry.min(arrival));
            continue;
        };
        let Some(batch) = former.take(index) else {
            return Err(Error::Config(format!(
                "allocator `{}` chose batch {index} of {}",
                allocator.name(),
                former.batches().len()
            )));
        };
        let start = clock;
        let run = executor.run(&batch, gamma, &load)?;
        if run.correct.len() != batch.len() {
            return Err(Error::Config(format!(
                "executor answered {} of a batch of {}",
                run.correct.len(),
                batch.len()
            )));
        }
        clock += run.seconds.max(0.0);
        for (q, &correct) in batch.queries.iter().zip(&run.correct) {
            log.waits.push(start - q.arrival);
            let outcome = if clock >= q.deadline {
                Outcome::Late
            } else if correct {
                Outcome::CorrectInTime
            } else {
                Outcome::WrongInTime
            };
            log.outcomes.push((*q, outcome));
        }
        log.batches.push(BatchLog {
            start,
            size: batch.len(),
            gamma,
            seconds: run.seconds,
            rate: load.rate,
        });
    }
    Ok(log)
}
