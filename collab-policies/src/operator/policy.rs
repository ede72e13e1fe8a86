//! The placement-policy trait and the two fixed baselines.

use std::fmt::Debug;

use collab_core::Result;
use collab_core::graph::OpGraph;

use super::chain::{Chain, Pins, SIDES, slot};
use super::{Plan, Pricing, Side};

/// A placement and whether it meets its latency target.
#[derive(Clone, Debug, PartialEq)]
pub struct Placement {
    /// The plan.
    pub plan: Plan,
    /// The latency target it was made for, in seconds.
    pub target: f64,
    /// `plan.latency <= target`.
    pub met: bool,
}

impl Placement {
    pub(crate) fn new(plan: Plan, target: f64) -> Self {
        let met = plan.latency <= target * (1.0 + 1e-12);
        Placement { plan, target, met }
    }
}

/// Decides which side runs each operator of one stage (SPEC §7).
///
/// Contract: the returned plan is valid ([`Plan::validate`]), keeps every pinned operator on
/// its pinned side and each layer's attention operators together; among the plans it can find
/// it prefers one that meets `target` seconds, and then the lowest cloud cost. When it finds
/// none that meets the target it still returns its best effort with `met = false`.
pub trait PlacementPolicy: Debug + Send + Sync {
    /// A name for reports.
    fn name(&self) -> &'static str;

    /// Places `graph` for a latency `target` under `pins` (one entry per operator).
    ///
    /// # Errors
    /// [`collab_core::Error::Config`] for inconsistent pins; the cost models' errors.
    fn place(
        &self,
        graph: &OpGraph,
        pricing: &Pricing<'_>,
        target: f64,
        pins: &Pins,
    ) -> Result<Placement>;
}

/// Builds the plan of a per-unit placement.
pub(crate) fn finish(
    graph: &OpGraph,
    chain: &Chain,
    unit_sides: &[Side],
    pricing: &Pricing<'_>,
    target: f64,
) -> Result<Placement> {
    let plan = Plan::build(graph, &chain.op_sides(unit_sides), pricing)?;
    Ok(Placement::new(plan, target))
}

/// Everything on one side where the pins allow (pinned operators stay pinned): the
/// device-only and cloud-only baselines.
#[derive(Clone, Copy, Debug)]
pub struct Everything(pub Side);

impl PlacementPolicy for Everything {
    fn name(&self) -> &'static str {
        match self.0 {
            Side::Device => "device-only",
            Side::Cloud => "cloud-only",
        }
    }

    fn place(
        &self,
        graph: &OpGraph,
        pricing: &Pricing<'_>,
        target: f64,
        pins: &Pins,
    ) -> Result<Placement> {
        let chain = Chain::new(graph, pricing, pins)?;
        let sides: Vec<Side> = chain
            .units
            .iter()
            .map(|u| {
                if u.allowed[slot(self.0)] {
                    self.0
                } else {
                    self.0.other()
                }
            })
            .collect();
        finish(graph, &chain, &sides, pricing, target)
    }
}

/// The unit placement with the least latency (a two-state shortest path), for targets no
/// plan meets.
pub(crate) fn fastest(chain: &Chain) -> Vec<Side> {
    let n = chain.units.len();
    // best[s] = (latency, back-pointers) after the units so far, ending on side s.
    let mut best: [f64; 2] = [0.0, f64::INFINITY];
    let mut from = vec![[Side::Device; 2]; n];
    for (i, u) in chain.units.iter().enumerate() {
        let mut next = [f64::INFINITY; 2];
        for side in SIDES {
            if !u.allowed[slot(side)] {
                continue;
            }
            for prev in SIDES {
                let cross = if prev == side {
                    0.0
                } else {
                    chain.cut_seconds[u.ops.start]
                };
                let t = best[slot(prev)] + cross + u.seconds[slot(side)];
                if t < next[slot(side)] {
                    next[slot(side)] = t;
                    from[i][slot(side)] = prev;
                }
            }
        }
        best = next;
    }
    let back = chain.cut_seconds[chain.ops];
    let mut side = if best[0] <= best[1] + back {
        Side::Device
    } else {
        Side::Cloud
    };
    let mut sides = vec![Side::Device; n];
    for i in (0..n).rev() {
        sides[i] = side;
        side = from[i][slot(side)];
    }
    sides
}
