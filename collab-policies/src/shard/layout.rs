//! Cutting one layer into vertical shards (SPEC §3 (a)).
//!
//! Shard `h` of a layer is attention head `h` — its query, key and value rows of the fused
//! `qkv` projection with their biases, and its columns of the output projection — together
//! with FFN neurons `h s..(h + 1) s` (`s = intermediate / heads`): those rows of `fc1` with
//! their biases and those columns of `fc2`. What belongs to no shard (the two norms, the
//! output-projection bias and the `fc2` bias) is the layer's [`LayerResident`] part.
//!
//! A layer's attention output is the sum over heads of each head's projected output, and its
//! FFN output the sum over neuron slices, so any subset of shards computes a well-defined
//! partial layer, and all of them compute the dense layer. [`assemble_layer`] is the exact
//! inverse of [`cut_layer`].

use collab_core::model::{Block, Linear, Transformer};
use collab_core::{Backend, Error, Result};

use super::ShardGeometry;

/// The attention part of one shard (head `h`), f32 row-major.
#[derive(Clone, Debug, PartialEq)]
pub struct AttentionPart {
    /// `[3 hd, d]`: the head's query rows, then its key rows, then its value rows.
    pub qkv: Vec<f32>,
    /// `[3 hd]`: the matching biases (zeros if the model has none).
    pub qkv_bias: Vec<f32>,
    /// `[d, hd]`: columns `h hd..(h + 1) hd` of the output projection.
    pub o: Vec<f32>,
}

/// The FFN part of one shard (neurons `h s..(h + 1) s`), f32 row-major.
#[derive(Clone, Debug, PartialEq)]
pub struct FfnPart {
    /// `[s, d]`: rows of `fc1`.
    pub fc1: Vec<f32>,
    /// `[s]`: their biases (zeros if the model has none).
    pub fc1_bias: Vec<f32>,
    /// `[d, s]`: columns of `fc2`.
    pub fc2: Vec<f32>,
}

/// One whole shard: its attention part and its FFN part.
#[derive(Clone, Debug, PartialEq)]
pub struct ShardWeights {
    /// Head `h`.
    pub attention: AttentionPart,
    /// FFN slice `h`.
    pub ffn: FfnPart,
}

impl ShardWeights {
    /// The four weight matrices in storage order: `qkv`, `o`, `fc1`, `fc2` (biases excluded).
    pub fn matrices(&self) -> [&[f32]; 4] {
        [
            &self.attention.qkv,
            &self.attention.o,
            &self.ffn.fc1,
            &self.ffn.fc2,
        ]
    }

    /// Relative reconstruction error of `approx` against `self` over the four weight matrices:
    /// `||self - approx||_F / ||self||_F` (0 when both are zero; `f64::INFINITY` when only
    /// `self` is zero or the sizes differ).
    pub fn relative_error(&self, approx: &ShardWeights) -> f64 {
        let (mut num, mut den) = (0f64, 0f64);
        for (a, b) in self.matrices().into_iter().zip(approx.matrices()) {
            if a.len() != b.len() {
                return f64::INFINITY;
            }
            for (&x, &y) in a.iter().zip(b) {
                num += f64::from(x - y).powi(2);
                den += f64::from(x).powi(2);
            }
        }
        if num == 0.0 {
            0.0
        } else if den == 0.0 {
            f64::INFINITY
        } else {
            (num / den).sqrt()
        }
    }
}

/// What of a layer belongs to no shard: always resident, f32, each `[d]`.
#[derive(Clone, Debug, PartialEq)]
pub struct LayerResident {
    /// Scale of the attention sub-block's norm.
    pub norm1_gamma: Vec<f32>,
    /// Shift of the attention sub-block's norm.
    pub norm1_beta: Vec<f32>,
    /// Scale of the FFN sub-block's norm.
    pub norm2_gamma: Vec<f32>,
    /// Shift of the FFN sub-block's norm.
    pub norm2_beta: Vec<f32>,
    /// Output-projection bias (zeros if the model has none).
    pub proj_bias: Vec<f32>,
    /// `fc2` bias (zeros if the model has none).
    pub fc2_bias: Vec<f32>,
    /// Epsilon of both norms.
    pub eps: f32,
}

