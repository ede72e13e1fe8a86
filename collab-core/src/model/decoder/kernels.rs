//! The per-operator computations shared by the direct forward and the operator interpreter,
//! so both give the same numbers on the same backend type.
//!
//! Shapes: hidden states and projections `[n, h]` for `n` new tokens; per-head tensors
//! `[heads, n, head_dim]`; scores and probabilities `[heads, n, t]` with `t = past + n`.

use super::{Decoder, KvCache};
use crate::{Backend, Error, Result};

/// RoPE tables for positions `past..past + n` (Su et al. 2021), Hugging Face rotate-half
/// layout: `cos[p, 0, i] = cos(p · theta^(-2 (i mod d/2) / d))` for `i < d = head_dim`, and
/// likewise `sin`, each `n · d` values in row-major `[n, 1, d]`. Computed on the host in `f64`
/// and rounded once, so every backend receives the same `f32` tables.
pub(crate) fn rope_tables(head_dim: usize, theta: f32, past: usize, n: usize) -> [Vec<f32>; 2] {
    let half = head_dim / 2;
    let mut cos = Vec::with_capacity(n * head_dim);
    let mut sin = Vec::with_capacity(n * head_dim);
    for p in past..past + n {
        for i in 0..head_dim {
            let freq = f64::from(theta).powf(-2.0 * (i % half) as f64 / head_dim as f64);
            let angle = p as f64 * freq;
            cos.push(angle.cos() as f32);
            sin.push(angle.sin() as f32);
        }
    }
    [cos, sin]
}

/// The causal attention bias `[n, past + n]` of `n` new tokens after `past` cached ones:
/// `0` where key `j` is at or before query `i`'s position `past + i`, `-inf` after it.
pub fn causal_mask(past: usize, n: usize) -> Vec<f32> {
    let t = past + n;
    (0..n)
        .flat_map(|i| {
            (0..t).map(move |j| {
                if j <= past + i {
                    0.0
                } else {
                    f32::NEG_INFINITY
                }
            })
        })
        .collect()
}

impl<B: Backend> Decoder<B> {
    /// Embedding rows of `tokens`: `[n, h]`.
    pub(super) fn embed_tokens(&self, tokens: &[u32]) -> Result<B::Tensor> {
        if tokens.is_empty() {
            return Err(Error::InvalidInput("no token ids to embed".into()));
        }
        let vocab = self.config.vocab;
        if let Some((i, &t)) = tokens
            .iter()
            .enumerate()
            .find(|&(_, &t)| t as usize >= vocab)
        {
            return Err(Error::InvalidInput(format!(
                "token id {t} at position {i} is outside the vocabulary of {vocab}"
            )));
        }
        let idx = self
            .backend
            .index_from_vec(tokens.to_vec(), &[tokens.len()])?;
        self.backend.index_select(&self.embed, 0, &idx)
    }

    /// RMSNorm of `x [.., h]` with `gain`.
    pub(super) fn rms(&self, x: &B::Tensor, gain: &B::Tensor) -> Result<B::Tensor> {
        self.backend.rms_norm(x, gain, self.config.rms_eps)
    }

    /// `x W^T` with no bias.
    pub(super) fn project(&self, x: &B::Tensor, w: &B::Tensor) -> Result<B::Tensor> {
        self.backend.linear(x, w, None)
    }

    /// The last row `[1, h]` of `x [n, h]` (the final norm and LM head see the last token).
    pub(super) fn last_row(&self, x: &B::Tensor) -> Result<B::Tensor> {
        let n = self.backend.dims(x).first().copied().unwrap_or(0);
        if n == 0 {
            return Err(Error::shape(
                "final_norm",
                "no token rows to take the last of",
            ));
        }
        self.backend.narrow(x, 0, n - 1, 1)
    }

    /// Rotary position embedding of `x [n, h]` at positions `past..past + n`, per head.
    pub(super) fn rope(&self, x: &B::Tensor, past: usize) -> Result<B::Tensor> {
        let be = &self.backend;
        let (heads, d) = (self.config.heads, self.config.head_dim());
        let n = self.rows(x, "rope")?;
        let x3 = be.reshape(x, &[n, heads, d])?;
        let lo = be.narrow(&x3, 2, 0, d / 2)?;
        let hi = be.narrow(&x3, 2, d / 2, d / 2)?;
        let rotated = be.cat(&[&be.affine(&hi, -1.0, 0.0)?, &lo], 2)?;
        let [cos, sin] = rope_tables(d, self.config.rope_theta, past, n);
        let cos = be.from_vec(cos, &[n, 1, d])?;
        let sin = be.from_vec(sin, &[n, 1, d])?;
        let y = be.add(&be.mul(&x3, &cos)?, &be.mul(&rotated, &sin)?)?;
        be.reshape(&y, &[n, self.config.hidden])
    }

    /// `Q K^T` per head over the cached and new keys: `[heads, n, past + n]`. Appends the new
    /// (rotated) keys to `layer`'s cache, which must hold exactly `past` keys.
    pub(super) fn attn_scores(
        &self,
        q: &B::Tensor,
        k: &B::Tensor,
        cache: &mut KvCache<B>,
        layer: usize,
        past: usize,
    ) -> Result<B::Tensor> {
        let held = cache.key_tokens(layer)?;
        if held != past {
            return Err(stale_cache(layer, "keys", held, past));
        }
        let q = self.to_heads(q)?;
        let keys = cache.append_keys(&self.backend, layer, self.to_heads(k)?)?;
        let kt = self.backend.permute(&keys, &[0, 2, 1])?;
        self.backend.matmul(&q, &kt)
    }

