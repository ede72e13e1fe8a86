//! Model configurations with named presets.
//!
//! A [`ModelConfig`] says which family a model belongs to and its sizes; it serialises to
//! JSON (`{ "family": "vit", ... }`) so that pipelines name models in config files.

use serde::{Deserialize, Serialize};

use crate::{Error, Result};

/// Where a block normalises: before each sub-block (ViT, LLaMA) or after each residual (BERT).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NormPlacement {
    /// `x + f(norm(x))`.
    Pre,
    /// `norm(x + f(x))`.
    Post,
}

/// The sizes shared by every Transformer encoder.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EncoderConfig {
    /// Hidden size `d`.
    pub hidden: usize,
    /// Number of blocks `L`.
    pub layers: usize,
    /// Attention heads; `hidden` must be a multiple.
    pub heads: usize,
    /// MLP inner size.
    pub intermediate: usize,
    /// LayerNorm epsilon.
    pub layer_norm_eps: f32,
    /// Norm placement.
    pub norm: NormPlacement,
}

impl EncoderConfig {
    /// Size of one attention head.
    pub fn head_dim(&self) -> usize {
        self.hidden / self.heads
    }

    fn validate(&self) -> Result<()> {
        if self.hidden == 0 || self.heads == 0 || !self.hidden.is_multiple_of(self.heads) {
            return Err(Error::Config(format!(
                "hidden size {} must be a positive multiple of the head count {}",
                self.hidden, self.heads
            )));
        }
        if self.layers == 0 || self.intermediate == 0 {
            return Err(Error::Config("layers and intermediate must be > 0".into()));
        }
        Ok(())
    }
}

/// A Vision Transformer (ViT, DeiT) classifier.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct VitConfig {
    /// The encoder sizes.
    #[serde(flatten)]
    pub encoder: EncoderConfig,
    /// Input side in pixels (square images).
    pub image_size: usize,
    /// Patch side in pixels.
    pub patch_size: usize,
    /// Input channels.
    pub channels: usize,
    /// Classifier outputs.
    pub num_classes: usize,
}

impl VitConfig {
    /// The class token, kept first by token adapters.
    pub const PROTECTED_TOKENS: usize = 1;

    /// Patches per image.
    pub fn num_patches(&self) -> usize {
        (self.image_size / self.patch_size).pow(2)
    }

    /// Tokens per image: the patches and the class token.
    pub fn num_tokens(&self) -> usize {
        self.num_patches() + 1
    }
}

/// A BERT-style sentence encoder with mean pooling.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct BertConfig {
    /// The encoder sizes.
    #[serde(flatten)]
    pub encoder: EncoderConfig,
    /// Vocabulary size.
    pub vocab_size: usize,
    /// Maximum sequence length (position embeddings).
    pub max_positions: usize,
    /// Token-type vocabulary size.
    pub type_vocab_size: usize,
    /// Whether the pooled embedding is L2-normalised (sentence-transformers' `Normalize`).
    pub normalize: bool,
}

impl BertConfig {
    /// None: mean pooling weighs every token, and no token has a fixed role.
    pub const PROTECTED_TOKENS: usize = 0;
}

/// Any model the generic Transformer can build.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "family", rename_all = "snake_case")]
pub enum ModelConfig {
    /// Vision Transformer classifier.
    Vit(VitConfig),
    /// BERT sentence encoder.
    Bert(BertConfig),
}

/// Names of the presets accepted by [`ModelConfig::preset`].
pub const PRESETS: &[&str] = &[
    "deit_tiny_patch16_224",
    "deit_small_patch16_224",
    "vit_base_patch16_224",
    "all_minilm_l6_v2",
];

impl ModelConfig {
    /// Leading tokens of the embedded input that token adapters keep ([`Hidden::protected`]):
    /// a ViT's class token; none for BERT, whose pooling is a mean over all tokens. The one
    /// place this default is written: the embeddings, the device's token facts and the
    /// server's request checks all read it.
    ///
    /// [`Hidden::protected`]: super::Hidden::protected
    pub fn protected_tokens(&self) -> usize {
        match self {
            Self::Vit(_) => VitConfig::PROTECTED_TOKENS,
            Self::Bert(_) => BertConfig::PROTECTED_TOKENS,
        }
    }

