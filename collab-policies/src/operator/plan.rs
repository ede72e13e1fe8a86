//! Placement plans: which side runs each operator, with the network transfers made explicit.
//!
//! A [`Plan`] is the deployment plan and the simulated report in one (SPEC §7, "compiler"):
//! steps in execution order, each a computation on one side or a transfer of values between
//! sides, each with its predicted seconds. Execution is sequential, so the latency is the sum
//! of the steps and the cost is the cloud's compute seconds times its price.

use std::fmt;

use serde::{Deserialize, Serialize};

use collab_core::cost::CostModel;
use collab_core::graph::{OpGraph, OpId, ValueId, ValueSource};
use collab_core::{Error, Result};

use super::Link;

/// Where an operator runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Side {
    /// The end device (where the request starts and its result must end).
    Device,
    /// The cloud.
    Cloud,
}

impl Side {
    /// The other side.
    pub fn other(self) -> Side {
        match self {
            Side::Device => Side::Cloud,
            Side::Cloud => Side::Device,
        }
    }
}

impl fmt::Display for Side {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Side::Device => "device",
            Side::Cloud => "cloud",
        })
    }
}

/// One step of a plan.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "step", rename_all = "snake_case")]
pub enum Step {
    /// Operator `op` runs on `side`.
    Compute {
        /// The operator.
        op: OpId,
        /// Where.
        side: Side,
        /// Predicted seconds.
        seconds: f64,
    },
    /// `values` move from one side to the other in one message (a send/receive pair).
    Transfer {
        /// What moves.
        values: Vec<ValueId>,
        /// Destination (the source is the other side).
        to: Side,
        /// Payload bytes.
        bytes: u64,
        /// `rtt / 2 + bytes / bandwidth`.
        seconds: f64,
    },
}

impl Step {
    /// Predicted seconds of the step.
    pub fn seconds(&self) -> f64 {
        match self {
            Step::Compute { seconds, .. } | Step::Transfer { seconds, .. } => *seconds,
        }
    }
}

/// The machines and network a plan is priced on.
#[derive(Clone, Copy, Debug)]
pub struct Pricing<'a> {
    /// The device's cost model.
    pub device: &'a dyn CostModel,
    /// The cloud's cost model.
    pub cloud: &'a dyn CostModel,
    /// Dollars per cloud compute second.
    pub cloud_price: f64,
    /// The link.
    pub link: Link,
}

impl Pricing<'_> {
    /// Predicted seconds of operator `op` of `graph` on `side`.
    ///
    /// # Errors
    /// The cost model's error.
    pub fn op_seconds(&self, graph: &OpGraph, op: OpId, side: Side) -> Result<f64> {
        let work = graph.ops[op].workload();
        match side {
            Side::Device => self.device.seconds(&work),
            Side::Cloud => self.cloud.seconds(&work),
        }
    }
}

/// A placed operator graph: the steps, their total latency and the cloud cost.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Plan {
    /// The side of each operator, indexed like `graph.ops`.
    pub sides: Vec<Side>,
    /// Steps in execution order.
    pub steps: Vec<Step>,
    /// Sum of the steps' seconds.
    pub latency: f64,
    /// Seconds of cloud compute.
    pub cloud_seconds: f64,
    /// `cloud_seconds × price`.
    pub cost: f64,
}

/// The layer whose KV cache an operator touches, if it is an attention operator.
pub(crate) fn attention_layer(graph: &OpGraph, op: OpId) -> Option<usize> {
    let o = &graph.ops[op];
    o.kind.is_attention().then_some(o.layer).flatten()
}

impl Plan {
    /// Builds the plan that runs operator `i` on `sides[i]`: the request starts on the device,
    /// every change of side between consecutive operators sends the live values (those
    /// computed before and read after; [`OpGraph::live_sets`]) in one message, and the result
    /// returns to the device.
    ///
    /// # Errors
    /// [`Error::Config`] if `sides` has the wrong length or splits a layer's attention
    /// operators (its KV cache lives with attention, SPEC §7); the cost models' errors.
    pub fn build(graph: &OpGraph, sides: &[Side], pricing: &Pricing<'_>) -> Result<Plan> {
        if sides.len() != graph.ops.len() {
            return Err(Error::Config(format!(
                "placement has {} sides for {} operators",
                sides.len(),
                graph.ops.len()
            )));
        }
        check_attention_colocated(graph, sides)?;
        let live = graph.live_sets();
        let mut steps = Vec::with_capacity(graph.ops.len() + 8);
        let mut at = Side::Device;
        let (mut latency, mut cloud_seconds) = (0.0, 0.0);
        for (i, &side) in sides
            .iter()
            .chain(std::iter::once(&Side::Device))
            .enumerate()
        {
            if side != at {
                let values = live[i].clone();
                let bytes = values.iter().map(|&v| graph.values[v].bytes).sum();
                let seconds = pricing.link.one_way(bytes);
                latency += seconds;
                steps.push(Step::Transfer {
                    values,
                    to: side,
                    bytes,
                    seconds,
                });
                at = side;
            }
            if i < graph.ops.len() {
                let seconds = pricing.op_seconds(graph, i, side)?;
                latency += seconds;
                if side == Side::Cloud {
                    cloud_seconds += seconds;
                }
                steps.push(Step::Compute {
                    op: i,
                    side,
                    seconds,
                });
            }
        }
        Ok(Plan {
            sides: sides.to_vec(),
            steps,
            latency,
            cloud_seconds,
            cost: cloud_seconds * pricing.cloud_price,
        })
    }