/// A layer's dense weights, row-major f32, as the model holds them.
#[derive(Clone, Debug, PartialEq)]
pub struct AssembledLayer {
    /// `[3 d, d]`: all query rows, then all key rows, then all value rows.
    pub qkv: Vec<f32>,
    /// `[3 d]`.
    pub qkv_bias: Vec<f32>,
    /// Output projection `[d, d]`.
    pub proj: Vec<f32>,
    /// `[I, d]`.
    pub fc1: Vec<f32>,
    /// `[I]`.
    pub fc1_bias: Vec<f32>,
    /// `[d, I]`.
    pub fc2: Vec<f32>,
}

/// The values of a tensor, checked to have `shape`.
fn values<B: Backend>(backend: &B, t: &B::Tensor, shape: &[usize], what: &str) -> Result<Vec<f32>> {
    let dims = backend.dims(t);
    if dims != shape {
        return Err(Error::shape(
            "cut_layer",
            format!("{what} has shape {dims:?}, expected {shape:?}"),
        ));
    }
    backend.to_vec(t)
}

/// A linear layer's weight `[out, inp]` and bias `[out]` (zeros when absent).
fn linear<B: Backend>(
    backend: &B,
    l: &Linear<B>,
    out: usize,
    inp: usize,
    what: &str,
) -> Result<(Vec<f32>, Vec<f32>)> {
    let w = values(backend, &l.w, &[out, inp], &format!("{what} weight"))?;
    let b = match &l.b {
        Some(b) => values(backend, b, &[out], &format!("{what} bias"))?,
        None => vec![0.0; out],
    };
    Ok((w, b))
}

/// Columns `c0..c0 + width` of a row-major `[rows, cols]` matrix, as `[rows, width]`.
fn columns(m: &[f32], cols: usize, c0: usize, width: usize) -> Vec<f32> {
    m.chunks_exact(cols)
        .flat_map(|row| &row[c0..c0 + width])
        .copied()
        .collect()
}

/// Cuts layer `layer` of `model` into its `heads` shards (in head order) and its resident part.
///
/// # Errors
/// [`Error::InvalidInput`] if the model has no such layer; [`Error::Config`] if its FFN cannot
/// be cut into equal slices ([`ShardGeometry::of`]); [`Error::Shape`] if a parameter does not
/// have the shape the configuration implies; backend errors.
pub fn cut_layer<B: Backend>(
    model: &Transformer<B>,
    layer: usize,
) -> Result<(Vec<ShardWeights>, LayerResident)> {
    let g = ShardGeometry::of(model.config().encoder())?;
    let block: &Block<B> = model.blocks().get(layer).ok_or_else(|| {
        Error::InvalidInput(format!(
            "layer {layer} out of range: the model has {} layers",
            model.blocks().len()
        ))
    })?;
    let be = model.backend();
    let (d, hd, s, i) = (g.hidden, g.head_dim, g.ffn_slice(), g.intermediate);
    let (qkv, qkv_b) = linear(be, &block.attn.qkv, 3 * d, d, "attention qkv")?;
    let (proj, proj_b) = linear(be, &block.attn.proj, d, d, "attention proj")?;
    let (fc1, fc1_b) = linear(be, &block.fc1, i, d, "fc1")?;
    let (fc2, fc2_b) = linear(be, &block.fc2, d, i, "fc2")?;
    let shards = (0..g.heads)
        .map(|h| {
            let mut q = Vec::with_capacity(3 * hd * d);
            let mut qb = Vec::with_capacity(3 * hd);
            for which in 0..3 {
                let r0 = which * d + h * hd;
                q.extend_from_slice(&qkv[r0 * d..(r0 + hd) * d]);
                qb.extend_from_slice(&qkv_b[r0..r0 + hd]);
            }
            ShardWeights {
                attention: AttentionPart {
                    qkv: q,
                    qkv_bias: qb,
                    o: columns(&proj, d, h * hd, hd),
                },
                ffn: FfnPart {
                    fc1: fc1[h * s * d..(h + 1) * s * d].to_vec(),
                    fc1_bias: fc1_b[h * s..(h + 1) * s].to_vec(),
                    fc2: columns(&fc2, i, h * s, s),
                },
            }
        })
        .collect();
    let norm = |n: &collab_core::model::LayerNorm<B>, what: &str| -> Result<(Vec<f32>, Vec<f32>)> {
        Ok((
            values(be, &n.gamma, &[d], &format!("{what} weight"))?,
            values(be, &n.beta, &[d], &format!("{what} bias"))?,
        ))
    };
    let (norm1_gamma, norm1_beta) = norm(&block.norm1, "norm1")?;
    let (norm2_gamma, norm2_beta) = norm(&block.norm2, "norm2")?;
    Ok((
        shards,
        LayerResident {
            norm1_gamma,
            norm1_beta,
            norm2_gamma,
            norm2_beta,
            proj_bias: proj_b,
            fc2_bias: fc2_b,
            eps: block.norm1.eps,
        },
    ))
}

