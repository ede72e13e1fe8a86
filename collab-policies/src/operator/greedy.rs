//! The greedy placement of SPEC §7.
//!
//! Start with everything on the device; while the predicted latency exceeds the target, move
//! the next operator to the cloud, linear operators first, then attention, updating the
//! latency with the transfers the move adds or removes. Our walk goes from the output back
//! to the input, so the cloud part grows as a suffix and one crossing suffices; after each
//! move, cheap elementwise operators (norms, RoPE, residuals, activations) whose consumers are
//! all on the cloud follow them, so a move does not strand a norm between two transfers.

use collab_core::Result;
use collab_core::graph::{OpClass, OpGraph, ValueSource};

use super::chain::{Chain, Pins, slot};
use super::policy::{Placement, PlacementPolicy, fastest, finish};
use super::{Pricing, Side};

/// SPEC §7's greedy planner.
#[derive(Clone, Copy, Debug, Default)]
pub struct Greedy;

impl PlacementPolicy for Greedy {
    fn name(&self) -> &'static str {
        "greedy"
    }

    fn place(
        &self,
        graph: &OpGraph,
        pricing: &Pricing<'_>,
        target: f64,
        pins: &Pins,
    ) -> Result<Placement> {
        let chain = Chain::new(graph, pricing, pins)?;
        let consumers = unit_consumers(graph, &chain);
        let mut sides: Vec<Side> = chain
            .units
            .iter()
            .map(|u| {
                if u.allowed[0] {
                    Side::Device
                } else {
                    Side::Cloud
                }
            })
            .collect();
        absorb(&chain, &consumers, &mut sides);
        let mut t = chain.latency(&sides);
        let units = &chain.units;
        let order: Vec<usize> = [OpClass::Linear, OpClass::Attention]
            .into_iter()
            .flat_map(|class| {
                (0..units.len())
                    .rev()
                    .filter(move |&u| units[u].class == class)
            })
            .collect();
        for u in order {
            if t <= target {
                break;
            }
            if sides[u] == Side::Cloud || !chain.units[u].allowed[1] {
                continue;
            }
            sides[u] = Side::Cloud;
            absorb(&chain, &consumers, &mut sides);
            t = chain.latency(&sides);
        }
        if t > target {
            // No prefix of the walk meets the target: fall back to the fastest placement, so
            // the miss is as small as it can be.
            let fast = fastest(&chain);
            if chain.latency(&fast) < t {
                sides = fast;
            }
        }
        finish(graph, &chain, &sides, pricing, target)
    }
}

/// For each unit, the units that read its outputs; `None` marks a unit whose output is the
/// stage's result (which must reach the device).
fn unit_consumers(graph: &OpGraph, chain: &Chain) -> Vec<Vec<Option<usize>>> {
    let mut unit_of = vec![0; graph.ops.len()];
    for (u, unit) in chain.units.iter().enumerate() {
        for op in unit.ops.clone() {
            unit_of[op] = u;
        }
    }
    let mut out = vec![Vec::new(); chain.units.len()];
    for (i, op) in graph.ops.iter().enumerate() {
        for &v in &op.inputs {
            if let ValueSource::Op { op: p } = graph.values[v].source
                && unit_of[p] != unit_of[i]
            {
                out[unit_of[p]].push(Some(unit_of[i]));
            }
        }
    }
    if let ValueSource::Op { op } = graph.values[graph.result].source {
        out[unit_of[op]].push(None);
    }
    out
}

/// Moves to the cloud every movable elementwise unit all of whose consumers run there (one
/// pass from the back suffices: consumers come after producers).
fn absorb(chain: &Chain, consumers: &[Vec<Option<usize>>], sides: &mut [Side]) {
    for u in (0..chain.units.len()).rev() {
        let unit = &chain.units[u];
        if unit.class != OpClass::Elementwise
            || sides[u] == Side::Cloud
            || !unit.allowed[slot(Side::Cloud)]
        {
            continue;
        }
        let cs = &consumers[u];
        let all_cloud = !cs.is_empty()
            && cs.iter().all(|c| match c {
                Some(c) => sides[*c] == Side::Cloud,
                // The stage's result: computed where the unit before it (its producer, the LM
                // head) runs, so only the 4-byte token crosses back.
                None => u > 0 && sides[u - 1] == Side::Cloud,
            });
        if all_cloud {
            sides[u] = Side::Cloud;
        }
    }
}
