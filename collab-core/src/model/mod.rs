//! The generic Transformer, written once against [`Backend`].
//!
//! One [`Transformer`] covers ViT/DeiT classifiers (pre-norm, class token, patch embedding;
//! Dosovitskiy et al. 2021, Touvron et al. 2021) and BERT sentence encoders (post-norm,
//! word/position/type embeddings, mean pooling; Devlin et al. 2019, Reimers & Gurevych 2019).
//!
//! Split execution is the point: `embed` → `run_blocks(0..k)` on the device, the hidden
//! states cross the network, `run_blocks(k..L)` → `head` on the server. Block ranges are
//! 0-based and half-open, so split point `k` of SPEC (blocks `1..=k` on the device) is
//! `run_blocks(h, 0..k)` then `run_blocks(h, k..L)`.
//!
//! [`decoder`] holds the LLaMA-style [`Decoder`] of operator placement (SPEC §7), with a KV
//! cache, greedy generation and an interpreter of its lowered operator graph.

mod block;
mod config;
pub mod decoder;
mod embed;
mod export;
mod head;
mod hidden;
mod params;
pub mod weights;

use std::ops::Range;
use std::path::Path;

pub use block::{Attention, Block};
pub use config::{BertConfig, EncoderConfig, ModelConfig, NormPlacement, PRESETS, VitConfig};
pub use decoder::{Decoder, KvCache};
pub use embed::{Input, PatchEmbed, TextEmbed};
pub use export::{NamedTensor, NamedTensors};
pub use head::{ClassifierHead, MeanPoolHead};
pub use hidden::{Hidden, HostHidden};
pub use params::{LayerNorm, Linear};

use block::BlockNames;
use weights::{HfVitNames, Prefixed, SafetensorsFile, WeightSource};

use crate::token::{IdentityAdapter, TokenAdapter};
use crate::{Backend, Error, Result};

/// The embedding stage of a model.
#[derive(Clone, Debug)]
pub enum Embedding<B: Backend> {
    /// ViT patches.
    Patches(PatchEmbed<B>),
    /// BERT tokens.
    Text(TextEmbed<B>),
}

impl<B: Backend> Embedding<B> {
    /// Embeds an input batch.
    ///
    /// # Errors
    /// [`Error::InvalidInput`] if the input does not fit the embedding (images for a text
    /// model, wrong image size, token ids outside the vocabulary, too long a sequence).
    pub fn forward(&self, backend: &B, input: &Input<B>) -> Result<Hidden<B>> {
        match (self, input) {
            (Embedding::Patches(p), Input::Images(t)) => p.forward(backend, t),
            (Embedding::Text(e), Input::Tokens(s)) => e.forward(backend, s),
            (Embedding::Patches(_), Input::Tokens(_)) => Err(Error::InvalidInput(
                "this vision model takes images, not token ids".into(),
            )),
            (Embedding::Text(_), Input::Images(_)) => Err(Error::InvalidInput(
                "this text model takes token ids, not images".into(),
            )),
        }
    }
}

/// The output stage of a model.
#[derive(Clone, Debug)]
pub enum Head<B: Backend> {
    /// Classifier logits.
    Classifier(ClassifierHead<B>),
    /// Pooled sentence embedding.
    MeanPool(MeanPoolHead),
}

impl<B: Backend> Head<B> {
    /// Logits `[batch, classes]` or embeddings `[batch, d]`.
    ///
    /// # Errors
    /// Backend errors.
    pub fn forward(&self, backend: &B, hidden: &Hidden<B>) -> Result<B::Tensor> {
        match self {
            Head::Classifier(c) => c.forward(backend, hidden),
            Head::MeanPool(m) => m.forward(backend, hidden),
        }
    }
}

/// A Transformer on backend `B`.
#[derive(Clone, Debug)]
pub struct Transformer<B: Backend> {
    backend: B,
    config: ModelConfig,
    embedding: Embedding<B>,
    blocks: Vec<Block<B>>,
    head: Head<B>,
}

