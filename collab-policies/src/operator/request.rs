//! Whole requests: a prefill and its decode steps, planned under TTFT and TPOT targets, with
//! the KV cache kept where each layer's attention runs (SPEC §7).
//!
//! The KV cache of a layer is written by the prefill's attention and read by every decode
//! step's attention, so the two stages must agree on where each layer's attention runs. We
//! try three ways to settle that and keep the cheapest plan that meets both targets:
//! plan the prefill first and pin the decode's attention to it; plan the decode first and pin
//! the prefill's attention; or pin all attention to the cloud. The decode is planned at its
//! longest context (the last step), where attention costs the most, so every step meets the
//! TPOT target; its cost is summed over all steps at their own context lengths.

use serde::{Deserialize, Serialize};

use collab_core::Result;
use collab_core::graph::{DecoderConfig, LayerGraph, OpGraph, Stage};

use super::chain::Pins;
use super::policy::{Placement, PlacementPolicy};
use super::{Plan, Pricing, Side};

/// Latency targets of a request.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Sla {
    /// Time to first token, seconds (the prefill).
    pub ttft: f64,
    /// Time per output token, seconds (each decode step).
    pub tpot: f64,
}

impl Sla {
    /// SPEC §7: TTFT < 400 ms, TPOT < 100 ms.
    pub fn spec() -> Self {
        Sla {
            ttft: 0.4,
            tpot: 0.1,
        }
    }
}

/// How the prefill and decode plans were made to agree on attention (the KV cache).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum KvStrategy {
    /// Prefill planned freely; decode attention pinned to it.
    PrefillFirst,
    /// Decode planned freely; prefill attention pinned to it.
    DecodeFirst,
    /// All attention (and so every KV cache) on the cloud.
    CloudAttention,
}

/// A planned request.
#[derive(Clone, Debug, PartialEq)]
pub struct RequestPlan {
    /// The prefill.
    pub prefill: Placement,
    /// The decode step at the longest context.
    pub decode: Placement,
    /// How attention was settled.
    pub kv: KvStrategy,
    /// Prefill latency, seconds.
    pub ttft: f64,
    /// Worst (last) decode step latency, seconds.
    pub tpot: f64,
    /// Cloud cost of the whole request in dollars: prefill plus every decode step.
    pub cost: f64,
    /// Both targets met.
    pub met: bool,
}

/// Plans a request of `prompt` tokens generating `decode` tokens (≥ 1) with `policy`.
///
/// # Errors
/// [`collab_core::Error::Config`] for an invalid model or a zero-length prompt or decode; the
/// cost models' errors.
pub fn plan_request(
    policy: &dyn PlacementPolicy,
    layers: &LayerGraph,
    prompt: usize,
    decode: usize,
    sla: Sla,
    pricing: &Pricing<'_>,
) -> Result<RequestPlan> {
    if prompt == 0 || decode == 0 {
        return Err(collab_core::Error::Config(format!(
            "a request needs a prompt and at least one decode step (prompt {prompt}, decode {decode})"
        )));
    }
    let pre = layers.lower(Stage::Prefill { prompt });
    // The last decode step attends to the prompt and all earlier generated tokens.
    let dec = layers.lower(Stage::Decode {
        past: prompt + decode - 1,
    });
    let free = |g: &OpGraph| vec![None; g.ops.len()];
    let mut best: Option<RequestPlan> = None;
    for kv in [
        KvStrategy::PrefillFirst,
        KvStrategy::DecodeFirst,
        KvStrategy::CloudAttention,
    ] {
        let (p, d) = match kv {
            KvStrategy::PrefillFirst => {
                let p = policy.place(&pre, pricing, sla.ttft, &free(&pre))?;
                let pins = attention_pins(&pre, &p.plan, &dec);
                (p, policy.place(&dec, pricing, sla.tpot, &pins)?)
            }
            KvStrategy::DecodeFirst => {
                let d = policy.place(&dec, pricing, sla.tpot, &free(&dec))?;
                let pins = attention_pins(&dec, &d.plan, &pre);
                (policy.place(&pre, pricing, sla.ttft, &pins)?, d)
            }
            KvStrategy::CloudAttention => {
                let pin = |g: &OpGraph| -> Pins {
                    g.ops
                        .iter()
                        .map(|o| o.kind.is_attention().then_some(Side::Cloud))
                        .collect()
                };
                (
                    policy.place(&pre, pricing, sla.ttft, &pin(&pre))?,
                    policy.place(&dec, pricing, sla.tpot, &pin(&dec))?,
                )
            }
        };
        let cost = p.plan.cost + decode_cost(layers, &dec, &d.plan, prompt, decode, pricing)?;
        let candidate = RequestPlan {
            ttft: p.plan.latency,
            tpot: d.plan.latency,
            met: p.met && d.met,
            prefill: p,
            decode: d,
            kv,
            cost,
        };
        if best.as_ref().is_none_or(|b| better(&candidate, b, sla)) {
            best = Some(candidate);
        }
    }
    Ok(best.expect("three strategies were tried"))
}

