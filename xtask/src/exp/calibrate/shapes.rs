//! The operators the calibration times: their shapes, read from lowered decoder graphs, and the
//! backend primitives that run them.

use collab_core::model::decoder::causal_mask;
use std::collections::BTreeMap;
use std::time::Instant;

use anyhow::{Result, bail};
use collab_backends::candle::CandleBackend;
use collab_core::Backend;
use collab_core::cost::time_median;
use collab_core::graph::{DecoderConfig, LayerGraph, OpClass, OpKind, Stage};

type B = CandleBackend;
type T = <B as Backend>::Tensor;

/// Fewest and most timed calls in one visit of a shape.
const REPEATS: (usize, usize) = (3, 1001);

/// What a measured operator runs, with the sizes of its inputs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(super) enum Shape {
    /// `linear(x [n, fan_in], W [fan_out, fan_in])`.
    Linear {
        n: usize,
        fan_in: usize,
        fan_out: usize,
    },
    /// `q [heads, n, d] x k^T [heads, d, t]`.
    Scores {
        heads: usize,
        n: usize,
        t: usize,
        d: usize,
    },
    /// `softmax_last(s [heads, n, t])`.
    Softmax { heads: usize, n: usize, t: usize },
    /// `p [heads, n, t] x v [heads, t, d]`.
    Context {
        heads: usize,
        n: usize,
        t: usize,
        d: usize,
    },
    /// `rms_norm(x [n, h], gamma [h])`.
    RmsNorm { n: usize, h: usize },
    /// `add(a [n, h], b [n, h])`.
    Residual { n: usize, h: usize },
    /// `mul(silu(g [n, f]), u [n, f])`.
    SiluMul { n: usize, f: usize },
}

/// Names of the kinds, as written in `points.csv`.
const KINDS: [&str; 7] = [
    "linear",
    "attn_scores",
    "softmax",
    "attn_context",
    "rms_norm",
    "residual",
    "silu_mul",
];

impl Shape {
    /// The kind's name and its four sizes (unused ones 0), as `points.csv` stores them.
    pub(super) fn columns(&self) -> (&'static str, [usize; 4]) {
        match *self {
            Shape::Linear { n, fan_in, fan_out } => (KINDS[0], [n, fan_in, fan_out, 0]),
            Shape::Scores { heads, n, t, d } => (KINDS[1], [heads, n, t, d]),
            Shape::Softmax { heads, n, t } => (KINDS[2], [heads, n, t, 0]),
            Shape::Context { heads, n, t, d } => (KINDS[3], [heads, n, t, d]),
            Shape::RmsNorm { n, h } => (KINDS[4], [n, h, 0, 0]),
            Shape::Residual { n, h } => (KINDS[5], [n, h, 0, 0]),
            Shape::SiluMul { n, f } => (KINDS[6], [n, f, 0, 0]),
        }
    }

    /// The inverse of [`Shape::columns`].
    pub(super) fn from_columns(kind: &str, v: [usize; 4]) -> Result<Self> {
        Ok(match kind {
            "linear" => Shape::Linear {
                n: v[0],
                fan_in: v[1],
                fan_out: v[2],
            },
            "attn_scores" => Shape::Scores {
                heads: v[0],
                n: v[1],
                t: v[2],
                d: v[3],
            },
            "softmax" => Shape::Softmax {
                heads: v[0],
                n: v[1],
                t: v[2],
            },
            "attn_context" => Shape::Context {
                heads: v[0],
                n: v[1],
                t: v[2],
                d: v[3],
            },
            "rms_norm" => Shape::RmsNorm { n: v[0], h: v[1] },
            "residual" => Shape::Residual { n: v[0], h: v[1] },
            "silu_mul" => Shape::SiluMul { n: v[0], f: v[1] },
            other => bail!(
                "unknown operator kind `{other}` (known: {})",
                KINDS.join(", ")
            ),
        })
    }

    /// `decode` for one new token (a linear of one row, attention of one query), else
    /// `prefill`.
    pub(super) fn stage(&self) -> &'static str {
        let n = match *self {
            Shape::Linear { n, .. }
            | Shape::Scores { n, .. }
            | Shape::Softmax { n, .. }
            | Shape::Context { n, .. }
            | Shape::RmsNorm { n, .. }
            | Shape::Residual { n, .. }
            | Shape::SiluMul { n, .. } => n,
        };
        if n == 1 { "decode" } else { "prefill" }
    }
}

/// An operator to time: its shape and the IR's class, FLOPs and bytes.
#[derive(Clone, Copy, Debug)]
pub(super) struct Op {
    pub(super) shape: Shape,
    pub(super) class: OpClass,
    pub(super) flops: u64,
    pub(super) bytes: u64,
}

