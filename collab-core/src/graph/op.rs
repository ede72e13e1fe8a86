//! The operator graph: what each operator computes, reads, writes and produces.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::cost::Workload;

use super::DecoderConfig;

/// The inference stage an operator graph describes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(tag = "stage", rename_all = "snake_case")]
pub enum Stage {
    /// The prompt of `prompt` tokens in one pass; fills the KV cache.
    Prefill {
        /// Prompt length `s`.
        prompt: usize,
    },
    /// One generated token with `past` tokens already in the KV cache.
    Decode {
        /// Cached tokens `s` (the new token is position `s`).
        past: usize,
    },
}

impl Stage {
    /// Tokens processed in this pass (`s` for prefill, 1 for decode).
    pub fn new_tokens(&self) -> usize {
        match *self {
            Stage::Prefill { prompt } => prompt,
            Stage::Decode { .. } => 1,
        }
    }

    /// Tokens already cached before this pass.
    pub fn past_tokens(&self) -> usize {
        match *self {
            Stage::Prefill { .. } => 0,
            Stage::Decode { past } => past,
        }
    }
}

impl fmt::Display for Stage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Stage::Prefill { prompt } => write!(f, "prefill(s={prompt})"),
            Stage::Decode { past } => write!(f, "decode(s={past})"),
        }
    }
}

/// Which projection a linear operator is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Projection {
    /// Query.
    Q,
    /// Key.
    K,
    /// Value.
    V,
    /// Attention output.
    O,
    /// SwiGLU gate.
    Gate,
    /// SwiGLU up.
    Up,
    /// SwiGLU down.
    Down,
    /// Vocabulary projection.
    LmHead,
}

/// Which RMSNorm.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NormSite {
    /// Before attention.
    Attention,
    /// Before the FFN.
    Ffn,
    /// After the last layer (last token only).
    Final,
}

/// What an operator computes. The executor interprets these; the cost model sees only
/// [`OpClass`], FLOPs and bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum OpKind {
    /// Token-id embedding lookup.
    Embed,
    /// RMSNorm.
    RmsNorm {
        /// Where.
        site: NormSite,
    },
    /// `x W^T` with no bias.
    Linear {
        /// Which weight.
        proj: Projection,
    },
    /// Rotary position embedding of the queries (`key = false`) or keys (`key = true`).
    Rope {
        /// Keys rather than queries.
        key: bool,
    },
    /// `Q K^T` per head over the cached and new keys; appends the new keys to the K cache.
    AttnScores,
    /// Scaled, causally masked softmax of the scores.
    Softmax,
    /// `P V` per head over the cached and new values; appends the new values to the V cache.
    AttnContext,
    /// Residual addition.
    Residual,
    /// `silu(gate) * up`.
    SiluMul,
    /// The next token: argmax of the logits.
    Argmax,
}

/// The cost class of an operator: calibrated cost models keep one curve per class.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OpClass {
    /// Matrix-weight products (Q/K/V/O, FFN, LM head).
    Linear,
    /// The attention products `Q K^T` and `P V`.
    Attention,
    /// The scaled, masked softmax between them: a reduction over the scores whose rate follows
    /// neither the products nor plain elementwise work, so calibration gives it its own curve.
    Softmax,
    /// Norms, RoPE, residuals, activations, embedding lookup, argmax.
    Elementwise,
}

impl OpClass {
    /// Every class.
    pub const ALL: [OpClass; 4] = [
        OpClass::Linear,
        OpClass::Attention,
        OpClass::Softmax,
        OpClass::Elementwise,
    ];
}

impl OpKind {
    /// The cost class.
    pub fn class(&self) -> OpClass {
        match self {
            OpKind::Linear { .. } => OpClass::Linear,
            OpKind::AttnScores | OpKind::AttnContext => OpClass::Attention,
            OpKind::Softmax => OpClass::Softmax,
            _ => OpClass::Elementwise,
        }
    }

    /// One of a layer's attention operators (`Q K^T`, softmax, `P V`), which run where that
    /// layer's KV cache lives.
    pub fn is_attention(&self) -> bool {
        matches!(
            self,
            OpKind::AttnScores | OpKind::Softmax | OpKind::AttnContext
        )
    }
}

/// Index of an operator in its [`OpGraph`].
pub type OpId = usize;
/// Index of a value in its [`OpGraph`].
pub type ValueId = usize;