/// Checks that a part has `expected` values.
fn check_len(v: &[f32], expected: usize, shard: usize, what: &str) -> Result<()> {
    if v.len() == expected {
        Ok(())
    } else {
        Err(Error::shape(
            "assemble_layer",
            format!(
                "shard {shard}: {what} has {} values, expected {expected}",
                v.len()
            ),
        ))
    }
}

/// The dense weights of a layer from all its shards in head order: the inverse of
/// [`cut_layer`], bit-exact.
///
/// # Errors
/// [`Error::Shape`] if there are not `heads` shards or a part has the wrong size.
pub fn assemble_layer(geometry: &ShardGeometry, shards: &[ShardWeights]) -> Result<AssembledLayer> {
    let g = geometry;
    let (d, hd, s, i) = (g.hidden, g.head_dim, g.ffn_slice(), g.intermediate);
    if shards.len() != g.heads {
        return Err(Error::shape(
            "assemble_layer",
            format!("{} shards for a layer of {} heads", shards.len(), g.heads),
        ));
    }
    for (h, w) in shards.iter().enumerate() {
        check_len(&w.attention.qkv, 3 * hd * d, h, "qkv")?;
        check_len(&w.attention.qkv_bias, 3 * hd, h, "qkv bias")?;
        check_len(&w.attention.o, d * hd, h, "output projection")?;
        check_len(&w.ffn.fc1, s * d, h, "fc1")?;
        check_len(&w.ffn.fc1_bias, s, h, "fc1 bias")?;
        check_len(&w.ffn.fc2, d * s, h, "fc2")?;
    }
    let mut qkv = Vec::with_capacity(3 * d * d);
    let mut qkv_bias = Vec::with_capacity(3 * d);
    for which in 0..3 {
        for w in shards {
            qkv.extend_from_slice(&w.attention.qkv[which * hd * d..(which + 1) * hd * d]);
            qkv_bias.extend_from_slice(&w.attention.qkv_bias[which * hd..(which + 1) * hd]);
        }
    }
    let mut proj = Vec::with_capacity(d * d);
    let mut fc2 = Vec::with_capacity(d * i);
    for r in 0..d {
        for w in shards {
            proj.extend_from_slice(&w.attention.o[r * hd..(r + 1) * hd]);
        }
        for w in shards {
            fc2.extend_from_slice(&w.ffn.fc2[r * s..(r + 1) * s]);
        }
    }
    Ok(AssembledLayer {
        qkv,
        qkv_bias,
        proj,
        fc1: shards
            .iter()
            .flat_map(|w| w.ffn.fc1.iter().copied())
            .collect(),
        fc1_bias: shards
            .iter()
            .flat_map(|w| w.ffn.fc1_bias.iter().copied())
            .collect(),
        fc2,
    })
}

/// The dense weights of layer `layer` of `model` as it holds them (biases that are absent are
/// zeros), to compare with [`assemble_layer`].
///
/// # Errors
/// As [`cut_layer`].
pub fn layer_weights<B: Backend>(model: &Transformer<B>, layer: usize) -> Result<AssembledLayer> {
    let g = ShardGeometry::of(model.config().encoder())?;
    let block = model
        .blocks()
        .get(layer)
        .ok_or_else(|| Error::InvalidInput(format!("layer {layer} out of range")))?;
    let be = model.backend();
    let (d, i) = (g.hidden, g.intermediate);
    let (qkv, qkv_bias) = linear(be, &block.attn.qkv, 3 * d, d, "attention qkv")?;
    let (proj, _) = linear(be, &block.attn.proj, d, d, "attention proj")?;
    let (fc1, fc1_bias) = linear(be, &block.fc1, i, d, "fc1")?;
    let (fc2, _) = linear(be, &block.fc2, d, i, "fc2")?;
    Ok(AssembledLayer {
        qkv,
        qkv_bias,
        proj,
        fc1,
        fc1_bias,
        fc2,
    })
}

#[cfg(test)]
#[path = "test_models.rs"]
pub(crate) mod test_models;

#[cfg(test)]
#[path = "layout_tests.rs"]
mod tests;
