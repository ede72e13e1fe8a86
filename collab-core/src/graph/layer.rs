//! The layer graph (model structure and dependencies) and its lowering to operators.

use serde::{Deserialize, Serialize};

use super::DecoderConfig;
use super::op::{
    NormSite, OpGraph, OpKind, Operator, Projection, Stage, Value, ValueId, ValueSource,
};
use crate::Result;

/// What a layer of the layer graph is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "layer", rename_all = "snake_case")]
pub enum LayerKind {
    /// Token embedding.
    Embedding,
    /// Decoder layer `index` (0-based): attention and SwiGLU FFN with pre-RMSNorm residuals.
    Decoder {
        /// Its position.
        index: usize,
    },
    /// Final RMSNorm and LM head, with greedy sampling.
    Head,
}

/// A node of the layer graph.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Layer {
    /// What it is.
    pub kind: LayerKind,
    /// Layers whose output it reads (indices into [`LayerGraph::layers`]).
    pub deps: Vec<usize>,
}

/// The model structure: layers and their dependencies (a chain for a decoder).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LayerGraph {
    /// The sizes.
    pub config: DecoderConfig,
    /// Layers in dependency order.
    pub layers: Vec<Layer>,
}

impl LayerGraph {
    /// The layer graph of a LLaMA-style decoder.
    ///
    /// # Errors
    /// [`crate::Error::Config`] if the sizes are invalid.
    pub fn decoder(config: &DecoderConfig) -> Result<Self> {
        config.validate()?;
        let mut layers = vec![Layer {
            kind: LayerKind::Embedding,
            deps: vec![],
        }];
        for index in 0..config.layers {
            layers.push(Layer {
                kind: LayerKind::Decoder { index },
                deps: vec![index],
            });
        }
        layers.push(Layer {
            kind: LayerKind::Head,
            deps: vec![config.layers],
        });
        Ok(LayerGraph {
            config: config.clone(),
            layers,
        })
    }

    /// Lowers to the operator graph of `stage`, annotating every operator with MACs, FLOPs,
    /// bytes read and written (weights included) and its input values.
    ///
    /// Counts follow SPEC §7 with `n` new tokens, `t = past + n` attended tokens, `H` heads and
    /// `b` bytes per element: a linear `in → out` does `n·in·out` MACs and moves
    /// `(n·in + in·out + n·out)·b` bytes; `QK^T` does `n·t·h` MACs reading `(n·h + t·h)·b` and
    /// writing `H·n·t·b`; `PV` does `n·t·h` MACs reading `(H·n·t + t·h)·b` and writing `n·h·b`.
    /// The final norm and LM head run on the last token only.
    pub fn lower(&self, stage: Stage) -> OpGraph {
        Lowering::new(&self.config, stage).run(&self.layers)
    }
}

struct Lowering<'a> {
    cfg: &'a DecoderConfig,
    stage: Stage,
    ops: Vec<Operator>,
    values: Vec<Value>,
}

/// What an operator costs, before its output value is attached.
struct Counts {
    macs: u64,
    extra_flops: u64,
    read_elems: u64,
    written_elems: u64,
    weight_elems: u64,
}

impl<'a> Lowering<'a> {
    fn new(cfg: &'a DecoderConfig, stage: Stage) -> Self {
        Lowering {
            cfg,
            stage,
            ops: Vec::new(),
            values: Vec::new(),
        }
    }

    fn value(
        &mut self,
        name: String,
        shape: Vec<usize>,
        bytes: u64,
        source: ValueSource,
    ) -> ValueId {
        self.values.push(Value {
            name,
            shape,
            bytes,
            source,
        });
        self.values.len() - 1
    }

