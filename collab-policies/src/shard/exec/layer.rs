//! One layer computed from a subset of its shards (SPEC §3 (a)).
//!
//! A layer's attention is the sum over heads of each head's output projected by its slice of
//! the output projection, plus the projection bias; its FFN is the sum over neuron slices of
//! `fc2[:, slice] gelu(fc1[slice] x + b1[slice])`, plus the fc2 bias. Running a subset of the
//! shards therefore drops whole terms of both sums and nothing else: with every shard present
//! the result is the dense block's. Norms and residuals are placed as the model places them
//! (pre-norm ViT, post-norm BERT).
//!
//! Shards are computed `chunk` at a time: their parts are assembled into one multi-head
//! attention and one FFN slice, computed, and dropped before the next chunk, so the f32
//! weights alive at once are one chunk's (precisely counted by the [`WeightMeter`]).

use std::sync::Arc;

use collab_core::model::{Attention, Hidden, LayerNorm, Linear, NormPlacement};
use collab_core::{Backend, Error, Result};

use super::super::ShardGeometry;
use super::super::layout::{AttentionPart, FfnPart};
use super::super::meter::{Held, WeightMeter};

/// The parameters of a layer that belong to no shard, resident on the device.
#[derive(Debug)]
pub struct LayerTensors<B: Backend> {
    /// Norm of the attention sub-block.
    pub norm1: LayerNorm<B>,
    /// Norm of the FFN sub-block.
    pub norm2: LayerNorm<B>,
    /// Output-projection bias `[d]`.
    pub proj_bias: B::Tensor,
    /// fc2 bias `[d]`.
    pub fc2_bias: B::Tensor,
    /// The bytes of the above, counted while they live.
    pub held: Held,
}

/// Where the shards a layer runs come from: decoded on demand from bytes held in memory.
pub trait PartSource {
    /// Shards this layer runs.
    fn len(&self) -> usize;
    /// Whether the layer runs no shard.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// The attention part of the `i`-th shard run.
    ///
    /// # Errors
    /// Decoding errors.
    fn attention(&self, i: usize) -> Result<AttentionPart>;
    /// The FFN part of the `i`-th shard run.
    ///
    /// # Errors
    /// Decoding errors.
    fn ffn(&self, i: usize) -> Result<FfnPart>;
}

fn part_bytes(parts: &[&[f32]]) -> u64 {
    4 * parts.iter().map(|p| p.len() as u64).sum::<u64>()
}

/// One multi-head attention from the attention parts of `chunk` shards: q rows of every shard,
/// then k rows, then v rows; output-projection columns side by side.
fn assemble_attention<B: Backend>(
    backend: &B,
    g: &ShardGeometry,
    parts: &[AttentionPart],
) -> Result<Attention<B>> {
    let (d, hd, c) = (g.hidden, g.head_dim, parts.len());
    let mut qkv = Vec::with_capacity(3 * c * hd * d);
    let mut bias = Vec::with_capacity(3 * c * hd);
    for which in 0..3 {
        for p in parts {
            qkv.extend_from_slice(&p.qkv[which * hd * d..(which + 1) * hd * d]);
            bias.extend_from_slice(&p.qkv_bias[which * hd..(which + 1) * hd]);
        }
    }
    let mut o = Vec::with_capacity(d * c * hd);
    for r in 0..d {
        for p in parts {
            o.extend_from_slice(&p.o[r * hd..(r + 1) * hd]);
        }
    }
    Ok(Attention::new(
        Linear {
            w: backend.from_vec(qkv, &[3 * c * hd, d])?,
            b: Some(backend.from_vec(bias, &[3 * c * hd])?),
        },
        Linear {
            w: backend.from_vec(o, &[d, c * hd])?,
            b: None,
        },
        c,
        (hd as f32).powf(-0.5),
    ))
}

/// fc1 rows stacked and fc2 columns side by side for `chunk` shards.
fn assemble_ffn<B: Backend>(
    backend: &B,
    g: &ShardGeometry,
    parts: &[FfnPart],
) -> Result<(Linear<B>, Linear<B>)> {
    let (d, s, c) = (g.hidden, g.ffn_slice(), parts.len());
    let mut fc1 = Vec::with_capacity(c * s * d);
    let mut b1 = Vec::with_capacity(c * s);
    for p in parts {
        fc1.extend_from_slice(&p.fc1);
        b1.extend_from_slice(&p.fc1_bias);
    }
    let mut fc2 = Vec::with_capacity(d * c * s);
    for r in 0..d {
        for p in parts {
            fc2.extend_from_slice(&p.fc2[r * s..(r + 1) * s]);
        }
    }
    Ok((
        Linear {
            w: backend.from_vec(fc1, &[c * s, d])?,
            b: Some(backend.from_vec(b1, &[c * s])?),
        },
        Linear {
            w: backend.from_vec(fc2, &[d, c * s])?,
            b: None,
        },
    ))
}

/// How the layer is computed.
#[derive(Clone, Copy, Debug)]
pub struct LayerRun<'a> {
    /// The model's shard geometry.
    pub geometry: &'a ShardGeometry,
    /// Shards assembled and computed at once (at least 1).
    pub chunk: usize,
}

