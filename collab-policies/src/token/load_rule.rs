//! The load-based gamma rule (OTAS Alg. 3, SPEC §4): map the measured arrival rate to a gamma
//! with a profiled table, then adjust per batch for its deadline and utility.
//!
//! It is the allocator of the initial stage and of short queues in [`DpAllocator`]
//! (Alg. 2), and a baseline of its own.
//!
//! [`DpAllocator`]: super::allocate::DpAllocator

use collab_core::adaptive::{
    Allocation, Batch, Gamma, LoadInfo, TokenAllocator, TokenProfile, deadline_order, nearest_gamma,
};
use collab_core::{Error, Result};
use serde::{Deserialize, Serialize};

/// A profiled map from arrival rate q (queries/s) to gamma: the gamma of the first
/// `(threshold, gamma)` with `q < threshold`, else `otherwise` (SPEC §4, Alg. 3).
///
/// Thresholds are meant to be ascending (see [`validate`](Self::validate)); a NaN rate maps to
/// `otherwise`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RateTable {
    /// `(threshold, gamma)` pairs, ascending thresholds.
    pub thresholds: Vec<(f64, Gamma)>,
    /// The gamma at rates at or above every threshold.
    pub otherwise: Gamma,
}

impl RateTable {
    /// The published table (RTX 4080, ViT-B): q < 280 -> +8; < 320 -> +4; < 350 -> +2;
    /// < 380 -> 0; < 450 -> -5; < 520 -> -10; < 1000 -> -15; else -20 (SPEC §4).
    pub fn published() -> Self {
        Self {
            thresholds: vec![
                (280.0, 8),
                (320.0, 4),
                (350.0, 2),
                (380.0, 0),
                (450.0, -5),
                (520.0, -10),
                (1000.0, -15),
            ],
            otherwise: -20,
        }
    }

    /// The same table with every threshold multiplied by `factor` (to move a table profiled on
    /// one machine to another of `factor` times its throughput).
    ///
    /// # Errors
    /// [`Error::Config`] when `factor` is not finite and positive.
    pub fn scaled(&self, factor: f64) -> Result<Self> {
        if !(factor.is_finite() && factor > 0.0) {
            return Err(Error::Config(format!(
                "rate table: scale factor {factor} must be finite and > 0"
            )));
        }
        Ok(Self {
            thresholds: self
                .thresholds
                .iter()
                .map(|&(t, g)| (t * factor, g))
                .collect(),
            otherwise: self.otherwise,
        })
    }

    /// A table profiled on this machine (what SPEC §4's "profiled table" is on another
    /// machine than the paper's): each gamma but the smallest serves rates below `headroom`
    /// times its best measured throughput for `task` (queries/s, the most over batch sizes
    /// 1-64 of `1 / per_sample_time`), taken from the largest gamma down; a gamma whose
    /// threshold would not exceed a larger gamma's is left out (it would never be chosen: a
    /// larger gamma serves that rate), so the thresholds are strictly ascending and pass
    /// [`validate`](Self::validate); rates above all of them get the smallest gamma.
    ///
    /// # Errors
    /// [`Error::Config`] when `headroom` is not in (0, 1], or no gamma of the profile has a
    /// time for `task`.
    pub fn profiled(profile: &dyn TokenProfile, task: usize, headroom: f64) -> Result<Self> {
        if !(headroom > 0.0 && headroom <= 1.0) {
            return Err(Error::Config(format!(
                "rate table: headroom {headroom} must be in (0, 1]"
            )));
        }
        let best = |g: Gamma| {
            (1..=64)
                .filter_map(|b| profile.per_sample_time(task, g, b))
                .filter(|t| t.is_finite() && *t > 0.0)
                .map(|t| 1.0 / t)
                .fold(None, |m: Option<f64>, x| Some(m.map_or(x, |m| m.max(x))))
        };
        let mut gammas: Vec<Gamma> = profile
            .gammas()
            .iter()
            .copied()
            .filter(|&g| best(g).is_some())
            .collect();
        gammas.sort_unstable();
        let Some((&smallest, rest)) = gammas.split_first() else {
            return Err(Error::Config(format!(
                "rate table: the profile has no time for task {task}"
            )));
        };
        let mut thresholds = Vec::new();
        let mut floor = 0.0f64;
        for &g in rest.iter().rev() {
            let t = headroom * best(g).unwrap_or(0.0);
            // A gamma no faster than a larger one would get the same threshold and never be
            // chosen; leaving it out keeps the thresholds strictly ascending (`validate`).
            if !thresholds.is_empty() && t <= floor {
                continue;
            }
            thresholds.push((t, g));
            floor = t;
        }
        Ok(Self {
            thresholds,
            otherwise: smallest,
        })
    }

