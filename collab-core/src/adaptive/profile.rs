//! A table-backed [`TokenProfile`]: what `cargo xtask exp token-profile` measures and saves as
//! JSON, and what the serving experiment loads (SPEC §4: "profiles kept per task, gamma and
//! batch size").

use serde::{Deserialize, Serialize};

use super::{Gamma, TokenProfile};
use crate::{Error, Result};

/// The stored form of a [`ProfileTable`] (its JSON shape), checked by [`ProfileTable::new`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ProfileTableData {
    /// The profiled gammas, strictly ascending.
    pub gammas: Vec<Gamma>,
    /// The measured batch sizes, strictly ascending, each at least 1.
    pub batch_sizes: Vec<usize>,
    /// `accuracy[task][gamma index]`: accuracy in `[0, 1]`, `None` when the task cannot run at
    /// that gamma.
    pub accuracy: Vec<Vec<Option<f64>>>,
    /// `per_sample_time[task][gamma index][batch size index]`: per-sample time (s, finite,
    /// `>= 0`) at each measured batch size; `None` when not measured.
    pub per_sample_time: Vec<Vec<Option<Vec<f64>>>>,
}

/// Profiled accuracy per (task, gamma) and per-sample time per (task, gamma, batch size).
///
/// Per-sample time at a batch size between two measured sizes is interpolated linearly in the
/// batch size, and held flat below the smallest and above the largest measured size. Built only
/// through [`new`](Self::new) (deserialising runs the same checks), so its tables always have
/// consistent dimensions and finite values.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "ProfileTableData", into = "ProfileTableData")]
pub struct ProfileTable {
    data: ProfileTableData,
}

impl TryFrom<ProfileTableData> for ProfileTable {
    type Error = Error;

    fn try_from(data: ProfileTableData) -> Result<Self> {
        Self::new(data)
    }
}

impl From<ProfileTable> for ProfileTableData {
    fn from(table: ProfileTable) -> Self {
        table.data
    }
}

fn strictly_ascending<T: PartialOrd>(v: &[T]) -> bool {
    v.windows(2).all(|w| w[0] < w[1])
}

impl ProfileTable {
    /// Checks `data` and wraps it.
    ///
    /// # Errors
    /// [`Error::Config`] naming the table and entry when: `gammas` or `batch_sizes` is empty or
    /// not strictly ascending; a batch size is 0; there is no task; `accuracy` and
    /// `per_sample_time` list different numbers of tasks; a task's row does not have one entry
    /// per gamma; a time list does not have one entry per batch size; an accuracy is outside
    /// `[0, 1]` or a time is negative or not finite.
    pub fn new(data: ProfileTableData) -> Result<Self> {
        let bad = |m: String| Err(Error::Config(format!("token profile: {m}")));
        if data.gammas.is_empty() || !strictly_ascending(&data.gammas) {
            return bad(format!(
                "gammas {:?} must be non-empty and strictly ascending",
                data.gammas
            ));
        }
        let sizes = &data.batch_sizes;
        if sizes.is_empty() || !strictly_ascending(sizes) || sizes[0] == 0 {
            return bad(format!(
                "batch sizes {sizes:?} must be non-empty, >= 1 and strictly ascending"
            ));
        }
        let tasks = data.accuracy.len();
        if tasks == 0 || data.per_sample_time.len() != tasks {
            return bad(format!(
                "accuracy lists {tasks} tasks and per_sample_time {} (need the same, at least 1)",
                data.per_sample_time.len()
            ));
        }
        let ng = data.gammas.len();
        for (t, (acc, times)) in data.accuracy.iter().zip(&data.per_sample_time).enumerate() {
            if acc.len() != ng || times.len() != ng {
                return bad(format!(
                    "task {t}: {} accuracies and {} time lists for {ng} gammas",
                    acc.len(),
                    times.len()
                ));
            }
            for (gi, &g) in data.gammas.iter().enumerate() {
                if let Some(a) = acc[gi]
                    && !(0.0..=1.0).contains(&a)
                {
                    return bad(format!(
                        "task {t}, gamma {g}: accuracy {a} is not in [0, 1]"
                    ));
                }
                let Some(ts) = &times[gi] else { continue };
                if ts.len() != sizes.len() {
                    return bad(format!(
                        "task {t}, gamma {g}: {} times for {} batch sizes",
                        ts.len(),
                        sizes.len()
                    ));
                }
                if let Some(x) = ts.iter().find(|x| !x.is_finite() || **x < 0.0) {
                    return bad(format!(
                        "task {t}, gamma {g}: per-sample time {x} is not finite and >= 0"
                    ));
                }
            }
        }
        Ok(Self { data })
    }

    /// A table for `tasks` tasks filled from two functions: `accuracy(task, gamma)` and
    /// `time(task, gamma, batch size)` at every measured size (`None` when a task has no time at
    /// a size, the whole (task, gamma) entry is `None`).
    ///
    /// # Errors
    /// As [`new`](Self::new).
    pub fn from_fn(
        gammas: Vec<Gamma>,
        batch_sizes: Vec<usize>,
        tasks: usize,
        accuracy: impl Fn(usize, Gamma) -> Option<f64>,
        time: impl Fn(usize, Gamma, usize) -> Option<f64>,
    ) -> Result<Self> {
        let acc = (0..tasks)
            .map(|t| gammas.iter().map(|&g| accuracy(t, g)).collect())
            .collect();
        let per_sample_time = (0..tasks)
            .map(|t| {
                gammas
                    .iter()
                    .map(|&g| batch_sizes.iter().map(|&b| time(t, g, b)).collect())
                    .collect()
            })
            .collect();
        Self::new(ProfileTableData {
            gammas,
            batch_sizes,
            accuracy: acc,
            per_sample_time,
        })
    }

    /// The checked tables.
    pub fn data(&self) -> &ProfileTableData {
        &self.data
    }

    /// The number of tasks profiled.
    pub fn tasks(&self) -> usize {
        self.data.accuracy.len()
    }

    /// The measured batch sizes, ascending.
    pub fn batch_sizes(&self) -> &[usize] {
        &self.data.batch_sizes
    }

    /// The position of `gamma` in [`gammas`](TokenProfile::gammas), if profiled.
    pub fn gamma_index(&self, gamma: Gamma) -> Option<usize> {
        self.data.gammas.binary_search(&gamma).ok()
    }
}

impl TokenProfile for ProfileTable {
    fn gammas(&self) -> &[Gamma] {
        &self.data.gammas
    }

    fn accuracy(&self, task: usize, gamma: Gamma) -> Option<f64> {
        let gi = self.gamma_index(gamma)?;
        *self.data.accuracy.get(task)?.get(gi)?
    }

    fn per_sample_time(&self, task: usize, gamma: Gamma, batch: usize) -> Option<f64> {
        let gi = self.gamma_index(gamma)?;
        let times = self.data.per_sample_time.get(task)?.get(gi)?.as_ref()?;
        let sizes = &self.data.batch_sizes;
        // `new` guarantees `times.len() == sizes.len() >= 1`.
        let hi = sizes.partition_point(|&s| s <= batch);
        if hi == 0 {
            return times.first().copied();
        }
        if hi == sizes.len() {
            return times.last().copied();
        }
        let (s0, s1) = (sizes[hi - 1] as f64, sizes[hi] as f64);
        let (t0, t1) = (times[hi - 1], times[hi]);
        Some(t0 + (t1 - t0) * (batch as f64 - s0) / (s1 - s0))
    }
}
