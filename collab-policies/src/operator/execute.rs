//! Executes placement plans on real backends: the device and the cloud each hold a copy of the
//! decoder, run the operators a [`Plan`] gives them and exchange the values its transfers list.
//!
//! This closes the loop of SPEC §7's compiler: the plan a policy makes is not only priced but
//! run, and the tokens it yields are checked against the unsplit [`Decoder::generate`]. Both
//! sides run in this process; a transfer copies each value to the host (`to_vec`) and onto the
//! other backend (`from_vec`), counting the bytes a network would carry.

use std::time::Instant;

use collab_core::graph::{
    DecoderConfig, LayerGraph, OpClass, OpGraph, OpId, OpKind, Stage, ValueId, ValueSource,
};
use collab_core::model::decoder::{Decoder, Held, KvCache, passed_inputs};
use collab_core::{Backend, Error, Result};

use super::{Plan, Side, Step};

/// The measured time of one computed operator.
#[derive(Clone, Debug, PartialEq)]
pub struct OpTiming {
    /// The stage it ran in.
    pub stage: Stage,
    /// The operator's index in that stage's graph.
    pub op: OpId,
    /// Operator name (`layer3.q_proj`).
    pub name: String,
    /// Cost class.
    pub class: OpClass,
    /// Where it ran.
    pub side: Side,
    /// FLOPs from the graph.
    pub flops: u64,
    /// Bytes moved to and from memory, from the graph.
    pub bytes: u64,
    /// Measured wall-clock seconds of the backend calls (synchronous backends; an
    /// asynchronous GPU backend would need a synchronisation the `Backend` trait lacks).
    pub seconds: f64,
    /// Seconds the plan predicted for it.
    pub predicted: f64,
}

/// What one split generation produced and moved.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Generation {
    /// The generated tokens: one from the prefill, then one per decode step.
    pub tokens: Vec<u32>,
    /// Bytes actually moved between the sides (4 per `f32` element and per token id).
    pub bytes_moved: u64,
    /// Bytes the plans' transfers said would move ([`Plan::transfer_bytes`], summed).
    pub planned_bytes: u64,
    /// Transfer steps executed (network messages).
    pub messages: usize,
    /// Every computed operator, in execution order over all stages.
    pub op_times: Vec<OpTiming>,
}

/// One side: its decoder, its KV cache and the values it holds in the current stage.
#[derive(Debug)]
struct SideState<B: Backend> {
    decoder: Decoder<B>,
    cache: KvCache<B>,
    store: Vec<Option<Held<B>>>,
}

/// A value on its way between sides, on the host.
enum Wire {
    Tensor(Vec<f32>, Vec<usize>),
    Tokens(Vec<u32>),
}

impl<B: Backend> SideState<B> {
    fn new(decoder: Decoder<B>) -> Self {
        let cache = decoder.new_cache();
        SideState {
            decoder,
            cache,
            store: Vec::new(),
        }
    }

    fn take_out(&self, graph: &OpGraph, v: ValueId, side: Side) -> Result<Wire> {
        match self.store.get(v).and_then(Option::as_ref) {
            Some(Held::Tensor(t)) => {
                let be = self.decoder.backend();
                Ok(Wire::Tensor(be.to_vec(t)?, be.dims(t)))
            }
            Some(Held::Tokens(ids)) => Ok(Wire::Tokens(ids.clone())),
            None => Err(Error::Config(format!(
                "a transfer from the {side} sends `{}`, which the {side} does not hold",
                value_name(graph, v)
            ))),
        }
    }

    /// Stores `wire` as value `v`; returns the bytes it carried.
    fn put_in(&mut self, v: ValueId, wire: Wire) -> Result<u64> {
        let (held, bytes) = match wire {
            Wire::Tensor(data, dims) => {
                let bytes = 4 * data.len() as u64;
                (
                    Held::Tensor(self.decoder.backend().from_vec(data, &dims)?),
                    bytes,
                )
            }
            Wire::Tokens(ids) => {
                let bytes = 4 * ids.len() as u64;
                (Held::Tokens(ids), bytes)
            }
        };
        let slot = self.store.get_mut(v).ok_or_else(|| {
            Error::Config(format!("a transfer names value {v}, outside the graph"))
        })?;
        *slot = Some(held);
        Ok(bytes)
    }

