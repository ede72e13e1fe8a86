//! A LLaMA-style decoder written once against [`Backend`] (Touvron et al. 2023, "LLaMA: Open
//! and Efficient Foundation Language Models"): pre-RMSNorm residual layers, multi-head
//! attention with rotary position embeddings (RoPE; Su et al. 2021, "RoFormer"), a KV cache,
//! a SwiGLU FFN, an untied LM head and greedy decoding.
//!
//! Two ways to run it, with the same numbers on the same backend type:
//! - [`Decoder::forward`] / [`Decoder::generate`]: the direct, unsplit forward, layer by layer;
//! - [`Decoder::run_op`]: an interpreter of one operator of the [`OpGraph`](crate::graph::OpGraph)
//!   that [`LayerGraph::lower`](crate::graph::LayerGraph::lower) produces, which the split
//!   executor of `collab-policies` calls on whichever side a plan puts the operator.
//!
//! Both call the same per-operator kernels (`kernels.rs`), so a plan that moves operators
//! between two decoders on the same backend type reproduces the unsplit tokens bit for bit.
//!
//! Parameters carry Hugging Face LLaMA names (`model.layers.N.self_attn.q_proj.weight`, ...),
//! so a [`WeightSource`] over a checkpoint loads without renaming; RoPE uses the Hugging Face
//! rotate-half layout that those checkpoints are stored for. Token sequences are unbatched:
//! hidden states are `[n, hidden]`.

mod cache;
mod forward;
mod interpret;
mod kernels;

pub use cache::KvCache;
pub use interpret::{Held, passed_inputs};
pub use kernels::causal_mask;

use super::weights::{Init, SeededRandom, WeightSource};
use crate::graph::{DecoderConfig, NormSite, Projection};
use crate::{Backend, Error, Result};

/// The weights of one decoder layer, `[out, in]` as in PyTorch checkpoints; no biases.
#[derive(Clone, Debug)]
pub struct DecoderLayer<B: Backend> {
    /// RMSNorm gain before attention (`input_layernorm`), `[h]`.
    pub attn_norm: B::Tensor,
    /// Query projection `[h, h]`.
    pub q: B::Tensor,
    /// Key projection `[h, h]`.
    pub k: B::Tensor,
    /// Value projection `[h, h]`.
    pub v: B::Tensor,
    /// Output projection `[h, h]`.
    pub o: B::Tensor,
    /// RMSNorm gain before the FFN (`post_attention_layernorm`), `[h]`.
    pub ffn_norm: B::Tensor,
    /// SwiGLU gate `[h', h]`.
    pub gate: B::Tensor,
    /// SwiGLU up `[h', h]`.
    pub up: B::Tensor,
    /// SwiGLU down `[h, h']`.
    pub down: B::Tensor,
}

/// A LLaMA-style decoder on backend `B`.
#[derive(Clone, Debug)]
pub struct Decoder<B: Backend> {
    backend: B,
    config: DecoderConfig,
    /// Token embedding table `[vocab, h]`.
    embed: B::Tensor,
    layers: Vec<DecoderLayer<B>>,
    /// Final RMSNorm gain `[h]`.
    final_norm: B::Tensor,
    /// LM head `[vocab, h]`.
    lm_head: B::Tensor,
}

/// Loads `name` of `shape` from `src` onto `backend`.
fn load<B: Backend>(
    backend: &B,
    src: &dyn WeightSource,
    name: &str,
    shape: &[usize],
    init: Init,
) -> Result<B::Tensor> {
    backend.from_vec(src.tensor(name, shape, init)?, shape)
}

/// Normal init with standard deviation `1/sqrt(fan_in)`, which keeps activations O(1).
fn fan_in(n: usize) -> Init {
    Init::Normal((n as f32).powf(-0.5))
}

