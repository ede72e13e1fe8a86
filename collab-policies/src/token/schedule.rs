//! Per-layer merge schedules for ToMe (OTAS layer-wise merging, SPEC §4).
//!
//! A [`MergeSchedule`] says how many tokens block `l` merges away. OTAS's gamma < 0 means
//! `|gamma|` tokens per layer on average; instead of merging the same count everywhere, OTAS
//! merges more in shallow layers, where tokens are more alike, and picks the schedule by
//! profiling accuracy ([`MergeSchedule::profiled`]).
//!
//! ToMe can merge at most `(n - protected) / 2` tokens in a block that sees `n` tokens (one
//! side of the bipartite matching, less the protected ones), so a schedule only says what
//! runs once [`MergeSchedule::fitted`] to the model's token count.

use collab_core::{Error, Result};
use serde::{Deserialize, Serialize};

/// How many tokens each block merges away.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MergeSchedule {
    name: String,
    per_layer: Vec<usize>,
}

/// The shape of a schedule chosen for a gamma (see [`MergeSchedule::for_gamma`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ScheduleKind {
    /// The same count in every layer (plain ToMe).
    Constant,
    /// Linearly decreasing from about `2 |gamma|` in the first layer to 0 in the last.
    Linear,
    /// Everything merged in the first `depth` layers, evenly, none after.
    FrontLoaded {
        /// Layers that merge.
        depth: usize,
    },
}

/// Splits `total` over integer `weights` in proportion, rounding by largest remainder (ties:
/// the earlier layer) so that the parts sum to `total` exactly.
fn apportion(total: usize, weights: &[usize]) -> Vec<usize> {
    let sum: usize = weights.iter().sum();
    if sum == 0 {
        return vec![0; weights.len()];
    }
    let mut parts: Vec<usize> = weights.iter().map(|w| total * w / sum).collect();
    let mut order: Vec<usize> = (0..weights.len()).collect();
    order.sort_by_key(|&l| std::cmp::Reverse(total * weights[l] % sum));
    // The remainders sum to a multiple of `sum` below `sum * len`: fewer than `len` left.
    let left = total - parts.iter().sum::<usize>();
    for &l in order.iter().take(left) {
        parts[l] += 1;
    }
    parts
}

impl MergeSchedule {
    /// A schedule from explicit per-layer counts.
    pub fn new(name: impl Into<String>, per_layer: Vec<usize>) -> Self {
        Self {
            name: name.into(),
            per_layer,
        }
    }

    /// `r` tokens in each of `layers` blocks (ToMe's constant schedule).
    pub fn constant(r: usize, layers: usize) -> Self {
        Self::new(format!("constant-r{r}"), vec![r; layers])
    }

    /// Linearly decreasing from about `2r` in the first layer to 0 in the last, with the same
    /// total `r * layers` (largest-remainder rounding, so the sum is exact and the counts never
    /// increase with depth). One layer gets all `r`.
    pub fn linear(r: usize, layers: usize) -> Self {
        let per_layer = if layers <= 1 {
            vec![r; layers]
        } else {
            let w: Vec<usize> = (0..layers).map(|l| layers - 1 - l).collect();
            apportion(r * layers, &w)
        };
        Self::new(format!("linear-r{r}"), per_layer)
    }

    /// `total` merges spread evenly over the first `depth` layers (the remainder going to the
    /// earliest ones), none after. `depth` is clamped to `1..=layers`.
    pub fn front_loaded(total: usize, depth: usize, layers: usize) -> Self {
        let depth = depth.clamp(1, layers.max(1)).min(layers);
        let w: Vec<usize> = (0..layers).map(|l| usize::from(l < depth)).collect();
        Self::new(format!("front{depth}-t{total}"), apportion(total, &w))
    }

    /// Tokens merged in each block.
    pub fn per_layer(&self) -> &[usize] {
        &self.per_layer
    }

    /// A short name for reports (`constant-r8`, `linear-r8`, `front4-t96`).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Tokens merged over all blocks.
    pub fn total(&self) -> usize {
        self.per_layer.iter().sum()
    }

