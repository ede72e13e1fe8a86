//! The elastic pipeline planner (SPEC §3 (b); STI, Guo et al., MobiCom 2023): a uniform base
//! bit width comes first, then greedy upgrades of the most important shards.
//!
//! 1. [`best_uniform`]: for every width `n = 0..=heads` (the `n` most important shards of
//!    each layer at that fidelity) and every fidelity, the closed-form check of
//!    [`feasibility`](super::feasibility); the feasible `(n, f)` of highest summed importance
//!    is the base.
//! 2. [`greedy_upgrades`]: repeatedly the upgrade of highest importance gain per extra byte
//!    (ties: higher gain, then lower shard) is applied if the plan stays feasible, and dropped
//!    otherwise, until none is left.
//!
//! One extension of STI's "next higher fidelity" upgrade: a shard's candidate is the move to
//! *any* higher fidelity (from "left out" to any fidelity for an unchosen shard) with the best
//! gain per extra byte. Measured importance is noisy (SPEC §3 (a)): 2-bit shards can be worth
//! less than nothing and a step up can lose a little, and a strictly next-step greedy would
//! then never reach the 4-bit version that is worth the most. When the values are concave in
//! bytes the best move is the next step, as in the paper. A move that fails the check is
//! dropped for that shard and its next best move is offered instead. A move with gain `<= 0`
//! is never made, so the result is never worse than the uniform base.

use std::cmp::Ordering;
use std::collections::BinaryHeap;

use super::feasibility::{Checker, Evaluation, Selection};
use super::{FIDELITIES, Fidelity, Plan, PlanInput, ShardKey};
use collab_core::{Error, Result};

/// Plans the sub-model of highest summed importance that meets `input`'s latency target and
/// memory budget (SPEC §3 (b), (c); STI).
///
/// For every `Ok(plan)`: `plan.predicted_latency_s <= target_s`, `plan.peak_bytes <=
/// memory_budget`, the accumulated IO budget holds (so the executor's
/// [`simulate`](super::simulate) never stalls past the planned layer starts), and
/// `plan.importance` is at least that of the best feasible uniform `(n, f)` sub-model.
///
/// # Errors
/// Those of [`PlanInput::validate`], and [`Error::Config`] when the target is below the
/// fixed compute time (embedding, every layer's shard-independent part and the head) that
/// even a plan with no shard takes.
pub fn plan(input: &PlanInput) -> Result<Plan> {
    input.validate()?;
    let mut checker = Checker::new(input);
    let Some(base) = best_uniform(&mut checker) else {
        let c = &input.compute;
        return Err(Error::Config(format!(
            "latency target {} s is below the fixed compute time {} s (embedding {} s + {} \
             layers x {} s + head {} s) that a plan with no shard takes",
            input.target_s,
            input.fixed_latency_s(),
            c.embed_s,
            input.geometry.layers,
            c.per_layer_s,
            c.head_s
        )));
    };
    let mut sel = base.selection;
    greedy_upgrades(&mut checker, &mut sel);
    let eval = checker.evaluate(&sel);
    Ok(to_plan(input, &sel, &eval))
}

/// The best uniform base of [`best_uniform`].
#[derive(Clone, Debug, PartialEq)]
pub struct UniformBase {
    /// `n`: shards per layer.
    pub per_layer: usize,
    /// Their fidelity (`None` when `n = 0`).
    pub fidelity: Option<Fidelity>,
    /// Summed importance.
    pub importance: f64,
    /// The selection (see [`Selection`]).
    pub selection: Vec<Option<u8>>,
}

/// The feasible uniform sub-model (the `n` most important shards of every layer by their
/// importance at `f`, ties to the lower shard) of highest summed importance over every
/// `n = 0..=heads` and every fidelity `f` (ties: the first in that order); `None` when not
/// even the empty sub-model is feasible.
pub fn best_uniform(checker: &mut Checker) -> Option<UniformBase> {
    let input = checker.input();
    let (layers, heads) = (input.geometry.layers, input.geometry.heads);
    let empty = vec![None; layers * heads];
    if !checker.evaluate(&empty).feasible(input) {
        return None;
    }
    let mut best = UniformBase {
        per_layer: 0,
        fidelity: None,
        importance: 0.0,
        selection: empty,
    };
    let mut sel = Vec::with_capacity(layers * heads);
    for (fi, &f) in FIDELITIES.iter().enumerate() {
        let fi = fi as u8;
        // Each layer's shards, most important at f first.
        let order: Vec<Vec<usize>> = (0..layers)
            .map(|l| {
                let mut o: Vec<usize> = (0..heads).collect();
                o.sort_by(|&a, &b| {
                    let (va, vb) = (
                        value(input, l * heads + a, fi),
                        value(input, l * heads + b, fi),
                    );
                    vb.total_cmp(&va).then(a.cmp(&b))
                });
                o
            })
            .collect();
        for n in 1..=heads {
            sel.clear();
            sel.resize(layers * heads, None);
            for (l, o) in order.iter().enumerate() {
                for &s in &o[..n] {
                    sel[l * heads + s] = Some(fi);
                }
            }
            if !checker.evaluate(&sel).feasible(input) {
                continue;
            }
            let importance = summed_importance(input, &sel);
            if importance > best.importance {
                best = UniformBase {
                    per_layer: n,
                    fidelity: Some(f),
                    importance,
                    selection: sel.clone(),
                };
            }
        }
    }
    Some(best)
}

