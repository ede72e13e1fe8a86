//! The experiment's side of the serving loop (`collab_policies::token::serve`): the query
//! stream of a trace (SPEC §4's query types on the three tasks' test samples) and the executors
//! that run batches FOR REAL on DeiT-Tiny (every scheme) or on the switching baseline's loaded
//! variant.

use std::time::Instant;

use collab_core::adaptive::{Batch, Gamma, LoadInfo, Query};
use collab_policies::token::serve::{BatchExecutor, BatchRun};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::backbone::{Backbone, TaskData};
use super::switch::Switcher;
use collab_bench::traces::Trace;

/// The query types of SPEC §4: (task, latency budget in s, utility).
pub(crate) const QUERY_TYPES: [(usize, f64, f64); 6] = [
    (0, 0.6, 0.3),
    (0, 1.0, 0.01),
    (1, 0.6, 1.0),
    (1, 1.0, 0.2),
    (2, 0.6, 0.3),
    (2, 1.0, 0.01),
];

/// The query stream of a trace: type and test sample of every arrival, drawn from `seed`.
#[derive(Clone, Debug)]
pub(crate) struct Workload {
    pub(crate) queries: Vec<Query>,
    /// Index of each query's sample in its task's test split (by query id).
    pub(crate) samples: Vec<usize>,
}

impl Workload {
    /// Latency budgets are the paper's multiplied by `time_scale`.
    pub(crate) fn new(trace: &Trace, data: &TaskData, time_scale: f64, seed: u64) -> Self {
        let mut rng = StdRng::seed_from_u64(seed);
        let mut queries = Vec::with_capacity(trace.arrivals.len());
        let mut samples = Vec::with_capacity(trace.arrivals.len());
        for (i, &t) in trace.arrivals.iter().enumerate() {
            let (task, budget, utility) = QUERY_TYPES[rng.random_range(0..QUERY_TYPES.len())];
            queries.push(Query {
                id: i as u64,
                task,
                arrival: t,
                deadline: t + budget * time_scale,
                utility,
            });
            samples.push(rng.random_range(0..data.test[task].len()));
        }
        Self { queries, samples }
    }

    fn rows<'d>(&self, data: &'d TaskData, batch: &Batch) -> Vec<(usize, &'d [f32])> {
        batch
            .queries
            .iter()
            .map(|q| {
                let idx = self.samples[q.id as usize];
                (q.task, data.test[q.task].images[idx].as_slice())
            })
            .collect()
    }

    fn label(&self, data: &TaskData, q: &Query) -> usize {
        data.test[q.task].labels[self.samples[q.id as usize]]
    }
}

/// An experiment error as the serving loop's error type.
pub(crate) fn cerr(e: anyhow::Error) -> collab_core::Error {
    collab_core::Error::InvalidInput(format!("{e:#}"))
}

/// Runs batches on the shared DeiT-Tiny backbone at the chosen gamma; the time is measured.
#[derive(Debug)]
pub(crate) struct BackboneExecutor<'a> {
    pub(crate) backbone: &'a Backbone,
    pub(crate) data: &'a TaskData,
    pub(crate) work: &'a Workload,
}

impl BatchExecutor for BackboneExecutor<'_> {
    fn run(&mut self, batch: &Batch, gamma: Gamma, _: &LoadInfo) -> collab_core::Result<BatchRun> {
        let rows = self.work.rows(self.data, batch);
        let t0 = Instant::now();
        let preds = self.backbone.predict(&rows, gamma).map_err(cerr)?;
        let seconds = t0.elapsed().as_secs_f64();
        let correct = batch
            .queries
            .iter()
            .zip(&preds)
            .map(|(q, &p)| p == self.work.label(self.data, q))
            .collect();
        Ok(BatchRun { correct, seconds })
    }
}

/// The model-switching baseline's executor: before each batch it may switch variant (load time
/// measured and charged), then runs the batch on the loaded one (see [`Switcher`]).
#[derive(Debug)]
pub(crate) struct SwitchingExecutor<'a> {
    pub(crate) inner: BackboneExecutor<'a>,
    pub(crate) switcher: &'a mut Switcher,
    /// Seconds spent loading variants.
    pub(crate) load_seconds: f64,
    clock: f64,
}

impl<'a> SwitchingExecutor<'a> {
    pub(crate) fn new(inner: BackboneExecutor<'a>, switcher: &'a mut Switcher) -> Self {
        Self {
            inner,
            switcher,
            load_seconds: 0.0,
            clock: 0.0,
        }
    }
}

impl BatchExecutor for SwitchingExecutor<'_> {
    fn run(
        &mut self,
        batch: &Batch,
        gamma: Gamma,
        load: &LoadInfo,
    ) -> collab_core::Result<BatchRun> {
        self.clock = self.clock.max(load.uptime);
        let loading = self
            .switcher
            .maybe_switch(self.clock, load.rate)
            .map_err(cerr)?;
        self.load_seconds += loading;
        let mut run = if self.switcher.on_large() {
            let rows = self.inner.work.rows(self.inner.data, batch);
            let t0 = Instant::now();
            self.switcher.run_large(&rows).map_err(cerr)?;
            let seconds = t0.elapsed().as_secs_f64();
            let correct = batch
                .queries
                .iter()
                .map(|q| self.switcher.large_correct(q.task))
                .collect();
            BatchRun { correct, seconds }
        } else {
            self.inner.run(batch, gamma, load)?
        };
        run.seconds += loading;
        self.clock += run.seconds;
        Ok(run)
    }
}
