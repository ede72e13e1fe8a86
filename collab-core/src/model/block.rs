//! One Transformer block: multi-head self-attention and an MLP, each with a residual and a
//! LayerNorm placed before (ViT) or after (BERT) it, and the two token-adapter hook points.

use super::config::{EncoderConfig, NormPlacement};
use super::hidden::Hidden;
use super::params::{LayerNorm, Linear};
use super::weights::WeightSource;
use crate::token::TokenAdapter;
use crate::{Backend, Result};

/// Parameter names of one block, per checkpoint family.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum BlockNames {
    /// timm ViT: `blocks.N.{norm1,attn.qkv,attn.proj,norm2,mlp.fc1,mlp.fc2}`.
    Timm,
    /// Hugging Face BERT: `encoder.layer.N.{attention.self.{query,key,value},...}`.
    HfBert,
}

/// Multi-head self-attention with one fused `qkv` projection.
#[derive(Clone, Debug)]
pub struct Attention<B: Backend> {
    /// `[3 d, d]`: queries, keys and values stacked.
    pub qkv: Linear<B>,
    /// Output projection `[d, d]`.
    pub proj: Linear<B>,
    heads: usize,
    scale: f32,
}

impl<B: Backend> Attention<B> {
    /// Attention over `heads` heads from a fused `qkv` `[3 heads hd, d]` (all query rows, then
    /// all key rows, then all value rows) and an output projection `[d, heads hd]`; `scale`
    /// multiplies the logits (usually `hd^-1/2`). A subset of a layer's heads is an attention
    /// of its own whose outputs sum to the layer's (without the projection bias counted twice).
    pub fn new(qkv: Linear<B>, proj: Linear<B>, heads: usize, scale: f32) -> Self {
        Self {
            qkv,
            proj,
            heads,
            scale,
        }
    }

    /// Attention over `x [b, n, d]` with an additive key bias `[b, 1, 1, n]`.
    /// Returns the projected output `[b, n, d]` and the keys `[b, heads, n, head_dim]`.
    ///
    /// # Errors
    /// Backend errors.
    pub fn forward(
        &self,
        backend: &B,
        x: &B::Tensor,
        bias: Option<&B::Tensor>,
    ) -> Result<(B::Tensor, B::Tensor)> {
        let dims = backend.dims(x);
        let (b, n) = (dims[0], dims[1]);
        let qkv = self.qkv.forward(backend, x)?;
        // The heads' width comes from the projection, not from `x`: a subset of a layer's
        // heads projects `d` features to `3 * heads * hd < 3 d`.
        let inner = backend.dims(&qkv).last().copied().unwrap_or(0) / 3;
        let (h, hd) = (self.heads, inner / self.heads.max(1));
        let qkv = backend.reshape(&qkv, &[b, n, 3, h, hd])?;
        let qkv = backend.permute(&qkv, &[2, 0, 3, 1, 4])?;
        let part = |i| -> Result<B::Tensor> {
            let t = backend.narrow(&qkv, 0, i, 1)?;
            backend.reshape(&t, &[b, h, n, hd])
        };
        let (q, k, v) = (part(0)?, part(1)?, part(2)?);
        let o = backend.attention(&q, &k, &v, self.scale, bias)?;
        let o = backend.permute(&o, &[0, 2, 1, 3])?;
        let o = backend.reshape(&o, &[b, n, h * hd])?;
        Ok((self.proj.forward(backend, &o)?, k))
    }
}

/// A Transformer block.
#[derive(Clone, Debug)]
pub struct Block<B: Backend> {
    /// Attention sub-block.
    pub attn: Attention<B>,
    /// Norm of the attention sub-block (before it when pre-norm, after its residual when
    /// post-norm).
    pub norm1: LayerNorm<B>,
    /// MLP expansion `[intermediate, d]`.
    pub fc1: Linear<B>,
    /// MLP contraction `[d, intermediate]`.
    pub fc2: Linear<B>,
    /// Norm of the MLP sub-block.
    pub norm2: LayerNorm<B>,
    placement: NormPlacement,
}