/// Where a value comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "source", rename_all = "snake_case")]
pub enum ValueSource {
    /// The request's token ids, which start on the device.
    RequestInput,
    /// Produced by an operator.
    Op {
        /// The producer.
        op: OpId,
    },
    /// The KV cache of `layer` (keys or values): state that lives where that layer's attention
    /// runs (SPEC §7), read and extended by the attention operators, never sent per request.
    KvCache {
        /// The layer.
        layer: usize,
        /// Keys rather than values.
        key: bool,
    },
}

/// A tensor flowing between operators.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Value {
    /// Name for plans and errors (`layer3.q`).
    pub name: String,
    /// Logical shape.
    pub shape: Vec<usize>,
    /// Size in bytes (token ids are 4 bytes each, everything else `dtype_bytes`).
    pub bytes: u64,
    /// Where it comes from.
    pub source: ValueSource,
}

/// One operator with its compute and memory-traffic properties.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Operator {
    /// Name for plans (`layer3.q_proj`).
    pub name: String,
    /// Decoder layer, if inside one.
    pub layer: Option<usize>,
    /// What it computes.
    pub kind: OpKind,
    /// Multiply-accumulates of its products (0 for elementwise work): SPEC §7's "operations".
    pub macs: u64,
    /// Floating-point operations (2 per MAC, plus elementwise work).
    pub flops: u64,
    /// Bytes read: inputs, weights, cache.
    pub bytes_read: u64,
    /// Bytes written: the output.
    pub bytes_written: u64,
    /// Bytes of weights among `bytes_read` (the part that must be resident where it runs).
    pub weight_bytes: u64,
    /// Input values, in the order the executor takes them.
    pub inputs: Vec<ValueId>,
    /// The value it produces.
    pub output: ValueId,
}

impl Operator {
    /// The cost class.
    pub fn class(&self) -> OpClass {
        self.kind.class()
    }

    /// Bytes moved to and from memory.
    pub fn bytes(&self) -> u64 {
        self.bytes_read + self.bytes_written
    }

    /// FLOPs per byte moved.
    pub fn intensity(&self) -> f64 {
        self.flops as f64 / self.bytes().max(1) as f64
    }

    /// The workload a [`crate::cost::CostModel`] prices.
    pub fn workload(&self) -> Workload {
        Workload::Operator {
            class: self.class(),
            flops: self.flops,
            bytes: self.bytes(),
        }
    }
}

/// The operator graph of one stage: operators in a topological order (the chain planners
/// walk), the values between them, and the model they came from.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct OpGraph {
    /// The model.
    pub config: DecoderConfig,
    /// The stage.
    pub stage: Stage,
    /// Operators in execution order; every input is produced earlier, is the request input or
    /// is a KV cache.
    pub ops: Vec<Operator>,
    /// Values, indexed by [`ValueId`].
    pub values: Vec<Value>,
    /// The value the stage returns to the caller (the next token id), which must end on the
    /// device.
    pub result: ValueId,
}

impl OpGraph {
    /// Operators that read `value`, in order.
    pub fn consumers(&self, value: ValueId) -> impl Iterator<Item = OpId> + '_ {
        self.ops
            .iter()
            .enumerate()
            .filter(move |(_, op)| op.inputs.contains(&value))
            .map(|(i, _)| i)
    }

    /// For each position `i` in `0..=ops.len()`, the values computed before `i` (or given as
    /// request input) that an operator at or after `i` still reads, or that are the result:
    /// what must cross the network if the location changes between operators `i - 1` and `i`.
    /// KV caches never appear: they stay with attention.
    pub fn live_sets(&self) -> Vec<Vec<ValueId>> {
        let n = self.ops.len();
        let mut last_use = vec![None::<usize>; self.values.len()];
        for (i, op) in self.ops.iter().enumerate() {
            for &v in &op.inputs {
                last_use[v] = Some(i);
            }
        }
        last_use[self.result] = Some(n);
        let born = |v: ValueId| match self.values[v].source {
            ValueSource::RequestInput => Some(0),
            ValueSource::Op { op } => Some(op + 1),
            ValueSource::KvCache { .. } => None,
        };
        (0..=n)
            .map(|i| {
                (0..self.values.len())
                    .filter(|&v| matches!((born(v), last_use[v]), (Some(b), Some(u)) if b <= i && u >= i))
                    .collect()
            })
            .collect()
    }

    /// Total FLOPs.
    pub fn flops(&self) -> u64 {
        self.ops.iter().map(|o| o.flops).sum()
    }

    /// Total weight bytes read.
    pub fn weight_bytes(&self) -> u64 {
        self.ops.iter().map(|o| o.weight_bytes).sum()
    }
}