/// The distinct operators of layer 0 and the head of every config at every stage, by shape.
pub(super) fn operators(configs: &[DecoderConfig], stages: &[Stage]) -> Result<Vec<Op>> {
    let mut found: BTreeMap<Shape, Op> = BTreeMap::new();
    for cfg in configs {
        let layers = LayerGraph::decoder(cfg)?;
        for &stage in stages {
            let g = layers.lower(stage);
            for op in g.ops.iter().filter(|o| o.layer.unwrap_or(0) == 0) {
                let out = &g.values[op.output].shape;
                let input = |i: usize| &g.values[op.inputs[i]].shape;
                let d = cfg.head_dim();
                let shape = match op.kind {
                    OpKind::Linear { .. } => Shape::Linear {
                        n: out[0],
                        fan_in: input(0)[1],
                        fan_out: out[1],
                    },
                    OpKind::AttnScores => Shape::Scores {
                        heads: out[0],
                        n: out[1],
                        t: out[2],
                        d,
                    },
                    OpKind::Softmax => Shape::Softmax {
                        heads: out[0],
                        n: out[1],
                        t: out[2],
                    },
                    OpKind::AttnContext => Shape::Context {
                        heads: input(0)[0],
                        n: input(0)[1],
                        t: input(0)[2],
                        d,
                    },
                    OpKind::RmsNorm { .. } => Shape::RmsNorm {
                        n: out[0],
                        h: out[1],
                    },
                    OpKind::Residual => Shape::Residual {
                        n: out[0],
                        h: out[1],
                    },
                    OpKind::SiluMul => Shape::SiluMul {
                        n: out[0],
                        f: out[1],
                    },
                    // RoPE, embedding and argmax have no single backend primitive to time.
                    _ => continue,
                };
                let new = Op {
                    shape,
                    class: op.class(),
                    flops: op.flops,
                    bytes: op.bytes(),
                };
                let old = found.entry(shape).or_insert(new);
                if (old.flops, old.bytes) != (new.flops, new.bytes) {
                    bail!("{shape:?}: the IR counts differ between configs ({old:?} vs {new:?})");
                }
            }
        }
    }
    Ok(found.into_values().collect())
}

/// Seeded values in [-1, 1) that every input is copied from: filling a 16M-element weight
/// value by value in this unoptimised crate would take longer than timing it.
pub(super) struct Pool(Vec<f32>);

impl Pool {
    /// Enough values for the largest input (a 16384 x 1024 LM head) plus offsets.
    pub(super) fn new(seed: u64) -> Self {
        // xorshift64: the values do not matter to the kernels, only that they are ordinary
        // floats.
        let mut state = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
        Pool(
            (0..(1usize << 24) + 4096)
                .map(|_| {
                    state ^= state << 13;
                    state ^= state >> 7;
                    state ^= state << 17;
                    (state >> 40) as f32 / (1u64 << 23) as f32 - 1.0
                })
                .collect(),
        )
    }

    /// `n` values starting at `offset` (wrapped into the pool).
    fn take(&self, n: usize, offset: usize) -> Result<Vec<f32>> {
        let start = offset % 4096;
        match self.0.get(start..start + n) {
            Some(v) => Ok(v.to_vec()),
            None => bail!("an input of {n} values is larger than the calibration's pool"),
        }
    }
}

