//! Elastic pipeline planning (SPEC §3 (b), (c); STI, Guo et al., MobiCom 2023).
//!
//! Given a latency target, the device's IO bandwidth, its predicted compute time per shard and
//! a memory budget, [`plan`] picks which shards of each layer run (a sub-model) and at which
//! [`Fidelity`], so that streaming layer `l + 1` from flash hides behind computing the layers
//! before it, maximising the summed [`ImportanceTable`] value of the chosen shards.
//!
//! Timing model shared by the planner and the executor. A request arrives at `t = 0`. A loader
//! reads the plan's shards that are not preloaded, in (layer, shard) order, at
//! `io_bytes_per_s`, into a bounded buffer; compute runs the embedding, then each layer as soon
//! as all its shards are loaded, then the head; a layer's buffered shard bytes are freed when
//! that layer finishes. The preload buffer holds the plan's first shards between requests and
//! costs no IO.
//!
//! - [`feasibility`]: the planner's closed-form check: STI's accumulated IO budget (AIB) over
//!   layers, the latency target and a bound on the buffer;
//! - [`planner`]: a uniform base sub-model, then greedy upgrades of the most important shards;
//! - [`timeline`]: the executor's own event simulation ([`simulate`]), written independently
//!   of the planner's check, against which plans are verified.

pub mod feasibility;
pub mod planner;
pub mod timeline;

#[cfg(test)]
mod proptests;
#[cfg(test)]
mod tests;

use serde::{Deserialize, Serialize};

use super::importance::ImportanceTable;
use super::{FIDELITIES, Fidelity, ShardGeometry, ShardKey};
use collab_core::cost::{CostModel, Workload};
use collab_core::{Error, Result};

pub use planner::plan;
pub use timeline::{Timeline, simulate};

/// Predicted compute times on the device, in seconds (from a `CostModel`; see
/// `Workload::Shard` in `collab_core::cost`). All must be finite and `>= 0`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ComputeCosts {
    /// The embedding, before layer 0.
    pub embed_s: f64,
    /// The head, after the last layer.
    pub head_s: f64,
    /// A layer's cost that does not depend on its shards (norms, residuals); paid by every
    /// layer, even one that runs no shard.
    pub per_layer_s: f64,
    /// One shard at each fidelity (indexed by [`Fidelity::index`]): its dequantisation and its
    /// share of the layer's compute.
    pub per_shard_s: [f64; 7],
    /// Weight bytes held while a layer computes besides its buffered shard bytes (its f32
    /// dequantised part); counted against the memory budget for the whole request.
    pub working_bytes: u64,
}

impl ComputeCosts {
    /// The costs of one request of `tokens` tokens as `cost` predicts them: the embedding
    /// ([`Workload::Embed`]), the head ([`Workload::Head`]) and one shard at each fidelity
    /// ([`Workload::Shard`]), batch 1. A measured profile of this device, or one scaled to a
    /// slower phone ([`collab_core::cost::Scaled`]), plans alike. `per_layer_s` and
    /// `working_bytes` are not workloads of the cost model and are passed through.
    ///
    /// # Errors
    /// [`collab_core::Error::NoPrediction`] for a stage the model has no data for.
    pub fn from_cost_model(
        cost: &dyn CostModel,
        tokens: usize,
        per_layer_s: f64,
        working_bytes: u64,
    ) -> Result<Self> {
        let mut per_shard_s = [0.0; 7];
        for f in FIDELITIES {
            per_shard_s[f.index()] = cost.seconds(&Workload::Shard {
                bits: f.bits(),
                tokens,
            })?;
        }
        Ok(Self {
            embed_s: cost.seconds(&Workload::Embed { batch: 1, tokens })?,
            head_s: cost.seconds(&Workload::Head { batch: 1, tokens })?,
            per_layer_s,
            per_shard_s,
            working_bytes,
        })
    }

    /// Compute time of one layer running `shards` (`C_l = per_layer_s + Σ per_shard_s[f]`).
    pub fn layer_s(&self, shards: &[(usize, Fidelity)]) -> f64 {
        self.per_layer_s
            + shards
                .iter()
                .map(|&(_, f)| self.per_shard_s[f.index()])
                .sum::<f64>()
    }
}

/// Everything the planner needs for one model on one device.
#[derive(Clone, Debug)]
pub struct PlanInput<'a> {
    /// How the model is cut into shards.
    pub geometry: &'a ShardGeometry,
    /// Each shard's importance at each fidelity; must be `geometry.layers x geometry.heads`.
    pub importance: &'a ImportanceTable,
    /// Bytes on disk of one shard at each fidelity (indexed by [`Fidelity::index`]; every shard
    /// of a model has the same size).
    pub shard_bytes: [u64; 7],
    /// Weights always held (norms, biases, embedding rows...): counted against the budget.
    pub resident_bytes: u64,
    /// Predicted compute times.
    pub compute: ComputeCosts,
    /// Flash read bandwidth, bytes per second (finite, `> 0`).
    pub io_bytes_per_s: f64,
    /// Latency target of one request, seconds (finite, `> 0`).
    pub target_s: f64,
    /// Peak weight bytes allowed: resident + preload + buffered shard bytes + working bytes.
    pub memory_budget: u64,
    /// Bytes of the preload buffer (part of `memory_budget`).
    pub preload_budget: u64,
}