    /// Adds an operator producing a `dtype_bytes` activation of `shape`.
    fn op(
        &mut self,
        name: String,
        layer: Option<usize>,
        kind: OpKind,
        inputs: Vec<ValueId>,
        shape: Vec<usize>,
        c: Counts,
    ) -> ValueId {
        let b = self.cfg.dtype_bytes as u64;
        let elems: u64 = shape.iter().map(|&d| d as u64).product();
        let out_bytes = if kind == OpKind::Argmax { 4 } else { elems * b };
        let id = self.ops.len();
        let out = self.value(name.clone(), shape, out_bytes, ValueSource::Op { op: id });
        self.ops.push(Operator {
            name,
            layer,
            kind,
            macs: c.macs,
            flops: 2 * c.macs + c.extra_flops,
            bytes_read: c.read_elems * b,
            bytes_written: if kind == OpKind::Argmax {
                4
            } else {
                c.written_elems * b
            },
            weight_bytes: c.weight_elems * b,
            inputs,
            output: out,
        });
        out
    }

    fn run(mut self, layers: &[super::layer::Layer]) -> OpGraph {
        let n = self.stage.new_tokens();
        let ids = self.value(
            "token_ids".into(),
            vec![n],
            4 * n as u64,
            ValueSource::RequestInput,
        );
        let mut x = ids;
        for layer in layers {
            x = match layer.kind {
                LayerKind::Embedding => self.embedding(ids),
                LayerKind::Decoder { index } => self.decoder_layer(index, x),
                LayerKind::Head => self.head(x),
            };
        }
        OpGraph {
            config: self.cfg.clone(),
            stage: self.stage,
            ops: self.ops,
            values: self.values,
            result: x,
        }
    }

    fn embedding(&mut self, ids: ValueId) -> ValueId {
        let (n, h) = (self.stage.new_tokens() as u64, self.cfg.hidden as u64);
        // Reads n rows of the table (the token ids are 4-byte integers, counted as one element
        // each for simplicity of the dtype-uniform count) and writes them.
        let c = Counts {
            macs: 0,
            extra_flops: 0,
            read_elems: n * h + n,
            written_elems: n * h,
            weight_elems: n * h,
        };
        self.op(
            "embed".into(),
            None,
            OpKind::Embed,
            vec![ids],
            vec![n as usize, h as usize],
            c,
        )
    }

    fn rms_norm(
        &mut self,
        name: String,
        layer: Option<usize>,
        site: NormSite,
        x: ValueId,
        rows: u64,
    ) -> ValueId {
        let h = self.cfg.hidden as u64;
        let c = Counts {
            macs: 0,
            extra_flops: 4 * rows * h,
            read_elems: rows * h + h,
            written_elems: rows * h,
            weight_elems: h,
        };
        self.op(
            name,
            layer,
            OpKind::RmsNorm { site },
            vec![x],
            vec![rows as usize, h as usize],
            c,
        )
    }

    fn linear(
        &mut self,
        name: String,
        layer: Option<usize>,
        proj: Projection,
        x: ValueId,
        rows: u64,
        (fan_in, fan_out): (u64, u64),
    ) -> ValueId {
        let c = Counts {
            macs: rows * fan_in * fan_out,
            extra_flops: 0,
            read_elems: rows * fan_in + fan_in * fan_out,
            written_elems: rows * fan_out,
            weight_elems: fan_in * fan_out,
        };
        self.op(
            name,
            layer,
            OpKind::Linear { proj },
            vec![x],
            vec![rows as usize, fan_out as usize],
            c,
        )
    }

    fn elementwise(
        &mut self,
        name: String,
        layer: usize,
        kind: OpKind,
        inputs: Vec<ValueId>,
        width: u64,
        flops_per: u64,
    ) -> ValueId {
        let n = self.stage.new_tokens() as u64;
        let arity = inputs.len() as u64;
        let c = Counts {
            macs: 0,
            extra_flops: flops_per * n * width,
            read_elems: arity * n * width,
            written_elems: n * width,
            weight_elems: 0,
        };
        self.op(
            name,
            Some(layer),
            kind,
            inputs,
            vec![n as usize, width as usize],
            c,
        )
    }