    /// The gamma for arrival rate `rate`.
    pub fn gamma_for(&self, rate: f64) -> Gamma {
        self.thresholds
            .iter()
            .find(|&&(t, _)| rate < t)
            .map_or(self.otherwise, |&(_, g)| g)
    }

    /// Checks the thresholds.
    ///
    /// # Errors
    /// [`Error::Config`] when a threshold is NaN or the thresholds are not strictly ascending.
    pub fn validate(&self) -> Result<()> {
        if self.thresholds.iter().any(|(t, _)| t.is_nan())
            || self.thresholds.windows(2).any(|w| w[0].0 >= w[1].0)
        {
            return Err(Error::Config(format!(
                "rate table: thresholds {:?} must be strictly ascending numbers",
                self.thresholds
            )));
        }
        Ok(())
    }
}

/// The load-based rule (OTAS Alg. 3, SPEC §4).
///
/// Batches are visited in deadline order with a running clock starting at `now`. For each:
/// 1. the *mapped* gamma is [`RateTable::gamma_for`] the measured rate, moved to the nearest
///    gamma at which the batch is runnable ([`TokenProfile::nearest_runnable`]: the largest
///    runnable one below, else the smallest above);
/// 2. if the batch cannot finish strictly before its deadline at the mapped gamma, it runs at
///    its smallest runnable gamma (fastest);
/// 3. else if its mean utility exceeds `kappa`, at its largest runnable gamma (most accurate);
/// 4. else at the mapped gamma.
///
/// The clock then advances by the chosen gamma's predicted time. The rule never skips a batch
/// that is runnable at some gamma (it runs batches even when they will be late; the reported
/// expected utility counts only the on-time ones); a batch runnable at no gamma is skipped.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LoadRule {
    table: RateTable,
    kappa: f64,
}

impl LoadRule {
    /// The published utility threshold kappa = 0.8 (SPEC §4).
    pub const PUBLISHED_KAPPA: f64 = 0.8;

    /// A rule with `table` and utility threshold `kappa`.
    ///
    /// # Errors
    /// As [`RateTable::validate`]; [`Error::Config`] when `kappa` is NaN.
    pub fn new(table: RateTable, kappa: f64) -> Result<Self> {
        table.validate()?;
        if kappa.is_nan() {
            return Err(Error::Config("load rule: kappa must be a number".into()));
        }
        Ok(Self { table, kappa })
    }

    /// The published rule: [`RateTable::published`] and kappa = 0.8.
    pub fn published() -> Self {
        Self {
            table: RateTable::published(),
            kappa: Self::PUBLISHED_KAPPA,
        }
    }

    /// Its rate table.
    pub fn table(&self) -> &RateTable {
        &self.table
    }

    /// Its utility threshold kappa.
    pub fn kappa(&self) -> f64 {
        self.kappa
    }

    /// The gamma for `batch` starting at `clock` under arrival rate `rate` (steps 1-4 above);
    /// `None` when the batch is runnable at no gamma.
    pub fn choose(
        &self,
        clock: f64,
        batch: &Batch,
        profile: &dyn TokenProfile,
        rate: f64,
    ) -> Option<Gamma> {
        let runnable = profile.runnable_gammas(batch);
        let (&smallest, &largest) = (runnable.first()?, runnable.last()?);
        let mapped = nearest_gamma(&runnable, self.table.gamma_for(rate))?;
        let fits = profile
            .batch_time(batch, mapped)
            .is_some_and(|t| clock + t < batch.deadline());
        Some(if !fits {
            smallest
        } else if batch.mean_utility() > self.kappa {
            largest
        } else {
            mapped
        })
    }
}

impl TokenAllocator for LoadRule {
    fn name(&self) -> String {
        "load-rule".into()
    }

    fn allocate(
        &mut self,
        now: f64,
        batches: &[Batch],
        profile: &dyn TokenProfile,
        load: &LoadInfo,
    ) -> Allocation {
        let order = deadline_order(batches);
        let mut clock = now;
        let mut choices = Vec::with_capacity(order.len());
        for &i in &order {
            let choice = self.choose(clock, &batches[i], profile, load.rate);
            if let Some(t) = choice.and_then(|g| profile.batch_time(&batches[i], g)) {
                clock += t;
            }
            choices.push(choice);
        }
        Allocation::from_choices(now, batches, order, &choices, profile)
    }
}
