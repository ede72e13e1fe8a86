//! Serving warmed models (PRODIGY, SPEC §5): the offline table that names, per serving merging
//! number, the best model a task has ([`WarmedRepository`]); the profile a serving loop plans
//! with when each merging number runs its best model ([`WarmedProfile`], a [`TokenProfile`]);
//! and the reduction scheduler ([`ReductionScheduler`], a [`TokenAllocator`]): at run time, the
//! smallest reduction whose profiled throughput exceeds the measured load.
//!
//! Merging numbers map to gammas as `gamma = -r` (OTAS's convention, SPEC §4: `gamma < 0`
//! merges `|gamma|` tokens per block), so the scheduler plugs into the OTAS serving loop
//! (`crate::token::serve`) beside the OTAS allocators.
//!
//! ```
//! use collab_core::adaptive::{Batch, ProfileTable, Query, TokenProfile};
//! use collab_policies::prodigy::serving::{
//!     ModelSource, ReductionScheduler, WarmedProfile, WarmedRepository,
//! };
//!
//! // Measured per-sample times at r = 0, 10, 20 (here made up: 10, 7.5 and 5 ms).
//! let times = ProfileTable::from_fn(vec![-20, -10, 0], vec![1, 8], 1, |_, _| Some(0.8),
//!     |_, g, _| Some(0.010 + 0.00025 * f64::from(g)))?;
//! // Profiled accuracies: the task model falls with merging, the model warmed at 20 holds.
//! let table = WarmedRepository::from_profiled("digits", &[0, 10, 20], &[
//!     (ModelSource::Unwarmed, vec![0.90, 0.80, 0.50]),
//!     (ModelSource::Warmed { r: 20 }, vec![0.88, 0.87, 0.85]),
//! ])?;
//! let profile = WarmedProfile::new(times, vec![Some(table)])?;
//! assert_eq!(profile.model_at(0, -20).map(|row| row.source), Some(ModelSource::Warmed { r: 20 }));
//!
//! let waiting = vec![Batch::new(vec![Query {
//!     id: 0, task: 0, arrival: 0.0, deadline: 0.3, utility: 1.0,
//! }])];
//! let scheduler = ReductionScheduler::new(0.9)?;
//! // 100 queries/s: plain runs (100/s, 90 with the headroom) fall short; r = 10 (133/s) keeps up.
//! assert_eq!(scheduler.gamma_for(&profile, &waiting, 100.0), Some(-10));
//! # Ok::<(), collab_core::Error>(())
//! ```

use std::fmt;
use std::path::{Path, PathBuf};

use collab_core::adaptive::{
    Allocation, Batch, Gamma, LoadInfo, ProfileTable, TokenAllocator, TokenProfile, deadline_order,
    nearest_gamma,
};
use collab_core::{Error, Result};
use serde::{Deserialize, Serialize};

/// Where a served model comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum ModelSource {
    /// The task model, fine-tuned without merging ("Unwarmed").
    Unwarmed,
    /// Warmed up: fine-tuned with ToMe merging `r` tokens per block in every forward pass.
    Warmed {
        /// The merging number it was fine-tuned at.
        r: usize,
    },
    /// The ensemble of the warmed models for serving number `r` (Alg. 5).
    Ensemble {
        /// The serving number its weights were chosen for.
        r: usize,
    },
}

impl ModelSource {
    /// The checkpoint's file name in a repository folder: `task.safetensors`,
    /// `r<r>.safetensors` or `ensemble<r>.safetensors`.
    pub fn file_name(&self) -> String {
        match self {
            ModelSource::Unwarmed => "task.safetensors".into(),
            ModelSource::Warmed { r } => format!("r{r}.safetensors"),
            ModelSource::Ensemble { r } => format!("ensemble{r}.safetensors"),
        }
    }
}

impl fmt::Display for ModelSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ModelSource::Unwarmed => write!(f, "unwarmed"),
            ModelSource::Warmed { r } => write!(f, "warmed@{r}"),
            ModelSource::Ensemble { r } => write!(f, "ensemble@{r}"),
        }
    }
}

