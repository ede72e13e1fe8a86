//! Embeddings: ViT patch embedding with class token and positions; BERT word, position and
//! token-type embeddings.

use super::config::{BertConfig, VitConfig};
use super::hidden::Hidden;
use super::params::{INIT_STD, LayerNorm};
use super::weights::{Init, WeightSource};
use crate::{Backend, Error, Result};

/// A model's input batch.
#[derive(Clone, Debug)]
pub enum Input<B: Backend> {
    /// Preprocessed images `[batch, channels, height, width]`.
    Images(B::Tensor),
    /// Token ids per sequence (unequal lengths are padded and masked).
    Tokens(Vec<Vec<u32>>),
}

impl<B: Backend> Input<B> {
    /// Number of requests in the batch.
    pub fn batch_size(&self, backend: &B) -> usize {
        match self {
            Input::Images(t) => backend.dims(t).first().copied().unwrap_or(0),
            Input::Tokens(s) => s.len(),
        }
    }
}

/// ViT patch embedding: a stride-`p` convolution computed as patchify + one matmul.
#[derive(Clone, Debug)]
pub struct PatchEmbed<B: Backend> {
    /// Projection `[d, c * p * p]` (the conv kernel flattened in (c, ky, kx) order).
    pub proj_w: B::Tensor,
    /// Projection bias `[d]`.
    pub proj_b: B::Tensor,
    /// Class token `[1, 1, d]`.
    pub cls: B::Tensor,
    /// Position embedding `[1, tokens, d]`.
    pub pos: B::Tensor,
    cfg: VitConfig,
}

impl<B: Backend> PatchEmbed<B> {
    /// A patch embedding from its parts (shapes as the fields state).
    pub fn new(
        proj_w: B::Tensor,
        proj_b: B::Tensor,
        cls: B::Tensor,
        pos: B::Tensor,
        cfg: VitConfig,
    ) -> Self {
        Self {
            proj_w,
            proj_b,
            cls,
            pos,
            cfg,
        }
    }

    pub(crate) fn load(backend: &B, src: &dyn WeightSource, cfg: &VitConfig) -> Result<Self> {
        let (d, c, p) = (cfg.encoder.hidden, cfg.channels, cfg.patch_size);
        let w = src.tensor(
            "patch_embed.proj.weight",
            &[d, c, p, p],
            Init::Normal(INIT_STD),
        )?;
        let b = src.tensor("patch_embed.proj.bias", &[d], Init::Zeros)?;
        let cls = src.tensor("cls_token", &[1, 1, d], Init::Normal(INIT_STD))?;
        let n = cfg.num_tokens();
        let pos = src.tensor("pos_embed", &[1, n, d], Init::Normal(INIT_STD))?;
        Ok(Self {
            proj_w: backend.from_vec(w, &[d, c * p * p])?,
            proj_b: backend.from_vec(b, &[d])?,
            cls: backend.from_vec(cls, &[1, 1, d])?,
            pos: backend.from_vec(pos, &[1, n, d])?,
            cfg: cfg.clone(),
        })
    }

    /// Embeds images `[b, c, s, s]` into `[b, 1 + patches, d]` with the class token first.
    ///
    /// # Errors
    /// [`Error::InvalidInput`] for images of another shape; backend errors.
    pub fn forward(&self, backend: &B, images: &B::Tensor) -> Result<Hidden<B>> {
        let (c, s, p) = (self.cfg.channels, self.cfg.image_size, self.cfg.patch_size);
        let dims = backend.dims(images);
        if dims.len() != 4 || dims[1..] != [c, s, s] {
            return Err(Error::InvalidInput(format!(
                "images must be [batch, {c}, {s}, {s}], got {dims:?}"
            )));
        }
        let (b, g, d) = (dims[0], s / p, self.cfg.encoder.hidden);
        let x = backend.reshape(images, &[b, c, g, p, g, p])?;
        let x = backend.permute(&x, &[0, 2, 4, 1, 3, 5])?;
        let x = backend.reshape(&x, &[b, g * g, c * p * p])?;
        let x = backend.linear(&x, &self.proj_w, Some(&self.proj_b))?;
        let cls = backend.add(&backend.zeros(&[b, 1, d])?, &self.cls)?;
        let x = backend.cat(&[&cls, &x], 1)?;
        let x = backend.add(&x, &self.pos)?;
        Ok(Hidden::new(x, VitConfig::PROTECTED_TOKENS))
    }
}