impl LayerRun<'_> {
    /// `Σ over chunks of chunk_out(range) + bias`, where `chunk_out` decodes, assembles, uses
    /// and drops one chunk's weights before the next chunk's. No shard gives `x`-shaped `bias`.
    fn sum_chunks<B: Backend>(
        &self,
        backend: &B,
        n: usize,
        x: &B::Tensor,
        bias: &B::Tensor,
        chunk_out: &mut dyn FnMut(std::ops::Range<usize>) -> Result<B::Tensor>,
    ) -> Result<B::Tensor> {
        let step = self.chunk.max(1);
        let mut acc: Option<B::Tensor> = None;
        for start in (0..n).step_by(step) {
            let out = chunk_out(start..(start + step).min(n))?;
            acc = Some(match acc {
                Some(a) => backend.add(&a, &out)?,
                None => out,
            });
        }
        match acc {
            Some(a) => backend.add(&a, bias),
            None => backend.add(&backend.zeros(&backend.dims(x))?, bias),
        }
    }

    /// Sum over the chunks of the shards' attention outputs, plus the projection bias.
    fn attention<B: Backend>(
        &self,
        backend: &B,
        layer: &LayerTensors<B>,
        parts: &dyn PartSource,
        x: &B::Tensor,
        bias: Option<&B::Tensor>,
        meter: &Arc<WeightMeter>,
    ) -> Result<B::Tensor> {
        let mut chunk = |range: std::ops::Range<usize>| -> Result<B::Tensor> {
            let decoded = range
                .map(|i| parts.attention(i))
                .collect::<Result<Vec<_>>>()?;
            let bytes = part_bytes(
                &decoded
                    .iter()
                    .flat_map(|p| [&p.qkv[..], &p.qkv_bias[..], &p.o[..]])
                    .collect::<Vec<_>>(),
            );
            // The decoded parts, then (for a moment both) their assembled copy.
            let held_parts = meter.hold(bytes);
            let att = assemble_attention(backend, self.geometry, &decoded)?;
            let _held = meter.hold(bytes);
            drop((decoded, held_parts));
            Ok(att.forward(backend, x, bias)?.0)
        };
        self.sum_chunks(backend, parts.len(), x, &layer.proj_bias, &mut chunk)
    }

    /// Sum over the chunks of the shards' FFN outputs, plus the fc2 bias.
    fn ffn<B: Backend>(
        &self,
        backend: &B,
        layer: &LayerTensors<B>,
        parts: &dyn PartSource,
        x: &B::Tensor,
        meter: &Arc<WeightMeter>,
    ) -> Result<B::Tensor> {
        let mut chunk = |range: std::ops::Range<usize>| -> Result<B::Tensor> {
            let decoded = range.map(|i| parts.ffn(i)).collect::<Result<Vec<_>>>()?;
            let bytes = part_bytes(
                &decoded
                    .iter()
                    .flat_map(|p| [&p.fc1[..], &p.fc1_bias[..], &p.fc2[..]])
                    .collect::<Vec<_>>(),
            );
            let held_parts = meter.hold(bytes);
            let (fc1, fc2) = assemble_ffn(backend, self.geometry, &decoded)?;
            let _held = meter.hold(bytes);
            drop((decoded, held_parts));
            let h = backend.gelu_erf(&fc1.forward(backend, x)?)?;
            fc2.forward(backend, &h)
        };
        self.sum_chunks(backend, parts.len(), x, &layer.fc2_bias, &mut chunk)
    }

    /// Runs the layer on `hidden` with the shards of `parts`.
    ///
    /// # Errors
    /// [`Error::InvalidInput`] if `parts` offers more shards than the layer has; decoding and
    /// backend errors.
    pub fn forward<B: Backend>(
        &self,
        backend: &B,
        layer: &LayerTensors<B>,
        parts: &dyn PartSource,
        hidden: Hidden<B>,
        meter: &Arc<WeightMeter>,
    ) -> Result<Hidden<B>> {
        if parts.len() > self.geometry.heads {
            return Err(Error::InvalidInput(format!(
                "{} shards for a layer of {}",
                parts.len(),
                self.geometry.heads
            )));
        }
        let mut h = hidden;
        let bias = h.attention_bias(backend)?;
        match self.geometry.norm {
            NormPlacement::Pre => {
                let a = layer.norm1.forward(backend, &h.x)?;
                let att = self.attention(backend, layer, parts, &a, bias.as_ref(), meter)?;
                h.x = backend.add(&h.x, &att)?;
                let m = layer.norm2.forward(backend, &h.x)?;
                let f = self.ffn(backend, layer, parts, &m, meter)?;
                h.x = backend.add(&h.x, &f)?;
            }
            NormPlacement::Post => {
                let att = self.attention(backend, layer, parts, &h.x, bias.as_ref(), meter)?;
                h.x = layer.norm1.forward(backend, &backend.add(&h.x, &att)?)?;
                let f = self.ffn(backend, layer, parts, &h.x, meter)?;
                h.x = layer.norm2.forward(backend, &backend.add(&h.x, &f)?)?;
            }
        }
        Ok(h)
    }
}
