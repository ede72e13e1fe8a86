//! Gamma allocation by dynamic programming (OTAS Alg. 2, SPEC §4, token allocation).
//!
//! The problem: choose a gamma (or skip) per pending batch so as to maximise the total expected
//! utility of the queries answered correctly before their deadlines, running batches one after
//! another. It is NP-hard (weighted interval scheduling reduces to it), so Alg. 2 runs a
//! dynamic programme over (batch in deadline order, choice) that keeps, per choice, only the
//! best state reaching it; for short queues and in the initial stage, where the arrival rate
//! says more than the queue, it hands over to the load-based rule (Alg. 3).

use collab_core::adaptive::{
    Allocation, Batch, Gamma, LoadInfo, TokenAllocator, TokenProfile, deadline_order,
};
use collab_core::{Error, Result};
use serde::{Deserialize, Serialize};

use super::load_rule::LoadRule;

/// When [`DpAllocator`] hands over to the load-based rule (SPEC §4).
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct DpParams {
    /// Use the load-based rule when there are at most `beta` batches.
    pub beta: usize,
    /// Use the load-based rule during the first `initial_stage` seconds of the service.
    pub initial_stage: f64,
}

impl DpParams {
    /// The published values: beta = 5, initial stage = the first 2 s (SPEC §4).
    pub fn published() -> Self {
        Self {
            beta: 5,
            initial_stage: 2.0,
        }
    }
}

impl Default for DpParams {
    fn default() -> Self {
        Self::published()
    }
}

/// OTAS token allocation (Alg. 2, SPEC §4).
///
/// With at most `beta` batches, or while `load.uptime < initial_stage`, it returns the
/// fallback [`LoadRule`]'s allocation. Otherwise it returns [`solve`](Self::solve)'s.
#[derive(Clone, Debug)]
pub struct DpAllocator {
    params: DpParams,
    fallback: LoadRule,
}

/// Position of a DP state: previous row's choice (`None`: the start state before batch 0).
type Back = Option<usize>;

impl DpAllocator {
    /// A DP allocator with `params` and the load-based rule `fallback`.
    ///
    /// # Errors
    /// [`Error::Config`] when `initial_stage` is NaN.
    pub fn new(params: DpParams, fallback: LoadRule) -> Result<Self> {
        if params.initial_stage.is_nan() {
            return Err(Error::Config(
                "dp allocator: initial_stage must be a number".into(),
            ));
        }
        Ok(Self { params, fallback })
    }

    /// The published allocator: [`DpParams::published`] and [`LoadRule::published`].
    pub fn published() -> Self {
        Self {
            params: DpParams::published(),
            fallback: LoadRule::published(),
        }
    }

    /// Its parameters.
    pub fn params(&self) -> &DpParams {
        &self.params
    }

    /// Its fallback rule.
    pub fn fallback(&self) -> &LoadRule {
        &self.fallback
    }