/// Times `shape` on the backend: inputs of its sizes (from `pool`, at an offset drawn from
/// `seed`), one warm-up call, then the median of as many calls as fit in `budget` seconds
/// (within [`REPEATS`]).
pub(super) fn measure(be: &B, pool: &Pool, shape: Shape, seed: u64, budget: f64) -> Result<f64> {
    let mut offset = seed as usize;
    let mut t = |dims: &[usize]| -> Result<T> {
        offset = offset.wrapping_mul(31).wrapping_add(7);
        Ok(be.from_vec(pool.take(dims.iter().product(), offset)?, dims)?)
    };
    // Cold operands, as in inference, where each weight and cache is read once per token:
    // enough distinct copies of the operands to overflow the last-level cache, one per call.
    let copies = |dims: &[&[usize]]| {
        let bytes: usize = dims.iter().map(|d| 4 * d.iter().product::<usize>()).sum();
        (COLD_BYTES / bytes.max(1)).clamp(1, MAX_COPIES)
    };
    let mut call = 0usize;
    let mut next = move |n: usize| {
        call += 1;
        call % n
    };
    match shape {
        Shape::Linear { n, fan_in, fan_out } => {
            let k = copies(&[&[n, fan_in], &[fan_out, fan_in]]);
            let ops = (0..k)
                .map(|_| Ok((t(&[n, fan_in])?, t(&[fan_out, fan_in])?)))
                .collect::<Result<Vec<_>>>()?;
            time(budget, || {
                let (x, w) = &ops[next(k)];
                be.linear(x, w, None)
            })
        }
        Shape::Scores { heads, n, t: m, d } => {
            let k = copies(&[&[heads, n, d], &[heads, m, d]]);
            // A transposed view: gemm reads it in place, as the executor's does.
            let ops = (0..k)
                .map(|_| {
                    Ok((
                        t(&[heads, n, d])?,
                        be.permute(&t(&[heads, m, d])?, &[0, 2, 1])?,
                    ))
                })
                .collect::<Result<Vec<_>>>()?;
            time(budget, || {
                let (q, kt) = &ops[next(k)];
                be.matmul(q, kt)
            })
        }
        Shape::Softmax { heads, n, t: m } => {
            let k = copies(&[&[heads, n, m]]);
            let ops = (0..k)
                .map(|_| t(&[heads, n, m]))
                .collect::<Result<Vec<_>>>()?;
            // As the decoder's softmax operator runs it: scale, then softmax with the causal
            // mask (built per call) when more than one query is new.
            time(budget, || {
                let scaled = be.affine(&ops[next(k)], 0.125, 0.0)?;
                if n > 1 {
                    let mask = be.from_vec(causal_mask(m - n, n), &[n, m])?;
                    be.softmax_last(&scaled, Some(&mask))
                } else {
                    be.softmax_last(&scaled, None)
                }
            })
        }
        Shape::Context { heads, n, t: m, d } => {
            let k = copies(&[&[heads, n, m], &[heads, m, d]]);
            let ops = (0..k)
                .map(|_| Ok((t(&[heads, n, m])?, t(&[heads, m, d])?)))
                .collect::<Result<Vec<_>>>()?;
            time(budget, || {
                let (p, v) = &ops[next(k)];
                be.matmul(p, v)
            })
        }
        Shape::RmsNorm { n, h } => {
            let k = copies(&[&[n, h]]);
            let ops = (0..k)
                .map(|_| Ok((t(&[n, h])?, t(&[h])?)))
                .collect::<Result<Vec<_>>>()?;
            time(budget, || {
                let (x, g) = &ops[next(k)];
                be.rms_norm(x, g, 1e-5)
            })
        }
        Shape::Residual { n, h } => {
            let k = copies(&[&[n, h], &[n, h]]);
            let ops = (0..k)
                .map(|_| Ok((t(&[n, h])?, t(&[n, h])?)))
                .collect::<Result<Vec<_>>>()?;
            time(budget, || {
                let (a, b) = &ops[next(k)];
                be.add(a, b)
            })
        }
        Shape::SiluMul { n, f } => {
            let k = copies(&[&[n, f], &[n, f]]);
            let ops = (0..k)
                .map(|_| Ok((t(&[n, f])?, t(&[n, f])?)))
                .collect::<Result<Vec<_>>>()?;
            time(budget, || {
                let (g, u) = &ops[next(k)];
                be.mul(&be.silu(g)?, u)
            })
        }
    }
}

/// Bytes of distinct operands cycled through per timed shape (beyond this machine's
/// last-level cache), and the most copies made of small operands.
const COLD_BYTES: usize = 48 << 20;
const MAX_COPIES: usize = 256;

/// Streaming bandwidth in bytes/s: `a + b` over `elems` f32 each (two reads, one write).
pub(super) fn stream_bandwidth(be: &B, elems: usize) -> Result<f64> {
    let a = be.from_vec(vec![1.0; elems], &[elems])?;
    let b = be.from_vec(vec![2.0; elems], &[elems])?;
    let s = time_median(15, || be.add(&a, &b))?;
    Ok(12.0 * elems as f64 / s)
}

/// One untimed call, then the median of enough calls to fill `budget` seconds.
fn time<R>(budget: f64, mut f: impl FnMut() -> collab_core::Result<R>) -> Result<f64> {
    let start = Instant::now();
    f()?;
    let once = start.elapsed().as_secs_f64().max(1e-7);
    let repeats = ((budget / once).ceil() as usize).clamp(REPEATS.0, REPEATS.1);
    Ok(time_median(repeats, f)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shapes_come_from_the_ir_and_round_trip_through_their_columns() -> Result<()> {
        let cfg = DecoderConfig::llama_tiny();
        let stages = [Stage::Prefill { prompt: 4 }, Stage::Decode { past: 8 }];
        let ops = operators(std::slice::from_ref(&cfg), &stages)?;
        // q/k/v/o share a shape: per stage 4 linear shapes (h x h, h x f, f x h, lm head; the
        // head's one-row shape equals decode's, so 7 in all), 3 attention, 3 elementwise.
        let count = |class| ops.iter().filter(|o| o.class == class).count();
        assert_eq!(count(OpClass::Linear), 7);
        assert_eq!(count(OpClass::Attention), 4);
        assert_eq!(count(OpClass::Softmax), 2);
        for op in &ops {
            let (kind, cols) = op.shape.columns();
            assert_eq!(Shape::from_columns(kind, cols)?, op.shape);
            if let Shape::Linear { n, fan_in, fan_out } = op.shape {
                assert_eq!(op.flops, 2 * (n * fan_in * fan_out) as u64);
                assert_eq!(
                    op.bytes,
                    4 * (n * fan_in + fan_in * fan_out + n * fan_out) as u64
                );
            }
        }
        let be = B::cpu();
        let pool = Pool::new(1);
        for op in &ops {
            assert!(measure(&be, &pool, op.shape, 3, 1e-4)? > 0.0);
        }
        Ok(())
    }
}
