//! LLaMA-style decoder configurations with named presets.

use serde::{Deserialize, Serialize};

use crate::{Error, Result};

/// The sizes of a LLaMA-style decoder (RMSNorm, RoPE, multi-head attention with a KV cache,
/// SwiGLU FFN, untied LM head; Touvron et al. 2023).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DecoderConfig {
    /// Preset name for reports.
    pub name: String,
    /// Hidden size `h`.
    pub hidden: usize,
    /// Decoder layers.
    pub layers: usize,
    /// Attention heads; `hidden` must be a multiple.
    pub heads: usize,
    /// FFN inner size `h'`.
    pub intermediate: usize,
    /// Vocabulary size `h_v`.
    pub vocab: usize,
    /// RMSNorm epsilon.
    pub rms_eps: f32,
    /// RoPE base.
    pub rope_theta: f32,
    /// Bytes per weight and activation element (2 for fp16).
    pub dtype_bytes: usize,
}

/// Names accepted by [`DecoderConfig::preset`].
pub const DECODER_PRESETS: [&str; 3] = ["llama2-7b", "llama-small", "llama-tiny"];

impl DecoderConfig {
    /// LLaMA-2-7B in fp16: h = 4096, 32 layers, 32 heads, h' = 11008, vocabulary 32000.
    pub fn llama2_7b() -> Self {
        DecoderConfig {
            name: "llama2-7b".into(),
            hidden: 4096,
            layers: 32,
            heads: 32,
            intermediate: 11008,
            vocab: 32000,
            rms_eps: 1e-5,
            rope_theta: 10_000.0,
            dtype_bytes: 2,
        }
    }

    /// A small decoder (h = 256, 4 layers) for calibration runs and executor tests in f32.
    pub fn llama_small() -> Self {
        DecoderConfig {
            name: "llama-small".into(),
            hidden: 256,
            layers: 4,
            heads: 8,
            intermediate: 688,
            vocab: 1024,
            rms_eps: 1e-5,
            rope_theta: 10_000.0,
            dtype_bytes: 4,
        }
    }

    /// A tiny decoder (h = 64, 2 layers) for unit tests in f32.
    pub fn llama_tiny() -> Self {
        DecoderConfig {
            name: "llama-tiny".into(),
            hidden: 64,
            layers: 2,
            heads: 4,
            intermediate: 172,
            vocab: 256,
            rms_eps: 1e-5,
            rope_theta: 10_000.0,
            dtype_bytes: 4,
        }
    }

    /// A preset by name (see [`DECODER_PRESETS`]).
    ///
    /// # Errors
    /// [`Error::Config`] naming the known presets.
    pub fn preset(name: &str) -> Result<Self> {
        match name {
            "llama2-7b" | "llama2_7b" => Ok(Self::llama2_7b()),
            "llama-small" => Ok(Self::llama_small()),
            "llama-tiny" => Ok(Self::llama_tiny()),
            other => Err(Error::Config(format!(
                "unknown decoder preset `{other}`; known: {}",
                DECODER_PRESETS.join(", ")
            ))),
        }
    }

    /// Size of one attention head.
    pub fn head_dim(&self) -> usize {
        self.hidden / self.heads
    }

    /// Checks the sizes.
    ///
    /// # Errors
    /// [`Error::Config`] saying which size is wrong.
    pub fn validate(&self) -> Result<()> {
        if self.hidden == 0 || self.heads == 0 || !self.hidden.is_multiple_of(self.heads) {
            return Err(Error::Config(format!(
                "hidden size {} must be a positive multiple of the head count {}",
                self.hidden, self.heads
            )));
        }
        if !self.head_dim().is_multiple_of(2) {
            return Err(Error::Config(format!(
                "head size {} must be even for RoPE",
                self.head_dim()
            )));
        }
        if self.layers == 0 || self.intermediate == 0 || self.vocab == 0 || self.dtype_bytes == 0 {
            return Err(Error::Config(
                "layers, intermediate, vocab and dtype_bytes must be > 0".into(),
            ));
        }
        Ok(())
    }

    /// Parameters of the whole model (embedding and LM head untied).
    pub fn parameters(&self) -> u64 {
        let (h, f, v) = (
            self.hidden as u64,
            self.intermediate as u64,
            self.vocab as u64,
        );
        let layer = 4 * h * h + 3 * h * f + 2 * h;
        2 * v * h + self.layers as u64 * layer + h
    }
}