/// The model a task serves at one merging number, with its profiled accuracy there.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct ModelRow {
    /// The serving merging number (tokens merged per block).
    pub r: usize,
    /// The model it runs.
    pub source: ModelSource,
    /// Its accuracy at `r` on the profile images, in `[0, 1]`.
    pub accuracy: f64,
}

/// The largest repository file [`WarmedRepository::load`] reads.
pub const MAX_REPOSITORY_BYTES: u64 = 1 << 20;

/// The offline table of one task (SPEC §5, reduction scheduler): per serving merging number,
/// the best of its models (the task model, the warmed ones, the kept ensembles) by profiled
/// accuracy. Rows are strictly ascending in `r`; the checkpoints live in one folder under
/// [`ModelSource::file_name`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct WarmedRepository {
    /// The task's name.
    pub task: String,
    /// One row per serving merging number, strictly ascending in `r`.
    pub rows: Vec<ModelRow>,
}

impl WarmedRepository {
    /// The table from every model's profiled accuracy: `profiled[m] = (source, accuracy at
    /// each of rs)`. For each `r`, the model with the highest accuracy serves it; ties go to
    /// the model listed first (list the cheapest first: the task model, then warmed models,
    /// then ensembles).
    ///
    /// # Errors
    /// [`Error::InvalidInput`] for no models, an accuracy list whose length differs from
    /// `rs`, or what [`validate`](Self::validate) refuses.
    pub fn from_profiled(
        task: &str,
        rs: &[usize],
        profiled: &[(ModelSource, Vec<f64>)],
    ) -> Result<Self> {
        if profiled.is_empty() || profiled.iter().any(|(_, a)| a.len() != rs.len()) {
            return Err(Error::InvalidInput(format!(
                "a repository of {} models needs {} accuracies each",
                profiled.len(),
                rs.len()
            )));
        }
        let rows = rs
            .iter()
            .enumerate()
            .map(|(i, &r)| {
                let (mut source, mut accuracy) = (profiled[0].0, profiled[0].1[i]);
                for (s, a) in &profiled[1..] {
                    if a[i] > accuracy {
                        (source, accuracy) = (*s, a[i]);
                    }
                }
                ModelRow {
                    r,
                    source,
                    accuracy,
                }
            })
            .collect();
        let repo = Self {
            task: task.to_string(),
            rows,
        };
        repo.validate()?;
        Ok(repo)
    }

    /// Checks the table.
    ///
    /// # Errors
    /// [`Error::InvalidInput`] for no rows, rows not strictly ascending in `r`, or an
    /// accuracy outside `[0, 1]`.
    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(Error::InvalidInput(format!("warmed repository: {m}")));
        if self.rows.is_empty() {
            return bad("no rows".into());
        }
        if self.rows.windows(2).any(|w| w[0].r >= w[1].r) {
            return bad("rows must be strictly ascending in r".into());
        }
        if let Some(row) = self
            .rows
            .iter()
            .find(|row| !(0.0..=1.0).contains(&row.accuracy))
        {
            return bad(format!("accuracy {} at r = {}", row.accuracy, row.r));
        }
        Ok(())
    }

    /// The row of serving merging number `r`, if the table has it.
    pub fn best(&self, r: usize) -> Option<&ModelRow> {
        self.rows.iter().find(|row| row.r == r)
    }

    /// The distinct models the table serves, in order.
    pub fn sources(&self) -> Vec<ModelSource> {
        let mut s: Vec<ModelSource> = self.rows.iter().map(|row| row.source).collect();
        s.sort_unstable();
        s.dedup();
        s
    }

    /// The checkpoint of `source` in the repository folder `dir`.
    pub fn path_of(dir: &Path, source: ModelSource) -> PathBuf {
        dir.join(source.file_name())
    }

    /// Writes the table as JSON.
    ///
    /// # Errors
    /// [`Error::Io`] when the file cannot be written.
    pub fn save(&self, path: &Path) -> Result<()> {
        collab_core::json::save(self, path)
    }

    /// Reads and validates a table [`save`](Self::save) wrote; a file over
    /// [`MAX_REPOSITORY_BYTES`] is refused before it is read.
    ///
    /// # Errors
    /// [`Error::Io`] when it cannot be read; [`Error::InvalidInput`] when it is too large or
    /// does not [`validate`](Self::validate); [`Error::BadFile`] when it is not a table.
    pub fn load(path: &Path) -> Result<Self> {
        use std::io::Read;
        let file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
        let mut bytes = Vec::new();
        file.take(MAX_REPOSITORY_BYTES + 1)
            .read_to_end(&mut bytes)
            .map_err(|e| Error::io(path, e))?;
        if bytes.len() as u64 > MAX_REPOSITORY_BYTES {
            return Err(Error::InvalidInput(format!(
                "warmed repository {}: over {MAX_REPOSITORY_BYTES} bytes, at most \
                 {MAX_REPOSITORY_BYTES}",
                path.display()
            )));
        }
        let repo: Self = serde_json::from_slice(&bytes).map_err(|e| Error::BadFile {
            path: path.to_path_buf(),
            message: e.to_string(),
        })?;
        repo.validate()?;
        Ok(repo)
    }
}