    /// Runs `op` with the inputs held here; returns the measured seconds.
    fn compute(&mut self, graph: &OpGraph, op: OpId, side: Side) -> Result<f64> {
        let o = graph.ops.get(op).ok_or_else(|| {
            Error::Config(format!(
                "plan computes operator {op}, outside the graph of {} operators",
                graph.ops.len()
            ))
        })?;
        if let (OpKind::AttnScores | OpKind::AttnContext, Some(l)) = (o.kind, o.layer) {
            let held = match o.kind {
                OpKind::AttnScores => self.cache.key_tokens(l)?,
                _ => self.cache.value_tokens(l)?,
            };
            let past = graph.stage.past_tokens();
            if held != past {
                return Err(Error::Config(format!(
                    "`{}` of {} runs on the {side}, whose KV cache of layer {l} holds {held} \
                     tokens instead of {past}: that layer's attention ran on the other side in \
                     an earlier stage, and the cache stays where attention runs",
                    o.name, graph.stage
                )));
            }
        }
        let inputs = passed_inputs(graph, o)
            .map(|v| {
                self.store.get(v).and_then(Option::as_ref).ok_or_else(|| {
                    Error::Config(format!(
                        "`{}` on the {side} reads `{}`, which is not there",
                        o.name,
                        value_name(graph, v)
                    ))
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let start = Instant::now();
        let out = self.decoder.run_op(graph, op, &inputs, &mut self.cache)?;
        let seconds = start.elapsed().as_secs_f64();
        if let Some(slot) = self.store.get_mut(o.output) {
            *slot = Some(out);
        }
        Ok(seconds)
    }
}

fn value_name(graph: &OpGraph, v: ValueId) -> String {
    graph
        .values
        .get(v)
        .map_or_else(|| format!("value {v}"), |x| x.name.clone())
}

/// Runs placement plans of a LLaMA-style decoder split between a device backend `D` and a
/// cloud backend `C`.
///
/// Contract: each side holds the same weights and its own KV cache; a compute step runs on its
/// side with inputs from that side only, and a transfer step copies values from the other side.
/// A plan that reads a value where it is not, or runs a layer's attention away from where its
/// KV cache was filled, is a typed error ([`Error::Config`] naming the operator and value),
/// never a panic. On one backend type, a valid plan yields exactly the tokens of
/// [`Decoder::generate`].
#[derive(Debug)]
pub struct SplitExecutor<D: Backend, C: Backend> {
    device: SideState<D>,
    cloud: SideState<C>,
}

impl<D: Backend, C: Backend> SplitExecutor<D, C> {
    /// Seeded decoders ([`Decoder::seeded`]) of `config` on both sides, with the same weights.
    ///
    /// # Errors
    /// As [`Decoder::seeded`].
    pub fn seeded(device: D, cloud: C, config: &DecoderConfig, seed: u64) -> Result<Self> {
        Self::new(
            Decoder::seeded(device, config, seed)?,
            Decoder::seeded(cloud, config, seed)?,
        )
    }

    /// An executor over two decoders of the same configuration (the caller vouches that they
    /// hold the same weights).
    ///
    /// # Errors
    /// [`Error::Config`] if the configurations differ.
    pub fn new(device: Decoder<D>, cloud: Decoder<C>) -> Result<Self> {
        if device.config() != cloud.config() {
            return Err(Error::Config(format!(
                "device decoder `{}` and cloud decoder `{}` differ in size",
                device.config().name,
                cloud.config().name
            )));
        }
        Ok(SplitExecutor {
            device: SideState::new(device),
            cloud: SideState::new(cloud),
        })
    }

    /// The model's sizes.
    pub fn config(&self) -> &DecoderConfig {
        self.device.decoder.config()
    }

    /// The device's decoder.
    pub fn device(&self) -> &Decoder<D> {
        &self.device.decoder
    }

    /// The cloud's decoder.
    pub fn cloud(&self) -> &Decoder<C> {
        &self.cloud.decoder
    }

    /// Greedy generation under placement plans: empties both KV caches, lowers the prefill of
    /// `prompt` and then `steps` decode steps, asks `plan_for` for each stage's plan and runs
    /// it. Returns the `steps + 1` tokens with the bytes moved and per-operator timings.
    ///
    /// # Errors
    /// [`Error::InvalidInput`] for an empty prompt or a token outside the vocabulary;
    /// [`Error::Config`] for a plan that cannot run (a value read where it is not, attention
    /// away from its KV cache, the result not on the device); `plan_for`'s errors; backend
    /// errors.
    pub fn generate(
        &mut self,
        prompt: &[u32],
        steps: usize,
        mut plan_for: impl FnMut(&OpGraph) -> Result<Plan>,
    ) -> Result<Generation> {
        if prompt.is_empty() {
            return Err(Error::InvalidInput("the prompt has no tokens".into()));
        }
        self.device.cache.clear();
        self.cloud.cache.clear();
        let layers = LayerGraph::decoder(self.config())?;
        let mut report = Generation {
            tokens: Vec::with_capacity(steps + 1),
            ..Generation::default()
        };
        let mut input = prompt.to_vec();
        for i in 0..=steps {
            let stage = if i == 0 {
                Stage::Prefill {
                    prompt: prompt.len(),
                }
            } else {
                Stage::Decode {
                    past: prompt.len() + i - 1,
                }
            };
            let graph = layers.lower(stage);
            let plan = plan_for(&graph)?;
            let token = self.run_stage(&graph, &plan, input, &mut report)?;
            report.tokens.push(token);
            input = vec![token];
        }
        Ok(report)
    }

    /// Runs one stage's plan from the request's token ids on the device to the next token,
    /// which must end on the device.
    fn run_stage(
        &mut self,
        graph: &OpGraph,
        plan: &Plan,
        tokens: Vec<u32>,
        report: &mut Generation,
    ) -> Result<u32> {
        let n = graph.values.len();
        self.device.store = (0..n).map(|_| None).collect();
        self.cloud.store = (0..n).map(|_| None).collect();
        let mut tokens = Some(tokens);
        for (v, value) in graph.values.iter().enumerate() {
            if value.source == ValueSource::RequestInput
                && let Some(ids) = tokens.take()
            {
                self.device.store[v] = Some(Held::Tokens(ids));
            }
        }
        report.planned_bytes += plan.transfer_bytes();
        for step in &plan.steps {
            match step {
                Step::Compute { op, side, seconds } => {
                    let measured = match side {
                        Side::Device => self.device.compute(graph, *op, *side)?,
                        Side::Cloud => self.cloud.compute(graph, *op, *side)?,
                    };
                    let o = &graph.ops[*op];
                    report.op_times.push(OpTiming {
                        stage: graph.stage,
                        op: *op,
                        name: o.name.clone(),
                        class: o.class(),
                        side: *side,
                        flops: o.flops,
                        bytes: o.bytes(),
                        seconds: measured,
                        predicted: *seconds,
                    });
                }
                Step::Transfer { values, to, .. } => {
                    for &v in values {
                        let bytes = match to {
                            Side::Cloud => {
                                let wire = self.device.take_out(graph, v, Side::Device)?;
                                self.cloud.put_in(v, wire)?
                            }
                            Side::Device => {
                                let wire = self.cloud.take_out(graph, v, Side::Cloud)?;
                                self.device.put_in(v, wire)?
                            }
                        };
                        report.bytes_moved += bytes;
                    }
                    report.messages += 1;
                }
            }
        }
        let not_one = || {
            Error::Config(format!(
                "the result `{}` of {} is not one token id",
                value_name(graph, graph.result),
                graph.stage
            ))
        };
        match self.device.store.get(graph.result).and_then(Option::as_ref) {
            Some(Held::Tokens(ids)) => match ids[..] {
                [token] => Ok(token),
                _ => Err(not_one()),
            },
            Some(Held::Tensor(_)) => Err(not_one()),
            None => Err(Error::Config(format!(
                "the plan for {} does not bring the result `{}` back to the device",
                graph.stage,
                value_name(graph, graph.result)
            ))),
        }
    }
}

#[cfg(test)]
mod tests;
