//! The operator chain planners walk: placement units with their predicted times on each side
//! and the bytes that cross each cut.

use std::ops::Range;

use collab_core::Result;
use collab_core::graph::{OpClass, OpGraph};

use super::plan::attention_layer;
use super::{Pricing, Side};

/// Sides an operator may take: `None` for either, `Some(side)` when pinned (a decode step's
/// attention pinned to where the prefill left that layer's KV cache, for instance).
pub type Pins = Vec<Option<Side>>;

/// The unit a planner moves: one operator, or the three attention operators of a layer,
/// which share its KV cache and so always run together.
#[derive(Clone, Debug)]
pub(crate) struct Unit {
    pub(crate) ops: Range<usize>,
    pub(crate) class: OpClass,
    /// Seconds on the device and on the cloud.
    pub(crate) seconds: [f64; 2],
    /// Sides allowed by the pins.
    pub(crate) allowed: [bool; 2],
}

/// A graph prepared for planning.
#[derive(Clone, Debug)]
pub(crate) struct Chain {
    pub(crate) units: Vec<Unit>,
    /// Seconds of one crossing at each op position `0..=n` (the live set's transfer).
    pub(crate) cut_seconds: Vec<f64>,
    pub(crate) ops: usize,
}

pub(crate) fn slot(side: Side) -> usize {
    usize::from(side == Side::Cloud)
}

pub(crate) const SIDES: [Side; 2] = [Side::Device, Side::Cloud];

impl Chain {
    /// Prices every operator on both sides and every cut.
    ///
    /// # Errors
    /// [`collab_core::Error::Config`] if `pins` has the wrong length or pins a layer's
    /// attention operators to different sides; the cost models' errors.
    pub(crate) fn new(
        graph: &OpGraph,
        pricing: &Pricing<'_>,
        pins: &[Option<Side>],
    ) -> Result<Chain> {
        if pins.len() != graph.ops.len() {
            return Err(collab_core::Error::Config(format!(
                "{} pins for {} operators",
                pins.len(),
                graph.ops.len()
            )));
        }
        let mut units: Vec<Unit> = Vec::new();
        for (i, pin) in pins.iter().enumerate() {
            let mut seconds = [0.0; 2];
            for side in SIDES {
                seconds[slot(side)] = pricing.op_seconds(graph, i, side)?;
            }
            let allowed = match *pin {
                None => [true, true],
                Some(s) => [s == Side::Device, s == Side::Cloud],
            };
            let joins = match (attention_layer(graph, i), units.last()) {
                (Some(l), Some(u)) => attention_layer(graph, u.ops.start) == Some(l),
                _ => false,
            };
            if joins {
                let u = units.last_mut().expect("checked above");
                u.ops.end = i + 1;
                u.seconds[0] += seconds[0];
                u.seconds[1] += seconds[1];
                u.allowed = [u.allowed[0] && allowed[0], u.allowed[1] && allowed[1]];
                if u.allowed == [false, false] {
                    return Err(collab_core::Error::Config(format!(
                        "layer {:?}'s attention operators are pinned to different sides",
                        graph.ops[i].layer
                    )));
                }
            } else {
                units.push(Unit {
                    ops: i..i + 1,
                    class: graph.ops[i].class(),
                    seconds,
                    allowed,
                });
            }
        }
        let cut_seconds = graph
            .live_sets()
            .iter()
            .map(|vs| {
                pricing
                    .link
                    .one_way(vs.iter().map(|&v| graph.values[v].bytes).sum())
            })
            .collect();
        Ok(Chain {
            units,
            cut_seconds,
            ops: graph.ops.len(),
        })
    }

    /// Latency of running unit `u` on `unit_sides[u]`, with a crossing wherever the side
    /// changes, starting and ending on the device.
    pub(crate) fn latency(&self, unit_sides: &[Side]) -> f64 {
        let mut at = Side::Device;
        let mut t = 0.0;
        for (u, &side) in self.units.iter().zip(unit_sides) {
            if side != at {
                t += self.cut_seconds[u.ops.start];
                at = side;
            }
            t += u.seconds[slot(side)];
        }
        if at != Side::Device {
            t += self.cut_seconds[self.ops];
        }
        t
    }

    /// Cloud compute seconds of a unit placement.
    #[cfg(test)]
    pub(crate) fn cloud_seconds(&self, unit_sides: &[Side]) -> f64 {
        self.units
            .iter()
            .zip(unit_sides)
            .filter(|(_, s)| **s == Side::Cloud)
            .map(|(u, _)| u.seconds[1])
            .sum()
    }

    /// Expands a per-unit placement to a per-operator one.
    pub(crate) fn op_sides(&self, unit_sides: &[Side]) -> Vec<Side> {
        let mut out = Vec::with_capacity(self.ops);
        for (u, &side) in self.units.iter().zip(unit_sides) {
            out.extend(std::iter::repeat_n(side, u.ops.len()));
        }
        out
    }
}
