//! The exact planner: the cheapest placement of the operator chain that meets the latency
//! target, by dynamic programming over the chain with transfer costs.
//!
//! The state after each placement unit is the side it ran on; each state keeps the Pareto
//! front of (latency so far, cloud cost so far) labels, pruning labels already over the target
//! (every later step only adds time) and labels another label dominates. A change of side
//! between units pays the transfer of the live values at that cut. The front is exact, so the
//! result is the optimum of the same model greedy is priced on (property-tested against brute
//! force); near-equal labels (within `1e-9` of the target in latency) are merged, keeping the
//! cheaper, which bounds the front on long chains of identical layers.

use collab_core::Result;
use collab_core::graph::OpGraph;

use super::chain::{Chain, Pins, SIDES, slot};
use super::policy::{Placement, PlacementPolicy, fastest, finish};
use super::{Pricing, Side};

/// The exact (Pareto dynamic programming) planner.
#[derive(Clone, Copy, Debug, Default)]
pub struct Exact;

#[derive(Clone, Copy, Debug)]
struct Label {
    latency: f64,
    cost: f64,
    /// Index of the label it extends in the previous unit's front of side `from`.
    parent: u32,
    from: Side,
}

impl PlacementPolicy for Exact {
    fn name(&self) -> &'static str {
        "exact"
    }

    fn place(
        &self,
        graph: &OpGraph,
        pricing: &Pricing<'_>,
        target: f64,
        pins: &Pins,
    ) -> Result<Placement> {
        let chain = Chain::new(graph, pricing, pins)?;
        let sides = cheapest_within(&chain, target).unwrap_or_else(|| fastest(&chain));
        finish(graph, &chain, &sides, pricing, target)
    }
}

/// The cheapest unit placement with latency ≤ `target` (cost = cloud seconds; the price is a
/// constant factor), or `None` if none meets it.
fn cheapest_within(chain: &Chain, target: f64) -> Option<Vec<Side>> {
    let n = chain.units.len();
    let merge = target.abs() * 1e-9;
    // fronts[i][s]: labels after unit i on side s, sorted by latency, costs strictly falling.
    let mut fronts: Vec<[Vec<Label>; 2]> = Vec::with_capacity(n);
    let start = Label {
        latency: 0.0,
        cost: 0.0,
        parent: 0,
        from: Side::Device,
    };
    for (i, u) in chain.units.iter().enumerate() {
        let mut next: [Vec<Label>; 2] = [Vec::new(), Vec::new()];
        for side in SIDES {
            if !u.allowed[slot(side)] {
                continue;
            }
            let mut cands = Vec::new();
            for prev in SIDES {
                let cross = if prev == side {
                    0.0
                } else {
                    chain.cut_seconds[u.ops.start]
                };
                let step = u.seconds[slot(side)];
                let cost = if side == Side::Cloud { step } else { 0.0 };
                let prev_front: &[Label] = if i == 0 {
                    if prev == Side::Device {
                        std::slice::from_ref(&start)
                    } else {
                        &[]
                    }
                } else {
                    &fronts[i - 1][slot(prev)]
                };
                for (j, l) in prev_front.iter().enumerate() {
                    let latency = l.latency + cross + step;
                    if latency <= target {
                        cands.push(Label {
                            latency,
                            cost: l.cost + cost,
                            parent: j as u32,
                            from: prev,
                        });
                    }
                }
            }
            next[slot(side)] = pareto(cands, merge);
        }
        fronts.push(next);
    }
    // Close: return to the device if the last unit ran on the cloud.
    let back = chain.cut_seconds[chain.ops];
    let mut best: Option<(f64, Side, usize)> = None;
    for side in SIDES {
        let extra = if side == Side::Cloud { back } else { 0.0 };
        for (j, l) in fronts.last()?[slot(side)].iter().enumerate() {
            if l.latency + extra <= target && best.is_none_or(|(c, _, _)| l.cost < c) {
                best = Some((l.cost, side, j));
            }
        }
    }
    let (_, mut side, mut j) = best?;
    let mut sides = vec![Side::Device; n];
    for i in (0..n).rev() {
        sides[i] = side;
        let l = fronts[i][slot(side)][j];
        side = l.from;
        j = l.parent as usize;
    }
    Some(sides)
}

/// The labels no other label dominates (lower or equal latency and cost), sorted by latency;
/// labels within `merge` seconds of a kept one's latency are merged into the cheaper.
fn pareto(mut cands: Vec<Label>, merge: f64) -> Vec<Label> {
    cands.sort_by(|a, b| {
        a.latency
            .total_cmp(&b.latency)
            .then(a.cost.total_cmp(&b.cost))
    });
    let mut out: Vec<Label> = Vec::new();
    for c in cands {
        match out.last_mut() {
            Some(last) if c.cost >= last.cost => {}
            Some(last) if c.latency - last.latency <= merge => *last = c,
            _ => out.push(c),
        }
    }
    // Merging may have left a kept label whose cost is not below its predecessor's.
    out.dedup_by(|b, a| b.cost >= a.cost);
    out
}