    /// The dynamic programme of Alg. 2, whatever the queue length and uptime.
    ///
    /// Batches in [`deadline_order`] are rows `k`; choices are columns `c`: `0` = skip and
    /// `c >= 1` = `profile.gammas()[c - 1]`. Each state holds the accumulated expected utility
    /// `dp[k][c]`, the finish time `clock[k][c]` and the previous row's choice `back[k][c]`;
    /// the start state before row 0 has utility 0 and clock `now`.
    /// - gamma `g` for batch `k` is feasible after state `s` when the batch is runnable at `g`
    ///   with finite predictions and `clock[s] + batch_time(k, g) < deadline(k)`; it adds
    ///   `expected_utility(k, g)` and advances the clock by `batch_time(k, g)`;
    /// - skip is always feasible, adds 0 and keeps the clock;
    /// - each state takes, among its feasible predecessors, the one with the largest `dp`
    ///   (ties: smaller clock, then smaller choice index); a state without one is unreachable;
    /// - the plan is backtracked from the best state of the last row (largest `dp`, ties:
    ///   smaller clock, then smaller index).
    ///
    /// Every batch the plan runs is therefore predicted to finish strictly before its deadline,
    /// and [`Allocation::expected_utility`] is the best state's `dp`. Time: O(n G^2) comparisons
    /// and n G profile predictions for n batches and G gammas.
    pub fn solve(&self, now: f64, batches: &[Batch], profile: &dyn TokenProfile) -> Allocation {
        let order = deadline_order(batches);
        let gammas = profile.gammas();
        let (n, cols) = (order.len(), gammas.len() + 1);
        // Predicted (time, utility) per (row, gamma), finite ones only.
        let pred: Vec<Option<(f64, f64)>> = order
            .iter()
            .flat_map(|&i| {
                let b = &batches[i];
                gammas.iter().map(move |&g| {
                    let t = profile.batch_time(b, g)?;
                    let u = profile.expected_utility(b, g)?;
                    (t.is_finite() && u.is_finite()).then_some((t, u))
                })
            })
            .collect();
        let mut dp = vec![f64::NEG_INFINITY; n * cols];
        let mut clock = vec![f64::INFINITY; n * cols];
        let mut back: Vec<Back> = vec![None; n * cols];
        let mut reach = vec![false; n * cols];
        for k in 0..n {
            let deadline = batches[order[k]].deadline();
            // Predecessor states: (choice, dp, clock), in choice order.
            let prev: Vec<(Back, f64, f64)> = if k == 0 {
                vec![(None, 0.0, now)]
            } else {
                let row = (k - 1) * cols;
                (0..cols)
                    .filter(|&c| reach[row + c])
                    .map(|c| (Some(c), dp[row + c], clock[row + c]))
                    .collect()
            };
            for c in 0..cols {
                let step = if c == 0 {
                    Some((0.0, 0.0))
                } else {
                    pred[k * (cols - 1) + c - 1]
                };
                let Some((t, u)) = step else { continue };
                let mut best: Option<(Back, f64, f64)> = None;
                for &(b, v, clk) in &prev {
                    let feasible = c == 0 || clk + t < deadline;
                    if !feasible {
                        continue;
                    }
                    // Strictly better only: earlier candidates (smaller index) win ties.
                    let better = best.is_none_or(|(_, bv, bc)| v > bv || (v == bv && clk < bc));
                    if better {
                        best = Some((b, v, clk));
                    }
                }
                if let Some((b, v, clk)) = best {
                    let s = k * cols + c;
                    (dp[s], clock[s], back[s], reach[s]) = (v + u, clk + t, b, true);
                }
            }
        }
        Self::backtrack(now, order, gammas, (&dp, &clock, &back))
    }

    /// Follows the back-pointers from the best state of the last row and fills the allocation.
    fn backtrack(
        now: f64,
        order: Vec<usize>,
        gammas: &[Gamma],
        (dp, clock, back): (&[f64], &[f64], &[Back]),
    ) -> Allocation {
        let (n, cols) = (order.len(), gammas.len() + 1);
        if n == 0 {
            return Allocation::empty();
        }
        let last = (n - 1) * cols;
        // Skip is always reachable, so the last row has a state; smaller index wins ties.
        let mut best = 0;
        for c in 1..cols {
            let (v, clk, bv, bc) = (
                dp[last + c],
                clock[last + c],
                dp[last + best],
                clock[last + best],
            );
            if v > bv || (v == bv && clk < bc) {
                best = c;
            }
        }
        let expected_utility = dp[last + best];
        let mut path = vec![0; n];
        let mut c = best;
        for k in (0..n).rev() {
            path[k] = c;
            c = back[k * cols + c].unwrap_or(0);
        }
        let mut out = Allocation {
            choices: vec![None; n],
            start: vec![None; n],
            finish: vec![None; n],
            expected_utility,
            order,
        };
        let mut prev_clock = now;
        for (k, &c) in path.iter().enumerate() {
            let s = k * cols + c;
            if c != 0 {
                out.choices[k] = Some(gammas[c - 1]);
                out.start[k] = Some(prev_clock);
                out.finish[k] = Some(clock[s]);
            }
            prev_clock = clock[s];
        }
        out
    }
}

impl TokenAllocator for DpAllocator {
    fn name(&self) -> String {
        "dp".into()
    }

    fn allocate(
        &mut self,
        now: f64,
        batches: &[Batch],
        profile: &dyn TokenProfile,
        load: &LoadInfo,
    ) -> Allocation {
        // A NaN uptime counts as the initial stage.
        let settled = load.uptime >= self.params.initial_stage;
        if batches.len() <= self.params.beta || !settled {
            self.fallback.allocate(now, batches, profile, load)
        } else {
            self.solve(now, batches, profile)
        }
    }
}