    fn decoder_layer(&mut self, l: usize, x: ValueId) -> ValueId {
        let cfg = self.cfg;
        let (n, h, f) = (
            self.stage.new_tokens() as u64,
            cfg.hidden as u64,
            cfg.intermediate as u64,
        );
        let heads = cfg.heads as u64;
        let t = self.stage.past_tokens() as u64 + n;
        let p = |s: &str| format!("layer{l}.{s}");
        let xn = self.rms_norm(p("attn_norm"), Some(l), NormSite::Attention, x, n);
        let q = self.linear(p("q_proj"), Some(l), Projection::Q, xn, n, (h, h));
        let k = self.linear(p("k_proj"), Some(l), Projection::K, xn, n, (h, h));
        let v = self.linear(p("v_proj"), Some(l), Projection::V, xn, n, (h, h));
        // RoPE: a rotation of each pair, ~3 FLOPs per element, reading cos/sin alongside.
        let q = self.elementwise(p("rope_q"), l, OpKind::Rope { key: false }, vec![q], h, 3);
        let k = self.elementwise(p("rope_k"), l, OpKind::Rope { key: true }, vec![k], h, 3);
        let k_cache = self.value(
            p("k_cache"),
            vec![t as usize - n as usize, h as usize],
            (t - n) * h * cfg.dtype_bytes as u64,
            ValueSource::KvCache {
                layer: l,
                key: true,
            },
        );
        let v_cache = self.value(
            p("v_cache"),
            vec![t as usize - n as usize, h as usize],
            (t - n) * h * cfg.dtype_bytes as u64,
            ValueSource::KvCache {
                layer: l,
                key: false,
            },
        );
        let scores = Counts {
            macs: n * t * h,
            extra_flops: 0,
            read_elems: n * h + t * h,
            written_elems: heads * n * t,
            weight_elems: 0,
        };
        let s = self.op(
            p("attn_scores"),
            Some(l),
            OpKind::AttnScores,
            vec![q, k, k_cache],
            vec![heads as usize, n as usize, t as usize],
            scores,
        );
        // Scale, mask, max, exp, sum, divide: ~5 FLOPs per score.
        let softmax = Counts {
            macs: 0,
            extra_flops: 5 * heads * n * t,
            read_elems: heads * n * t,
            written_elems: heads * n * t,
            weight_elems: 0,
        };
        let pr = self.op(
            p("softmax"),
            Some(l),
            OpKind::Softmax,
            vec![s],
            vec![heads as usize, n as usize, t as usize],
            softmax,
        );
        let ctx = Counts {
            macs: n * t * h,
            extra_flops: 0,
            read_elems: heads * n * t + t * h,
            written_elems: n * h,
            weight_elems: 0,
        };
        let a = self.op(
            p("attn_context"),
            Some(l),
            OpKind::AttnContext,
            vec![pr, v, v_cache],
            vec![n as usize, h as usize],
            ctx,
        );
        let o = self.linear(p("o_proj"), Some(l), Projection::O, a, n, (h, h));
        let x1 = self.elementwise(p("attn_residual"), l, OpKind::Residual, vec![x, o], h, 1);
        let xn2 = self.rms_norm(p("ffn_norm"), Some(l), NormSite::Ffn, x1, n);
        let g = self.linear(p("gate_proj"), Some(l), Projection::Gate, xn2, n, (h, f));
        let u = self.linear(p("up_proj"), Some(l), Projection::Up, xn2, n, (h, f));
        // silu(g) * u: exp, add, divide, multiply.
        let m = self.elementwise(p("silu_mul"), l, OpKind::SiluMul, vec![g, u], f, 4);
        let d = self.linear(p("down_proj"), Some(l), Projection::Down, m, n, (f, h));
        self.elementwise(p("ffn_residual"), l, OpKind::Residual, vec![x1, d], h, 1)
    }

    fn head(&mut self, x: ValueId) -> ValueId {
        let (h, v) = (self.cfg.hidden as u64, self.cfg.vocab as u64);
        let xn = self.rms_norm("final_norm".into(), None, NormSite::Final, x, 1);
        let logits = self.linear("lm_head".into(), None, Projection::LmHead, xn, 1, (h, v));
        let c = Counts {
            macs: 0,
            extra_flops: v,
            read_elems: v,
            written_elems: 1,
            weight_elems: 0,
        };
        self.op(
            "argmax".into(),
            None,
            OpKind::Argmax,
            vec![logits],
            vec![1],
            c,
        )
    }
}