/// What a serving loop plans with when each merging number runs its task's best model: the
/// times of a constant-merging profile (`gamma = -r`; gammas > 0 are left out) and, per task,
/// the repository's profiled accuracy at each of its numbers. A task without a repository keeps
/// the profile's accuracy (it serves its one model at every number); a task with one runs only
/// at numbers its table has.
#[derive(Clone, Debug)]
pub struct WarmedProfile {
    times: ProfileTable,
    gammas: Vec<Gamma>,
    repositories: Vec<Option<WarmedRepository>>,
}

impl WarmedProfile {
    /// The profile of `times` with `repositories[task]` (missing entries: no repository).
    ///
    /// # Errors
    /// [`Error::InvalidInput`] when `times` has no gamma <= 0, or a repository does not
    /// validate.
    pub fn new(times: ProfileTable, repositories: Vec<Option<WarmedRepository>>) -> Result<Self> {
        let gammas: Vec<Gamma> = times.gammas().iter().copied().filter(|&g| g <= 0).collect();
        if gammas.is_empty() {
            return Err(Error::InvalidInput(
                "a warmed profile needs times at a gamma <= 0".into(),
            ));
        }
        for r in repositories.iter().flatten() {
            r.validate()?;
        }
        Ok(Self {
            times,
            gammas,
            repositories,
        })
    }

    /// The model `task` runs at `gamma`: its repository's row at `-gamma`; `None` for a task
    /// without a repository (it runs its one model) or a number its table lacks.
    pub fn model_at(&self, task: usize, gamma: Gamma) -> Option<&ModelRow> {
        let r = usize::try_from(gamma.checked_neg()?).ok()?;
        self.repositories.get(task)?.as_ref()?.best(r)
    }

    /// The repository of `task`, if it has one.
    pub fn repository(&self, task: usize) -> Option<&WarmedRepository> {
        self.repositories.get(task)?.as_ref()
    }
}

impl TokenProfile for WarmedProfile {
    fn gammas(&self) -> &[Gamma] {
        &self.gammas
    }

    fn accuracy(&self, task: usize, gamma: Gamma) -> Option<f64> {
        if gamma > 0 {
            return None;
        }
        match self.repositories.get(task).and_then(Option::as_ref) {
            Some(_) => {
                // Runnable only where the profile also has a time.
                self.times.accuracy(task, gamma)?;
                self.model_at(task, gamma).map(|row| row.accuracy)
            }
            None => self.times.accuracy(task, gamma),
        }
    }

    fn per_sample_time(&self, task: usize, gamma: Gamma, batch: usize) -> Option<f64> {
        (gamma <= 0)
            .then(|| self.times.per_sample_time(task, gamma, batch))
            .flatten()
    }

    /// Each task runs its own model, so a batch runs as one pass per task: the sum over its
    /// tasks of (count x per-sample time at that count).
    fn batch_time(&self, batch: &Batch, gamma: Gamma) -> Option<f64> {
        let mut total = 0.0;
        for (task, count) in batch.task_counts() {
            self.accuracy(task, gamma)?;
            total += count as f64 * self.per_sample_time(task, gamma, count)?;
        }
        Some(total)
    }
}