    /// Bytes sent over the network.
    pub fn transfer_bytes(&self) -> u64 {
        self.steps
            .iter()
            .map(|s| match s {
                Step::Transfer { bytes, .. } => *bytes,
                Step::Compute { .. } => 0,
            })
            .sum()
    }

    /// Number of network messages.
    pub fn transfers(&self) -> usize {
        self.steps
            .iter()
            .filter(|s| matches!(s, Step::Transfer { .. }))
            .count()
    }

    /// Checks, by replaying the steps, that every operator finds each input on its own side
    /// (computed there, sent there, or the KV cache of its layer, which stays where that
    /// layer's attention runs) and that the result ends on the device.
    ///
    /// # Errors
    /// [`Error::Config`] naming the operator and the value it would lack.
    pub fn validate(&self, graph: &OpGraph) -> Result<()> {
        let mut present = vec![[false; 2]; graph.values.len()];
        let slot = |s: Side| usize::from(s == Side::Cloud);
        for (v, value) in graph.values.iter().enumerate() {
            if value.source == ValueSource::RequestInput {
                present[v][slot(Side::Device)] = true;
            }
        }
        let mut cache_side = vec![None::<Side>; graph.config.layers];
        for step in &self.steps {
            match step {
                Step::Transfer { values, to, .. } => {
                    for &v in values {
                        if !present[v][slot(to.other())] {
                            return Err(Error::Config(format!(
                                "transfer to the {to} sends `{}`, which the {} does not hold",
                                graph.values[v].name,
                                to.other()
                            )));
                        }
                        present[v][slot(*to)] = true;
                    }
                }
                Step::Compute { op, side, .. } => {
                    let o = &graph.ops[*op];
                    for &v in &o.inputs {
                        let ok = match graph.values[v].source {
                            ValueSource::KvCache { layer, .. } => {
                                *cache_side[layer].get_or_insert(*side) == *side
                            }
                            _ => present[v][slot(*side)],
                        };
                        if !ok {
                            return Err(Error::Config(format!(
                                "`{}` on the {side} reads `{}`, which is not there",
                                o.name, graph.values[v].name
                            )));
                        }
                    }
                    present[o.output][slot(*side)] = true;
                }
            }
        }
        if !present[graph.result][slot(Side::Device)] {
            return Err(Error::Config(
                "the result does not end on the device".into(),
            ));
        }
        Ok(())
    }
}

/// Rejects placements that run a layer's attention operators on both sides.
pub(crate) fn check_attention_colocated(graph: &OpGraph, sides: &[Side]) -> Result<()> {
    let mut seen = vec![None::<Side>; graph.config.layers];
    for (i, &side) in sides.iter().enumerate() {
        if let Some(l) = attention_layer(graph, i)
            && *seen[l].get_or_insert(side) != side
        {
            return Err(Error::Config(format!(
                "layer {l}'s attention operators are split between device and cloud; its KV \
                 cache lives where attention runs"
            )));
        }
    }
    Ok(())
}

/// One line per layer (and one for the embedding and one for the head) naming the operators
/// on each side, e.g. `layer 3   device: attn_norm q k v | cloud: o ffn_norm gate up down`.
pub fn placement_lines(graph: &OpGraph, sides: &[Side]) -> Vec<String> {
    let mut groups: Vec<(String, Vec<String>, Vec<String>)> = Vec::new();
    for (op, side) in graph.ops.iter().zip(sides) {
        let group = match op.layer {
            Some(l) => format!("layer {l}"),
            None if op.name == "embed" => "embed".into(),
            None => "head".into(),
        };
        if groups.last().is_none_or(|g| g.0 != group) {
            groups.push((group, Vec::new(), Vec::new()));
        }
        let short = op
            .name
            .rsplit('.')
            .next()
            .unwrap_or(&op.name)
            .trim_end_matches("_proj")
            .to_string();
        let g = groups.last_mut().expect("pushed above");
        match side {
            Side::Device => g.1.push(short),
            Side::Cloud => g.2.push(short),
        }
    }
    groups
        .into_iter()
        .map(|(name, d, c)| {
            format!(
                "{name:<9} device: {:<40} | cloud: {}",
                d.join(" "),
                c.join(" ")
            )
        })
        .collect()
}