    /// Softmax of `scores [heads, n, t]` scaled by `1/sqrt(head_dim)`, with the causal mask
    /// when more than one token is new (`past = t - n`).
    pub(super) fn attn_probs(&self, scores: &B::Tensor) -> Result<B::Tensor> {
        let be = &self.backend;
        let dims = be.dims(scores);
        let [_, n, t] = dims[..] else {
            return Err(Error::shape(
                "softmax",
                format!("scores {dims:?} must be [heads, n, t]"),
            ));
        };
        if n > t {
            return Err(Error::shape(
                "softmax",
                format!("scores {dims:?} have more queries than keys"),
            ));
        }
        let scale = (self.config.head_dim() as f32).powf(-0.5);
        let scaled = be.affine(scores, scale, 0.0)?;
        if n > 1 {
            let mask = be.from_vec(causal_mask(t - n, n), &[n, t])?;
            be.softmax_last(&scaled, Some(&mask))
        } else {
            be.softmax_last(&scaled, None)
        }
    }

    /// `P V` per head over the cached and new values, heads joined back: `[n, h]`. Appends the
    /// new values to `layer`'s cache, which must hold exactly `past` values.
    pub(super) fn attn_context(
        &self,
        probs: &B::Tensor,
        v: &B::Tensor,
        cache: &mut KvCache<B>,
        layer: usize,
        past: usize,
    ) -> Result<B::Tensor> {
        let held = cache.value_tokens(layer)?;
        if held != past {
            return Err(stale_cache(layer, "values", held, past));
        }
        let n = self.rows(v, "attn_context")?;
        let values = cache.append_values(&self.backend, layer, self.to_heads(v)?)?;
        let ctx = self.backend.matmul(probs, &values)?;
        let ctx = self.backend.permute(&ctx, &[1, 0, 2])?;
        self.backend.reshape(&ctx, &[n, self.config.hidden])
    }

    /// SwiGLU's `silu(gate) * up`.
    pub(super) fn silu_mul(&self, gate: &B::Tensor, up: &B::Tensor) -> Result<B::Tensor> {
        self.backend.mul(&self.backend.silu(gate)?, up)
    }

    /// The greedy next token: the argmax of `logits [1, vocab]`.
    pub(super) fn next_token(&self, logits: &B::Tensor) -> Result<u32> {
        let idx = self.backend.argmax_last(logits)?;
        match self.backend.index_to_vec(&idx)?[..] {
            [t] => Ok(t),
            ref other => Err(Error::shape(
                "argmax",
                format!(
                    "logits {:?} must hold one row, got {} argmaxes",
                    self.backend.dims(logits),
                    other.len()
                ),
            )),
        }
    }

    /// Rows `n` of `x [n, h]`, checking the width.
    fn rows(&self, x: &B::Tensor, op: &'static str) -> Result<usize> {
        match self.backend.dims(x)[..] {
            [n, h] if h == self.config.hidden => Ok(n),
            ref dims => Err(Error::shape(
                op,
                format!("input {dims:?} must be [n, {}]", self.config.hidden),
            )),
        }
    }

    /// `[n, h]` split into heads: `[heads, n, head_dim]`.
    fn to_heads(&self, x: &B::Tensor) -> Result<B::Tensor> {
        let n = self.rows(x, "attention")?;
        let x = self
            .backend
            .reshape(x, &[n, self.config.heads, self.config.head_dim()])?;
        self.backend.permute(&x, &[1, 0, 2])
    }
}

fn stale_cache(layer: usize, what: &str, held: usize, past: usize) -> Error {
    Error::InvalidInput(format!(
        "layer {layer}'s KV cache here holds {held} tokens' {what}, but this pass expects \
         {past}: the layer's attention ran somewhere else before (the KV cache stays where \
         attention runs)"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn causal_mask_hides_only_later_keys() {
        let m = causal_mask(2, 2);
        let inf = f32::NEG_INFINITY;
        assert_eq!(m, vec![0.0, 0.0, 0.0, inf, 0.0, 0.0, 0.0, 0.0]);
        assert!(causal_mask(5, 1).iter().all(|&b| b == 0.0));
    }

    #[test]
    fn rope_tables_start_at_identity_and_pair_the_halves() {
        let [cos, sin] = rope_tables(4, 10_000.0, 0, 2);
        assert_eq!(&cos[..4], &[1.0; 4]);
        assert_eq!(&sin[..4], &[0.0; 4]);
        // Position 1: frequencies 1 and 1/100, repeated over the two halves.
        let expect = [1.0f64, 0.01, 1.0, 0.01];
        for (i, f) in expect.iter().enumerate() {
            assert!((f64::from(cos[4 + i]) - f.cos()).abs() < 1e-7);
            assert!((f64::from(sin[4 + i]) - f.sin()).abs() < 1e-7);
        }
        // Positions continue from `past`.
        let [c3, _] = rope_tables(4, 10_000.0, 3, 1);
        let [all, _] = rope_tables(4, 10_000.0, 0, 4);
        assert_eq!(&c3[..], &all[12..]);
    }
}