/// Applies greedy upgrades to the feasible `sel` in place (see the module docs): the move of
/// highest gain per extra byte first, kept only if the plan stays feasible; never a move of
/// gain `<= 0`.
pub fn greedy_upgrades(checker: &mut Checker, sel: &mut [Option<u8>]) {
    let input = checker.input();
    // Per shard: the fidelities not yet found infeasible (bit f).
    let mut allowed = vec![u8::MAX; sel.len()];
    let mut heap: BinaryHeap<Upgrade> = (0..sel.len())
        .filter_map(|i| best_move(input, i, sel[i], allowed[i]))
        .collect();
    while let Some(up) = heap.pop() {
        let i = up.shard;
        let previous = sel[i];
        sel[i] = Some(up.to);
        if !checker.evaluate(sel).feasible(input) {
            sel[i] = previous;
            allowed[i] &= !(1 << up.to);
        }
        if let Some(next) = best_move(input, i, sel[i], allowed[i]) {
            heap.push(next);
        }
    }
}

/// Summed importance of a selection, in layer then shard order.
pub fn summed_importance(input: &PlanInput, sel: &Selection) -> f64 {
    sel.iter()
        .enumerate()
        .filter_map(|(i, f)| f.map(|f| value(input, i, f)))
        .sum()
}

/// The importance of flat shard `i` at fidelity index `f` (0 outside the table).
fn value(input: &PlanInput, i: usize, f: u8) -> f64 {
    input
        .importance
        .values
        .get(i * FIDELITIES.len() + usize::from(f))
        .copied()
        .unwrap_or(0.0)
}

/// One candidate move of one shard.
#[derive(Clone, Copy, Debug, PartialEq)]
struct Upgrade {
    /// Importance gained per extra byte (`+inf` when the move costs no bytes).
    ratio: f64,
    /// Importance gained, `> 0`.
    gain: f64,
    /// Flat shard index.
    shard: usize,
    /// Fidelity index moved to.
    to: u8,
}

impl Eq for Upgrade {}

impl Ord for Upgrade {
    /// Greater = taken first: higher ratio, then higher gain, then lower shard, lower fidelity.
    fn cmp(&self, other: &Self) -> Ordering {
        self.ratio
            .total_cmp(&other.ratio)
            .then(self.gain.total_cmp(&other.gain))
            .then(other.shard.cmp(&self.shard))
            .then(other.to.cmp(&self.to))
    }
}

impl PartialOrd for Upgrade {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

/// The best move of shard `i` from `current` to a higher allowed fidelity with gain `> 0`.
fn best_move(input: &PlanInput, i: usize, current: Option<u8>, allowed: u8) -> Option<Upgrade> {
    let (base_v, base_b) = current.map_or((0.0, 0), |c| {
        (value(input, i, c), input.shard_bytes[usize::from(c)])
    });
    let first = current.map_or(0, |c| c + 1);
    (first..FIDELITIES.len() as u8)
        .filter(|&t| allowed & (1 << t) != 0)
        .filter_map(|t| {
            let gain = value(input, i, t) - base_v;
            let extra = i128::from(input.shard_bytes[usize::from(t)]) - i128::from(base_b);
            let ratio = if extra <= 0 {
                f64::INFINITY
            } else {
                gain / extra as f64
            };
            (gain > 0.0).then_some(Upgrade {
                ratio,
                gain,
                shard: i,
                to: t,
            })
        })
        .max()
}

/// The [`Plan`] of a feasible selection and its evaluation.
fn to_plan(input: &PlanInput, sel: &Selection, eval: &Evaluation) -> Plan {
    let heads = input.geometry.heads;
    let layers = (0..input.geometry.layers)
        .map(|l| {
            (0..heads)
                .filter_map(|s| sel[l * heads + s].map(|f| (s, FIDELITIES[usize::from(f)])))
                .collect()
        })
        .collect();
    let preload = sel
        .iter()
        .enumerate()
        .take(eval.preload_end)
        .filter(|(_, f)| f.is_some())
        .map(|(i, _)| ShardKey {
            layer: i / heads,
            shard: i % heads,
        })
        .collect();
    Plan {
        layers,
        preload,
        start_s: eval.start_s,
        predicted_latency_s: eval.latency_s,
        importance: summed_importance(input, sel),
        peak_bytes: eval.peak_bytes,
    }
}