    /// A named preset (see [`PRESETS`]).
    ///
    /// # Errors
    /// [`Error::Config`] naming the known presets if `name` is not one.
    pub fn preset(name: &str) -> Result<Self> {
        let vit = |hidden, layers, heads| {
            ModelConfig::Vit(VitConfig {
                encoder: EncoderConfig {
                    hidden,
                    layers,
                    heads,
                    intermediate: 4 * hidden,
                    layer_norm_eps: 1e-6,
                    norm: NormPlacement::Pre,
                },
                image_size: 224,
                patch_size: 16,
                channels: 3,
                num_classes: 1000,
            })
        };
        Ok(match name {
            "deit_tiny_patch16_224" => vit(192, 12, 3),
            "deit_small_patch16_224" => vit(384, 12, 6),
            "vit_base_patch16_224" => vit(768, 12, 12),
            "all_minilm_l6_v2" => ModelConfig::Bert(BertConfig {
                encoder: EncoderConfig {
                    hidden: 384,
                    layers: 6,
                    heads: 12,
                    intermediate: 1536,
                    layer_norm_eps: 1e-12,
                    norm: NormPlacement::Post,
                },
                vocab_size: 30522,
                max_positions: 512,
                type_vocab_size: 2,
                normalize: true,
            }),
            other => {
                return Err(Error::Config(format!(
                    "unknown model preset `{other}`; known presets: {}",
                    PRESETS.join(", ")
                )));
            }
        })
    }

    /// The encoder sizes.
    pub fn encoder(&self) -> &EncoderConfig {
        match self {
            ModelConfig::Vit(v) => &v.encoder,
            ModelConfig::Bert(b) => &b.encoder,
        }
    }

    /// Checks that the sizes are consistent.
    ///
    /// # Errors
    /// [`Error::Config`] saying which size is wrong.
    pub fn validate(&self) -> Result<()> {
        self.encoder().validate()?;
        if let ModelConfig::Vit(v) = self
            && (v.patch_size == 0 || !v.image_size.is_multiple_of(v.patch_size))
        {
            return Err(Error::Config(format!(
                "image size {} is not a multiple of the patch size {}",
                v.image_size, v.patch_size
            )));
        }
        Ok(())
    }

    /// Multiply-accumulate count of one block on `tokens` tokens, times two (FLOPs), for
    /// throughput reports: the four projections, the MLP and the two attention products.
    pub fn block_flops(&self, tokens: usize) -> f64 {
        let e = self.encoder();
        let (n, d, i) = (tokens as f64, e.hidden as f64, e.intermediate as f64);
        2.0 * (4.0 * n * d * d + 2.0 * n * d * i + 2.0 * n * n * d)
    }

    /// FLOPs of a whole forward pass on one input of `tokens` tokens (embedding, blocks, head).
    pub fn forward_flops(&self, tokens: usize) -> f64 {
        let e = self.encoder();
        let blocks = e.layers as f64 * self.block_flops(tokens);
        match self {
            ModelConfig::Vit(v) => {
                let patch_in = (v.channels * v.patch_size * v.patch_size) as f64;
                let embed = 2.0 * v.num_patches() as f64 * patch_in * e.hidden as f64;
                let head = 2.0 * (e.hidden * v.num_classes) as f64;
                embed + blocks + head
            }
            ModelConfig::Bert(_) => blocks,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn presets_are_valid_and_round_trip_through_json() {
        for name in PRESETS {
            let c = ModelConfig::preset(name).expect("preset exists");
            c.validate().expect("preset is valid");
            let json = serde_json::to_string(&c).expect("serialises");
            let back: ModelConfig = serde_json::from_str(&json).expect("parses");
            assert_eq!(c, back, "{name}");
        }
    }

    #[test]
    fn unknown_preset_names_the_known_ones() {
        let e = ModelConfig::preset("vit_huge").expect_err("unknown");
        assert!(e.to_string().contains("deit_tiny_patch16_224"), "{e}");
    }

    #[test]
    fn vit_base_flops_match_the_published_17_6_gflops() {
        let c = ModelConfig::preset("vit_base_patch16_224").expect("preset");
        let g = c.forward_flops(197) / 1e9;
        // ViT-B/16 is quoted at 17.6 GMACs (35.1 GFLOPs) per 224px image.
        assert!((g - 35.1).abs() < 0.5, "{g}");
    }
}
