//! Building, reading and checking an [`Allocation`] (SPEC §4, token allocation).

use super::{Allocation, Batch, Gamma, TokenProfile};
use crate::{Error, Result};

/// Indices of `batches` sorted by deadline, ties broken by earlier arrival and then by smaller
/// index (SPEC §4: "sort batches by deadline"). NaN sorts after every number
/// ([`f64::total_cmp`]), so the order is total and this never panics.
pub fn deadline_order(batches: &[Batch]) -> Vec<usize> {
    let keys: Vec<(f64, f64)> = batches
        .iter()
        .map(|b| (b.deadline(), b.arrival()))
        .collect();
    let mut order: Vec<usize> = (0..batches.len()).collect();
    order.sort_by(|&a, &b| {
        keys[a]
            .0
            .total_cmp(&keys[b].0)
            .then(keys[a].1.total_cmp(&keys[b].1))
            .then(a.cmp(&b))
    });
    order
}

/// Whether `a` and `b` agree up to rounding (relative 1e-9, absolute 1e-9 near zero).
fn close(a: f64, b: f64) -> bool {
    (a - b).abs() <= 1e-9 * a.abs().max(b.abs()).max(1.0)
}

impl Allocation {
    /// The allocation of no batch.
    pub fn empty() -> Self {
        Self {
            order: Vec::new(),
            choices: Vec::new(),
            start: Vec::new(),
            finish: Vec::new(),
            expected_utility: 0.0,
        }
    }

    /// The allocation that runs batch `order[k]` at `choices[k]` (skipping `None`) one after
    /// another from `now`, with start and finish times from [`TokenProfile::batch_time`] and
    /// the expected utility of the batches predicted to finish strictly before their deadlines.
    ///
    /// A choice at which its batch is not [`runnable`](TokenProfile::runnable) becomes a skip;
    /// `choices` shorter than `order` are padded with skips (longer ones are cut).
    pub fn from_choices(
        now: f64,
        batches: &[Batch],
        order: Vec<usize>,
        choices: &[Option<Gamma>],
        profile: &dyn TokenProfile,
    ) -> Self {
        let n = order.len();
        let mut out = Self {
            order,
            choices: vec![None; n],
            start: vec![None; n],
            finish: vec![None; n],
            expected_utility: 0.0,
        };
        let mut clock = now;
        for k in 0..n {
            let (Some(batch), Some(Some(g))) = (batches.get(out.order[k]), choices.get(k)) else {
                continue;
            };
            let (Some(t), Some(u)) = (
                profile.batch_time(batch, *g),
                profile.expected_utility(batch, *g),
            ) else {
                continue;
            };
            out.choices[k] = Some(*g);
            out.start[k] = Some(clock);
            clock += t;
            out.finish[k] = Some(clock);
            if clock < batch.deadline() {
                out.expected_utility += u;
            }
        }
        out
    }

    /// The batch to run first and its gamma: `(index into the input slice, gamma)` of the first
    /// batch in [`order`](Self::order) that is not skipped; `None` when every batch is skipped.
    pub fn next(&self) -> Option<(usize, Gamma)> {
        self.order
            .iter()
            .zip(&self.choices)
            .find_map(|(&i, c)| c.map(|g| (i, g)))
    }

    /// The choice for batch `i` of the input slice (`None`: skipped or not covered).
    pub fn choice_for(&self, i: usize) -> Option<Gamma> {
        let k = self.order.iter().position(|&j| j == i)?;
        self.choices.get(k).copied().flatten()
    }

    /// Input indices of the batches this allocation skips, in [`order`](Self::order).
    pub fn skipped(&self) -> Vec<usize> {
        self.order
            .iter()
            .zip(&self.choices)
            .filter(|(_, c)| c.is_none())
            .map(|(&i, _)| i)
            .collect()
    }

    /// Input indices of the batches that run but are predicted to finish at or after their
    /// deadline (or whose finish time is missing), in [`order`](Self::order).
    pub fn late(&self, batches: &[Batch]) -> Vec<usize> {
        let mut out = Vec::new();
        for (k, &i) in self.order.iter().enumerate() {
            if self.choices.get(k).copied().flatten().is_none() {
                continue;
            }
            let deadline = batches.get(i).map_or(f64::NEG_INFINITY, Batch::deadline);
            match self.finish.get(k).copied().flatten() {
                Some(f) if f < deadline => {}
                _ => out.push(i),
            }
        }
        out
    }

    /// Checks that this allocation is a consistent answer for `batches` at `now` (the
    /// [`TokenAllocator`](super::TokenAllocator) contract):
    /// - `order` is a permutation of `0..batches.len()` in [`deadline_order`];
    /// - `choices`, `start` and `finish` have one entry per batch;
    /// - every chosen gamma is one of `profile.gammas()` and the batch is runnable at it;
    /// - running the chosen batches one after another from `now` with
    ///   [`TokenProfile::batch_time`] gives `start` and `finish` (skipped batches have `None`);
    /// - `expected_utility` is the sum of [`TokenProfile::expected_utility`] over the batches
    ///   predicted to finish strictly before their deadline.
    ///
    /// Times and utilities are compared up to a relative 1e-9.
    ///
    /// # Errors
    /// [`Error::InvalidInput`] naming the first violation found.
    pub fn verify(&self, now: f64, batches: &[Batch], profile: &dyn TokenProfile) -> Result<()> {
        let bad = |m: String| Err(Error::InvalidInput(format!("allocation: {m}")));
        let n = batches.len();
        if self.order != deadline_order(batches) {
            return bad(format!(
                "order {:?} is not the deadline order {:?}",
                self.order,
                deadline_order(batches)
            ));
        }
        for (what, len) in [
            ("choices", self.choices.len()),
            ("start", self.start.len()),
            ("finish", self.finish.len()),
        ] {
            if len != n {
                return bad(format!("{what} has {len} entries for {n} batches"));
            }
        }
        let mut clock = now;
        let mut utility = 0.0;
        for (k, &i) in self.order.iter().enumerate() {
            let batch = &batches[i];
            let Some(g) = self.choices[k] else {
                if self.start[k].is_some() || self.finish[k].is_some() {
                    return bad(format!("skipped batch {i} has a start or finish time"));
                }
                continue;
            };
            if !profile.gammas().contains(&g) {
                return bad(format!(
                    "batch {i}: gamma {g} is not one of {:?}",
                    profile.gammas()
                ));
            }
            let (Some(t), Some(u)) = (
                profile.batch_time(batch, g),
                profile.expected_utility(batch, g),
            ) else {
                return bad(format!("batch {i} is not runnable at gamma {g}"));
            };
            let (Some(s), Some(f)) = (self.start[k], self.finish[k]) else {
                return bad(format!("running batch {i} lacks a start or finish time"));
            };
            if !close(s, clock) || !close(f, clock + t) {
                return bad(format!(
                    "batch {i}: predicted [{s}, {f}], sequential execution gives [{clock}, {}]",
                    clock + t
                ));
            }
            clock += t;
            if clock < batch.deadline() {
                utility += u;
            }
        }
        if !close(self.expected_utility, utility) {
            return bad(format!(
                "expected utility {} but the plan's on-time batches are worth {utility}",
                self.expected_utility
            ));
        }
        Ok(())
    }
}