/// The reduction scheduler (PRODIGY, SPEC §5): each allocation picks, from the measured
/// arrival rate, the smallest reduction (the largest gamma <= 0) whose profiled throughput,
/// times `headroom`, exceeds the rate, and the one of highest throughput when none does;
/// every batch then runs at that gamma, or the nearest one it is runnable at
/// ([`nearest_gamma`]).
///
/// A gamma's throughput is that of the batches waiting now that can run at it: their queries
/// over the sum of their predicted times ([`TokenProfile::batch_time`]), so it counts the batch
/// sizes the server actually runs (a profile's best throughput at batch 64 is out of reach
/// when queries arrive a few at a time). With nothing waiting it plans nothing. It never skips
/// a runnable batch, and runs batches even when they will be late (the reported expected
/// utility counts the on-time ones), like the load-based rule of OTAS (Alg. 3) without its
/// per-batch adjustments.
#[derive(Clone, Debug, PartialEq)]
pub struct ReductionScheduler {
    headroom: f64,
}

impl ReductionScheduler {
    /// A scheduler that loads each gamma up to `headroom` times its profiled throughput.
    ///
    /// # Errors
    /// [`Error::Config`] when `headroom` is not in (0, 1].
    pub fn new(headroom: f64) -> Result<Self> {
        if !(headroom > 0.0 && headroom <= 1.0) {
            return Err(Error::Config(format!(
                "reduction scheduler: headroom {headroom} must be in (0, 1]"
            )));
        }
        Ok(Self { headroom })
    }

    /// Its headroom.
    pub fn headroom(&self) -> f64 {
        self.headroom
    }

    /// The throughput (queries/s) of running `batches` at `gamma`: the queries of those that
    /// can run at `gamma` over their predicted times; `None` when none can, or the times are
    /// not positive and finite.
    pub fn throughput(profile: &dyn TokenProfile, batches: &[Batch], gamma: Gamma) -> Option<f64> {
        let (mut queries, mut seconds) = (0usize, 0.0f64);
        for b in batches.iter().filter(|b| profile.runnable(b, gamma)) {
            queries += b.len();
            seconds += profile.batch_time(b, gamma)?;
        }
        (queries > 0 && seconds.is_finite() && seconds > 0.0).then(|| queries as f64 / seconds)
    }

    /// The gamma for arrival rate `rate` with `batches` waiting: the largest gamma <= 0 of
    /// `profile` whose [`throughput`](Self::throughput) times the headroom exceeds `rate`;
    /// else the one of highest throughput (ties: the larger reduction). `None` when no gamma
    /// <= 0 runs any of them.
    pub fn gamma_for(
        &self,
        profile: &dyn TokenProfile,
        batches: &[Batch],
        rate: f64,
    ) -> Option<Gamma> {
        let options: Vec<(Gamma, f64)> = profile
            .gammas()
            .iter()
            .copied()
            .filter(|&g| g <= 0)
            .filter_map(|g| Some((g, Self::throughput(profile, batches, g)?)))
            .collect();
        if let Some(&(g, _)) = options
            .iter()
            .rev()
            .find(|&&(_, c)| self.headroom * c > rate)
        {
            return Some(g);
        }
        options
            .iter()
            .fold(None, |best: Option<(Gamma, f64)>, &(g, c)| match best {
                Some((_, bc)) if bc >= c => best,
                _ => Some((g, c)),
            })
            .map(|(g, _)| g)
    }
}

impl TokenAllocator for ReductionScheduler {
    fn name(&self) -> String {
        "prodigy-scheduler".into()
    }

    fn allocate(
        &mut self,
        now: f64,
        batches: &[Batch],
        profile: &dyn TokenProfile,
        load: &LoadInfo,
    ) -> Allocation {
        let order = deadline_order(batches);
        let runnable = |b: &Batch| -> Vec<Gamma> {
            profile
                .runnable_gammas(b)
                .into_iter()
                .filter(|&g| g <= 0)
                .collect()
        };
        let target = self.gamma_for(profile, batches, load.rate).unwrap_or(0);
        let choices: Vec<Option<Gamma>> = order
            .iter()
            .map(|&i| nearest_gamma(&runnable(&batches[i]), target))
            .collect();
        Allocation::from_choices(now, batches, order, &choices, profile)
    }
}