impl<B: Backend> Decoder<B> {
    /// Builds a decoder from parameters under Hugging Face LLaMA names.
    ///
    /// # Errors
    /// [`Error::Config`] for invalid sizes; [`Error::MissingTensor`] / [`Error::TensorShape`]
    /// naming a parameter that is absent or of the wrong shape; backend errors.
    pub fn new(backend: B, config: &DecoderConfig, src: &dyn WeightSource) -> Result<Self> {
        config.validate()?;
        let (h, f, v) = (config.hidden, config.intermediate, config.vocab);
        let be = &backend;
        let layers = (0..config.layers)
            .map(|l| {
                let p = format!("model.layers.{l}");
                let w = |name: &str, shape: &[usize], init| {
                    load(be, src, &format!("{p}.{name}.weight"), shape, init)
                };
                Ok(DecoderLayer {
                    attn_norm: w("input_layernorm", &[h], Init::Ones)?,
                    q: w("self_attn.q_proj", &[h, h], fan_in(h))?,
                    k: w("self_attn.k_proj", &[h, h], fan_in(h))?,
                    v: w("self_attn.v_proj", &[h, h], fan_in(h))?,
                    o: w("self_attn.o_proj", &[h, h], fan_in(h))?,
                    ffn_norm: w("post_attention_layernorm", &[h], Init::Ones)?,
                    gate: w("mlp.gate_proj", &[f, h], fan_in(h))?,
                    up: w("mlp.up_proj", &[f, h], fan_in(h))?,
                    down: w("mlp.down_proj", &[h, f], fan_in(f))?,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Decoder {
            embed: load(
                be,
                src,
                "model.embed_tokens.weight",
                &[v, h],
                Init::Normal(1.0),
            )?,
            final_norm: load(be, src, "model.norm.weight", &[h], Init::Ones)?,
            lm_head: load(be, src, "lm_head.weight", &[v, h], fan_in(h))?,
            layers,
            config: config.clone(),
            backend,
        })
    }

    /// A decoder with seeded random weights: `N(0, 1/sqrt(fan_in))` projections, `N(0, 1)`
    /// embeddings and unit norm gains, drawn on the host in `f32` per parameter name, so the
    /// same seed gives the same weights on every backend instance. For executor tests and
    /// cost measurements, where accuracy does not matter.
    ///
    /// # Errors
    /// As [`Decoder::new`].
    pub fn seeded(backend: B, config: &DecoderConfig, seed: u64) -> Result<Self> {
        Self::new(backend, config, &SeededRandom::new(seed))
    }

    /// The backend.
    pub fn backend(&self) -> &B {
        &self.backend
    }

    /// The sizes.
    pub fn config(&self) -> &DecoderConfig {
        &self.config
    }

    /// The decoder layers.
    pub fn layers(&self) -> &[DecoderLayer<B>] {
        &self.layers
    }

    /// An empty KV cache sized for this model.
    pub fn new_cache(&self) -> KvCache<B> {
        KvCache::new(self.config.layers)
    }

    fn layer(&self, layer: Option<usize>, what: &str) -> Result<&DecoderLayer<B>> {
        layer.and_then(|l| self.layers.get(l)).ok_or_else(|| {
            Error::InvalidInput(format!(
                "{what} needs a decoder layer in 0..{}, got {layer:?}",
                self.layers.len()
            ))
        })
    }

    /// The weight of projection `proj` in `layer` (`None` for the LM head).
    ///
    /// # Errors
    /// [`Error::InvalidInput`] if the layer is missing or out of range, or given for the LM
    /// head.
    pub fn projection(&self, layer: Option<usize>, proj: Projection) -> Result<&B::Tensor> {
        if proj == Projection::LmHead {
            return match layer {
                None => Ok(&self.lm_head),
                Some(l) => Err(Error::InvalidInput(format!(
                    "the LM head belongs to no decoder layer, got layer {l}"
                ))),
            };
        }
        let l = self.layer(layer, "a projection")?;
        Ok(match proj {
            Projection::Q => &l.q,
            Projection::K => &l.k,
            Projection::V => &l.v,
            Projection::O => &l.o,
            Projection::Gate => &l.gate,
            Projection::Up => &l.up,
            Projection::Down => &l.down,
            Projection::LmHead => &self.lm_head,
        })
    }

    /// The gain of the RMSNorm at `site` in `layer` (`None` for the final norm).
    ///
    /// # Errors
    /// [`Error::InvalidInput`] if the layer does not fit the site.
    pub fn norm_gain(&self, layer: Option<usize>, site: NormSite) -> Result<&B::Tensor> {
        match (site, layer) {
            (NormSite::Final, None) => Ok(&self.final_norm),
            (NormSite::Final, Some(l)) => Err(Error::InvalidInput(format!(
                "the final norm belongs to no decoder layer, got layer {l}"
            ))),
            (NormSite::Attention, _) => Ok(&self.layer(layer, "attn_norm")?.attn_norm),
            (NormSite::Ffn, _) => Ok(&self.layer(layer, "ffn_norm")?.ffn_norm),
        }
    }
}