    /// This schedule with every layer capped by what ToMe can merge there on a model with
    /// `tokens` tokens (of which `protected` leading ones never merge): `(n - protected) / 2`
    /// of the running count `n`. The counts of the result are exactly what
    /// [`merge_tokens`](super::tome::merge_tokens) merges; the name is kept.
    pub fn fitted(&self, tokens: usize, protected: usize) -> Self {
        let mut n = tokens;
        let per_layer = self
            .per_layer
            .iter()
            .map(|&r| {
                let m = r.min(n.saturating_sub(protected) / 2);
                n -= m;
                m
            })
            .collect();
        Self::new(self.name.clone(), per_layer)
    }

    /// The token count after each block when run on `tokens` tokens (after fitting).
    pub fn token_counts(&self, tokens: usize, protected: usize) -> Vec<usize> {
        let mut n = tokens;
        self.fitted(tokens, protected)
            .per_layer
            .iter()
            .map(|&m| {
                n -= m;
                n
            })
            .collect()
    }

    /// The schedule for OTAS's `gamma < 0` on a model of `layers` blocks and `tokens` tokens
    /// (`protected` of them never merged): `Constant` is `constant(|gamma|)`, `Linear` is
    /// `linear(|gamma|)`, `FrontLoaded { depth }` spreads the total of the fitted constant
    /// schedule over the first `depth` layers. Always [`fitted`](Self::fitted).
    ///
    /// # Errors
    /// [`Error::InvalidInput`] for `gamma >= 0`, `layers == 0` or a front-loaded depth of 0.
    pub fn for_gamma(
        gamma: i32,
        kind: ScheduleKind,
        layers: usize,
        tokens: usize,
        protected: usize,
    ) -> Result<Self> {
        if gamma >= 0 {
            return Err(Error::InvalidInput(format!(
                "a merge schedule needs gamma < 0 (tokens merged per layer), got {gamma}"
            )));
        }
        if layers == 0 {
            return Err(Error::InvalidInput(
                "a merge schedule needs at least one layer".into(),
            ));
        }
        let r = gamma.unsigned_abs() as usize;
        let s = match kind {
            ScheduleKind::Constant => Self::constant(r, layers),
            ScheduleKind::Linear => Self::linear(r, layers),
            ScheduleKind::FrontLoaded { depth: 0 } => {
                return Err(Error::InvalidInput(
                    "a front-loaded merge schedule needs depth >= 1".into(),
                ));
            }
            ScheduleKind::FrontLoaded { depth } => {
                let total = Self::constant(r, layers).fitted(tokens, protected).total();
                Self::front_loaded(total, depth, layers)
            }
        };
        Ok(s.fitted(tokens, protected))
    }

    /// The layer-wise profiled choice (OTAS, SPEC §4): scores every candidate with `score`
    /// (higher is better, such as profiled accuracy) and returns the best one (ties: the
    /// earlier; a NaN score never wins) with all scores in candidate order.
    ///
    /// # Errors
    /// [`Error::InvalidInput`] if `candidates` is empty; the first error of `score`.
    pub fn profiled(
        candidates: &[MergeSchedule],
        mut score: impl FnMut(&MergeSchedule) -> Result<f64>,
    ) -> Result<(MergeSchedule, Vec<f64>)> {
        let scores = candidates
            .iter()
            .map(&mut score)
            .collect::<Result<Vec<f64>>>()?;
        let mut best: Option<usize> = None;
        for (i, &s) in scores.iter().enumerate() {
            if s.is_nan() {
                continue;
            }
            if best.is_none_or(|b| s > scores[b]) {
                best = Some(i);
            }
        }
        let best = match (best, candidates.is_empty()) {
            (Some(b), _) => b,
            (None, false) => 0,
            (None, true) => {
                return Err(Error::InvalidInput(
                    "no candidate merge schedules to profile".into(),
                ));
            }
        };
        Ok((candidates[best].clone(), scores))
    }
}