/// Met beats missed; among met, cheaper wins; among missed, the smaller worst overshoot.
fn better(a: &RequestPlan, b: &RequestPlan, sla: Sla) -> bool {
    match (a.met, b.met) {
        (true, false) => true,
        (false, true) => false,
        (true, true) => a.cost < b.cost,
        (false, false) => {
            let over = |r: &RequestPlan| (r.ttft / sla.ttft).max(r.tpot / sla.tpot);
            over(a) < over(b)
        }
    }
}

/// Pins `to`'s attention operators of each layer to the side `plan` (over `from`) runs them.
fn attention_pins(from: &OpGraph, plan: &Plan, to: &OpGraph) -> Pins {
    let mut side = vec![None; from.config.layers];
    for (op, s) in from.ops.iter().zip(&plan.sides) {
        if op.kind.is_attention()
            && let Some(l) = op.layer
        {
            side[l] = Some(*s);
        }
    }
    to.ops
        .iter()
        .map(|o| match (o.kind.is_attention(), o.layer) {
            (true, Some(l)) => side[l],
            _ => None,
        })
        .collect()
}

/// Cloud cost of running the decode placement `plan` (made on `last`, the longest step's
/// graph) for steps at contexts
/// `prompt..prompt + decode`. Only attention depends on the context, and every layer's
/// attention has the same size, so the other operators are priced once and attention per step
/// on a one-layer lowering, times the layers whose attention runs on the cloud.
fn decode_cost(
    layers: &LayerGraph,
    last: &OpGraph,
    plan: &Plan,
    prompt: usize,
    decode: usize,
    pricing: &Pricing<'_>,
) -> Result<f64> {
    let mut fixed = 0.0;
    let mut cloud_attention_ops = 0usize;
    for (i, s) in plan.sides.iter().enumerate() {
        if *s != Side::Cloud {
            continue;
        }
        if last.ops[i].kind.is_attention() {
            cloud_attention_ops += 1;
        } else {
            fixed += pricing.op_seconds(last, i, Side::Cloud)?;
        }
    }
    let mut seconds = fixed * decode as f64;
    if cloud_attention_ops > 0 {
        let one = LayerGraph::decoder(&DecoderConfig {
            layers: 1,
            ..layers.config.clone()
        })?;
        let per_layer_ops = 3.0;
        let mut attention = 0.0;
        for past in prompt..prompt + decode {
            let g = one.lower(Stage::Decode { past });
            for i in (0..g.ops.len()).filter(|&i| g.ops[i].kind.is_attention()) {
                attention += pricing.op_seconds(&g, i, Side::Cloud)?;
            }
        }
        seconds += attention * cloud_attention_ops as f64 / per_layer_ops;
    }
    Ok(seconds * pricing.cloud_price)
}