impl PlanInput<'_> {
    /// Bytes on disk of one shard at `f`.
    pub fn bytes(&self, f: Fidelity) -> u64 {
        self.shard_bytes[f.index()]
    }

    /// The plan's latency when it runs no shard at all: `embed + layers x per_layer + head`,
    /// a floor under every plan's latency.
    pub fn fixed_latency_s(&self) -> f64 {
        let c = &self.compute;
        c.embed_s + self.geometry.layers as f64 * c.per_layer_s + c.head_s
    }

    /// Checks the input's numbers and sizes.
    ///
    /// # Errors
    /// [`Error::InvalidInput`] for a non-finite or non-positive IO rate or target, a
    /// non-finite or negative compute cost, or a non-finite importance value;
    /// [`Error::Config`] for an importance table of other dimensions than the geometry, or a
    /// memory budget below `resident_bytes + working_bytes`.
    pub fn validate(&self) -> Result<()> {
        if !(self.io_bytes_per_s.is_finite() && self.io_bytes_per_s > 0.0) {
            return Err(Error::InvalidInput(format!(
                "IO rate must be finite and > 0 bytes/s, got {}",
                self.io_bytes_per_s
            )));
        }
        if !(self.target_s.is_finite() && self.target_s > 0.0) {
            return Err(Error::InvalidInput(format!(
                "latency target must be finite and > 0 s, got {}",
                self.target_s
            )));
        }
        let c = &self.compute;
        let costs = [("embed_s", c.embed_s), ("head_s", c.head_s)]
            .into_iter()
            .chain([("per_layer_s", c.per_layer_s)])
            .chain(c.per_shard_s.iter().map(|&s| ("per_shard_s", s)));
        for (name, s) in costs {
            if !(s.is_finite() && s >= 0.0) {
                return Err(Error::InvalidInput(format!(
                    "compute cost {name} must be finite and >= 0 s, got {s}"
                )));
            }
        }
        let (g, t) = (self.geometry, self.importance);
        if t.layers != g.layers
            || t.shards != g.heads
            || t.values.len() != g.layers * g.heads * FIDELITIES.len()
        {
            return Err(Error::Config(format!(
                "importance table of {} layers x {} shards ({} values) for a model of {} layers \
                 x {} shards",
                t.layers,
                t.shards,
                t.values.len(),
                g.layers,
                g.heads
            )));
        }
        if let Some(v) = t.values.iter().find(|v| !v.is_finite()) {
            return Err(Error::InvalidInput(format!(
                "importance table `{}` holds a non-finite value {v}",
                t.model
            )));
        }
        let fixed = self.resident_bytes.checked_add(c.working_bytes);
        if fixed.is_none_or(|fixed| fixed > self.memory_budget) {
            return Err(Error::Config(format!(
                "memory budget {} B is below resident {} B + working {} B",
                self.memory_budget, self.resident_bytes, c.working_bytes
            )));
        }
        Ok(())
    }
}

/// A sub-model and how it runs: the planner's output, the executor's input.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Plan {
    /// Per layer: the chosen shards (ascending shard index) and their fidelity; a layer may
    /// run none (then only its norms and residuals run).
    pub layers: Vec<Vec<(usize, Fidelity)>>,
    /// The chosen shards held resident between requests (SPEC §3 (c)): the plan's shards in
    /// (layer, shard) order while they fit `preload_budget`, stopping at the first that does
    /// not fit.
    pub preload: Vec<ShardKey>,
    /// Planned start of layer 0's compute (`>= embed_s`): the IO head start.
    pub start_s: f64,
    /// `start_s + Σ_l C_l + head_s`; `<= target_s`.
    pub predicted_latency_s: f64,
    /// Summed importance of the chosen (shard, fidelity) pairs, summed in layer then shard
    /// order.
    pub importance: f64,
    /// The planner's bound on peak weight bytes (resident + preload + buffered + working);
    /// `<= memory_budget`.
    pub peak_bytes: u64,
}

impl Plan {
    /// Planned start of each layer's compute: `P_l = start_s + Σ_{j<l} C_j`.
    pub fn planned_starts(&self, compute: &ComputeCosts) -> Vec<f64> {
        let mut t = self.start_s;
        self.layers
            .iter()
            .map(|shards| {
                let p = t;
                t += compute.layer_s(shards);
                p
            })
            .collect()
    }

    /// The preloaded shards with the fidelity the plan runs them at (what
    /// `Executor::set_preload` takes).
    pub fn preloaded(&self) -> Vec<(ShardKey, Fidelity)> {
        self.preload
            .iter()
            .filter_map(|k| {
                let shards = self.layers.get(k.layer)?;
                let &(_, f) = shards.iter().find(|(s, _)| *s == k.shard)?;
                Some((*k, f))
            })
            .collect()
    }

    /// Number of chosen shards.
    pub fn shard_count(&self) -> usize {
        self.layers.iter().map(Vec::len).sum()
    }
}