impl<B: Backend> Transformer<B> {
    /// Builds a model from parameters named as in timm (ViT) or Hugging Face (BERT) checkpoints.
    ///
    /// # Errors
    /// [`Error::Config`] for inconsistent sizes; [`Error::MissingTensor`] /
    /// [`Error::TensorShape`] naming the parameter that is absent or of the wrong shape.
    pub fn new(backend: B, config: ModelConfig, src: &dyn WeightSource) -> Result<Self> {
        config.validate()?;
        let enc = config.encoder().clone();
        let (embedding, head, names) = match &config {
            ModelConfig::Vit(v) => {
                let d = v.encoder.hidden;
                let head = ClassifierHead {
                    norm: LayerNorm::load(&backend, src, "norm", d, enc.layer_norm_eps)?,
                    fc: Linear::load(&backend, src, "head", d, v.num_classes)?,
                };
                (
                    Embedding::Patches(PatchEmbed::load(&backend, src, v)?),
                    Head::Classifier(head),
                    BlockNames::Timm,
                )
            }
            ModelConfig::Bert(b) => (
                Embedding::Text(TextEmbed::load(&backend, src, b)?),
                Head::MeanPool(MeanPoolHead {
                    normalize: b.normalize,
                }),
                BlockNames::HfBert,
            ),
        };
        let blocks = (0..enc.layers)
            .map(|l| Block::load(&backend, src, &enc, l, names))
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            backend,
            config,
            embedding,
            blocks,
            head,
        })
    }

    /// Loads a safetensors checkpoint, recognising timm or Hugging Face ViT names and BERT
    /// checkpoints with or without a `bert.` prefix.
    ///
    /// # Errors
    /// As [`Transformer::new`], plus [`Error::MissingFile`] / [`Error::BadFile`].
    pub fn from_safetensors(backend: B, config: ModelConfig, path: &Path) -> Result<Self> {
        let file = SafetensorsFile::open(path)?;
        match &config {
            ModelConfig::Vit(_) if HfVitNames::detect(&file) => {
                Self::new(backend, config, &HfVitNames::new(file))
            }
            ModelConfig::Vit(_) => Self::new(backend, config, &file),
            ModelConfig::Bert(_) => Self::new(backend, config, &Prefixed::new(file, "bert.")),
        }
    }

    /// The backend the model runs on.
    pub fn backend(&self) -> &B {
        &self.backend
    }

    /// The model's configuration.
    pub fn config(&self) -> &ModelConfig {
        &self.config
    }

    /// Number of blocks `L`.
    pub fn num_blocks(&self) -> usize {
        self.blocks.len()
    }

    /// The blocks, for inspection and profiling.
    pub fn blocks(&self) -> &[Block<B>] {
        &self.blocks
    }

    /// The embedding stage.
    pub fn embedding(&self) -> &Embedding<B> {
        &self.embedding
    }

    /// The head stage.
    pub fn head_stage(&self) -> &Head<B> {
        &self.head
    }

    /// Embeds an input batch.
    ///
    /// # Errors
    /// [`Error::InvalidInput`] if the input does not fit the model (images for a text model,
    /// wrong image size, token ids outside the vocabulary, too long a sequence).
    pub fn embed(&self, input: &Input<B>) -> Result<Hidden<B>> {
        self.embedding.forward(&self.backend, input)
    }

    /// Runs blocks `range` (0-based, half-open) with no token adaptation.
    ///
    /// # Errors
    /// [`Error::InvalidInput`] if `range` is not within `0..=L`; backend errors.
    pub fn run_blocks(&self, hidden: Hidden<B>, range: Range<usize>) -> Result<Hidden<B>> {
        self.run_blocks_with(hidden, range, &IdentityAdapter)
    }

    /// Runs blocks `range`, calling `adapter` at each block's hook points.
    ///
    /// # Errors
    /// As [`Transformer::run_blocks`], plus the adapter's errors.
    pub fn run_blocks_with(
        &self,
        hidden: Hidden<B>,
        range: Range<usize>,
        adapter: &dyn TokenAdapter<B>,
    ) -> Result<Hidden<B>> {
        if range.start > range.end || range.end > self.blocks.len() {
            return Err(Error::InvalidInput(format!(
                "block range {range:?} is not within 0..={}",
                self.blocks.len()
            )));
        }
        let mut h = hidden;
        for layer in range {
            h = self.blocks[layer].forward(&self.backend, layer, h, adapter)?;
        }
        Ok(h)
    }

    /// Applies the head: logits `[batch, classes]` or embeddings `[batch, d]`.
    ///
    /// # Errors
    /// Backend errors.
    pub fn head(&self, hidden: &Hidden<B>) -> Result<B::Tensor> {
        self.head.forward(&self.backend, hidden)
    }

    /// The whole model: `head(run_blocks(embed(input), 0..L))`.
    ///
    /// # Errors
    /// As the three stages.
    pub fn forward(&self, input: &Input<B>) -> Result<B::Tensor> {
        let h = self.embed(input)?;
        let h = self.run_blocks(h, 0..self.blocks.len())?;
        self.head(&h)
    }
}