/// BERT embeddings: word + position + token type (0), then LayerNorm.
#[derive(Clone, Debug)]
pub struct TextEmbed<B: Backend> {
    /// Word embeddings `[vocab, d]`.
    pub word: B::Tensor,
    /// Position embeddings `[max_positions, d]`.
    pub position: B::Tensor,
    /// Token-type embedding of type 0, `[d]`.
    pub token_type0: B::Tensor,
    /// The embedding LayerNorm.
    pub norm: LayerNorm<B>,
    cfg: BertConfig,
}

impl<B: Backend> TextEmbed<B> {
    /// A text embedding from its parts. `cfg.vocab_size` must be the rows of `word`: a caller
    /// that holds only some rows of the vocabulary (streaming them from a file) passes a config
    /// with the vocabulary it holds and token ids remapped into it.
    pub fn new(
        word: B::Tensor,
        position: B::Tensor,
        token_type0: B::Tensor,
        norm: LayerNorm<B>,
        cfg: BertConfig,
    ) -> Self {
        Self {
            word,
            position,
            token_type0,
            norm,
            cfg,
        }
    }

    pub(crate) fn load(backend: &B, src: &dyn WeightSource, cfg: &BertConfig) -> Result<Self> {
        let d = cfg.encoder.hidden;
        let p = "embeddings";
        let word = src.tensor(
            &format!("{p}.word_embeddings.weight"),
            &[cfg.vocab_size, d],
            Init::Normal(INIT_STD),
        )?;
        let pos = src.tensor(
            &format!("{p}.position_embeddings.weight"),
            &[cfg.max_positions, d],
            Init::Normal(INIT_STD),
        )?;
        let types = src.tensor(
            &format!("{p}.token_type_embeddings.weight"),
            &[cfg.type_vocab_size, d],
            Init::Normal(INIT_STD),
        )?;
        Ok(Self {
            word: backend.from_vec(word, &[cfg.vocab_size, d])?,
            position: backend.from_vec(pos, &[cfg.max_positions, d])?,
            token_type0: backend.from_vec(types[..d].to_vec(), &[d])?,
            norm: LayerNorm::load(
                backend,
                src,
                &format!("{p}.LayerNorm"),
                d,
                cfg.encoder.layer_norm_eps,
            )?,
            cfg: cfg.clone(),
        })
    }

    /// Embeds token sequences, padding to the longest with a mask.
    ///
    /// # Errors
    /// [`Error::InvalidInput`] for an empty batch, too long a sequence or a token id outside
    /// the vocabulary; backend errors.
    pub fn forward(&self, backend: &B, seqs: &[Vec<u32>]) -> Result<Hidden<B>> {
        let b = seqs.len();
        let n = seqs.iter().map(Vec::len).max().unwrap_or(0);
        if b == 0 || n == 0 {
            return Err(Error::InvalidInput("empty token batch or sequence".into()));
        }
        if n > self.cfg.max_positions {
            return Err(Error::InvalidInput(format!(
                "sequence of {n} tokens exceeds the model's {} positions",
                self.cfg.max_positions
            )));
        }
        let mut ids = Vec::with_capacity(b * n);
        let mut mask = Vec::with_capacity(b * n);
        for s in seqs {
            if let Some(&bad) = s.iter().find(|&&t| t as usize >= self.cfg.vocab_size) {
                return Err(Error::InvalidInput(format!(
                    "token id {bad} outside the vocabulary of {}",
                    self.cfg.vocab_size
                )));
            }
            ids.extend(s.iter().copied().chain(std::iter::repeat_n(0, n - s.len())));
            mask.extend((0..n).map(|i| if i < s.len() { 1.0 } else { 0.0 }));
        }
        let d = self.cfg.encoder.hidden;
        let idx = backend.index_from_vec(ids, &[b * n])?;
        let x = backend.index_select(&self.word, 0, &idx)?;
        let x = backend.reshape(&x, &[b, n, d])?;
        let pos = backend.narrow(&self.position, 0, 0, n)?;
        let x = backend.add(&x, &pos)?;
        let x = backend.add(&x, &self.token_type0)?;
        let x = self.norm.forward(backend, &x)?;
        let all_real = seqs.iter().all(|s| s.len() == n);
        Ok(Hidden {
            x,
            mask: if all_real {
                None
            } else {
                Some(backend.from_vec(mask, &[b, n])?)
            },
            sizes: None,
            protected: BertConfig::PROTECTED_TOKENS,
        })
    }
}