impl<B: Backend> Block<B> {
    /// Loads block `layer` under the given naming.
    pub(crate) fn load(
        backend: &B,
        src: &dyn WeightSource,
        cfg: &EncoderConfig,
        layer: usize,
        names: BlockNames,
    ) -> Result<Self> {
        let (d, i, eps) = (cfg.hidden, cfg.intermediate, cfg.layer_norm_eps);
        let (qkv, proj, norm1, fc1, fc2, norm2) = match names {
            BlockNames::Timm => {
                let p = format!("blocks.{layer}");
                (
                    Linear::load(backend, src, &format!("{p}.attn.qkv"), d, 3 * d)?,
                    Linear::load(backend, src, &format!("{p}.attn.proj"), d, d)?,
                    LayerNorm::load(backend, src, &format!("{p}.norm1"), d, eps)?,
                    Linear::load(backend, src, &format!("{p}.mlp.fc1"), d, i)?,
                    Linear::load(backend, src, &format!("{p}.mlp.fc2"), i, d)?,
                    LayerNorm::load(backend, src, &format!("{p}.norm2"), d, eps)?,
                )
            }
            BlockNames::HfBert => {
                let p = format!("encoder.layer.{layer}");
                let q = Linear::load(backend, src, &format!("{p}.attention.self.query"), d, d)?;
                let k = Linear::load(backend, src, &format!("{p}.attention.self.key"), d, d)?;
                let v = Linear::load(backend, src, &format!("{p}.attention.self.value"), d, d)?;
                let w = backend.cat(&[&q.w, &k.w, &v.w], 0)?;
                let bias = match (&q.b, &k.b, &v.b) {
                    (Some(a), Some(b), Some(c)) => Some(backend.cat(&[a, b, c], 0)?),
                    _ => None,
                };
                (
                    Linear { w, b: bias },
                    Linear::load(backend, src, &format!("{p}.attention.output.dense"), d, d)?,
                    LayerNorm::load(
                        backend,
                        src,
                        &format!("{p}.attention.output.LayerNorm"),
                        d,
                        eps,
                    )?,
                    Linear::load(backend, src, &format!("{p}.intermediate.dense"), d, i)?,
                    Linear::load(backend, src, &format!("{p}.output.dense"), i, d)?,
                    LayerNorm::load(backend, src, &format!("{p}.output.LayerNorm"), d, eps)?,
                )
            }
        };
        Ok(Self {
            attn: Attention {
                qkv,
                proj,
                heads: cfg.heads,
                scale: (cfg.head_dim() as f32).powf(-0.5),
            },
            norm1,
            fc1,
            fc2,
            norm2,
            placement: cfg.norm,
        })
    }

    fn mlp(&self, backend: &B, x: &B::Tensor) -> Result<B::Tensor> {
        let h = self.fc1.forward_gelu_erf(backend, x)?;
        self.fc2.forward(backend, &h)
    }

    /// Runs the block as block `layer` of the model, calling `adapter` at its two hook points.
    ///
    /// # Errors
    /// Backend errors, or the adapter's.
    pub fn forward(
        &self,
        backend: &B,
        layer: usize,
        hidden: Hidden<B>,
        adapter: &dyn TokenAdapter<B>,
    ) -> Result<Hidden<B>> {
        let mut h = adapter.before_attention(backend, layer, hidden)?;
        let bias = h.attention_bias(backend)?;
        match self.placement {
            NormPlacement::Pre => {
                let a = self.norm1.forward(backend, &h.x)?;
                let (att, keys) = self.attn.forward(backend, &a, bias.as_ref())?;
                h.x = backend.add(&h.x, &att)?;
                let mut h = adapter.before_mlp(backend, layer, h, &keys)?;
                let m = self.mlp(backend, &self.norm2.forward(backend, &h.x)?)?;
                h.x = backend.add(&h.x, &m)?;
                Ok(h)
            }
            NormPlacement::Post => {
                let (att, keys) = self.attn.forward(backend, &h.x, bias.as_ref())?;
                h.x = self.norm1.forward(backend, &backend.add(&h.x, &att)?)?;
                let mut h = adapter.before_mlp(backend, layer, h, &keys)?;
                let m = self.mlp(backend, &h.x)?;
                h.x = self.norm2.forward(backend, &backend.add(&h.x, &m)?)?;
                Ok(h)
            }
        }
    }
}
