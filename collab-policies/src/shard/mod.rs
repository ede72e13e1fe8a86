//! Elastic on-device execution under a memory budget (STI, SPEC §3; Guo et al., MobiCom 2023).
//!
//! A phone that cannot hold a Transformer in memory streams it from flash instead, and still
//! answers within a target latency at the best accuracy the budget allows:
//!
//! - [`quant`]: each shard stored at several fidelities (2, 3, 4, 5, 6, 8 bits and f32), with
//!   per-group scales and dense-and-sparse outlier handling;
//! - [`layout`]: cutting one layer into vertical shards, one per attention head (its Q/K/V rows
//!   and output-projection columns, with biases) plus the matching slice of FFN neurons (fc1
//!   rows, fc2 columns); the parts that belong to no shard (norms, output biases, embeddings,
//!   head) are the model's *resident* parameters;
//! - [`file`](mod@file): one safetensors file holding every shard at every fidelity and the resident
//!   parameters, written once (`cargo xtask shard`) and read with `pread`, counting bytes;
//! - [`meter`]: precise accounting of the bytes of model weights held, and the process peak RSS;
//! - [`importance`]: each shard's measured contribution to accuracy at each fidelity;
//! - [`plan`]: the elastic pipeline planner (which shards, at which fidelity, so that loading
//!   layer `l + 1` hides behind computing layer `l`) and the executor's timing model it is
//!   checked against;
//! - [`exec`]: the executor that streams a plan's shards from the file on a loader thread into
//!   a bounded buffer, keeps a preload buffer resident, and computes each layer from the shards
//!   it was given.

pub mod exec;
pub mod file;
pub mod importance;
pub mod layout;
pub mod meter;
pub mod plan;
pub mod quant;

use std::fmt;

use serde::{Deserialize, Serialize};

use collab_core::model::{EncoderConfig, NormPlacement};
use collab_core::{Error, Result};

/// How one shard is stored: quantised to a bit width, or full precision.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Fidelity {
    /// `b`-bit codes with per-group scales (b in [`QUANT_BITS`]).
    Bits(u8),
    /// Raw `f32`.
    F32,
}

/// The quantised bit widths every shard is stored at.
pub const QUANT_BITS: [u8; 6] = [2, 3, 4, 5, 6, 8];

/// Every fidelity, lowest first.
pub const FIDELITIES: [Fidelity; 7] = [
    Fidelity::Bits(2),
    Fidelity::Bits(3),
    Fidelity::Bits(4),
    Fidelity::Bits(5),
    Fidelity::Bits(6),
    Fidelity::Bits(8),
    Fidelity::F32,
];

impl Fidelity {
    /// Bits per weight before scales and outliers (32 for f32).
    pub fn bits(self) -> u8 {
        match self {
            Fidelity::Bits(b) => b,
            Fidelity::F32 => 32,
        }
    }

    /// The fidelity of `bits` (32 is f32).
    ///
    /// # Errors
    /// [`Error::Config`] for a width that is not stored.
    pub fn from_bits(bits: u8) -> Result<Self> {
        match bits {
            32 => Ok(Fidelity::F32),
            b if QUANT_BITS.contains(&b) => Ok(Fidelity::Bits(b)),
            b => Err(Error::Config(format!(
                "no shard fidelity of {b} bits (stored: 2, 3, 4, 5, 6, 8 and 32)"
            ))),
        }
    }

    /// Short name used in file entries and reports: `q4`, `f32`.
    pub fn tag(self) -> String {
        match self {
            Fidelity::Bits(b) => format!("q{b}"),
            Fidelity::F32 => "f32".into(),
        }
    }

    /// Position in [`FIDELITIES`].
    pub fn index(self) -> usize {
        FIDELITIES
            .iter()
            .position(|&f| f == self)
            .unwrap_or(FIDELITIES.len() - 1)
    }
}

impl fmt::Display for Fidelity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.tag())
    }
}

/// One shard of one layer: `layer` is 0-based, `shard` in `0..heads`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct ShardKey {
    /// The layer (block), 0-based.
    pub layer: usize,
    /// The shard within the layer: attention head `shard` and FFN slice `shard`.
    pub shard: usize,
}

/// The sizes that fix how a model is cut into shards.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShardGeometry {
    /// Number of layers.
    pub layers: usize,
    /// Hidden size `d`.
    pub hidden: usize,
    /// Attention heads per layer = shards per layer.
    pub heads: usize,
    /// `d / heads`.
    pub head_dim: usize,
    /// FFN inner size.
    pub intermediate: usize,
    /// Pre-norm (ViT) or post-norm (BERT) blocks.
    pub norm: NormPlacement,
}

impl ShardGeometry {
    /// The geometry of an encoder.
    ///
    /// # Errors
    /// [`Error::Config`] if the FFN inner size is not a multiple of the head count (each shard
    /// takes an equal slice of FFN neurons).
    pub fn of(cfg: &EncoderConfig) -> Result<Self> {
        if cfg.heads == 0 || !cfg.intermediate.is_multiple_of(cfg.heads) {
            return Err(Error::Config(format!(
                "FFN size {} is not a multiple of the head count {}: shards need equal FFN slices",
                cfg.intermediate, cfg.heads
            )));
        }
        Ok(Self {
            layers: cfg.layers,
            hidden: cfg.hidden,
            heads: cfg.heads,
            head_dim: cfg.head_dim(),
            intermediate: cfg.intermediate,
            norm: cfg.norm,
        })
    }

    /// Shards per layer (one per head).
    pub fn shards_per_layer(&self) -> usize {
        self.heads
    }

    /// FFN neurons per shard: `intermediate / heads`.
    pub fn ffn_slice(&self) -> usize {
        self.intermediate / self.heads
    }

    /// Weights (not biases) in the attention part of a shard: `3 hd d` (Q/K/V rows) + `d hd`
    /// (output-projection columns).
    pub fn attention_weights(&self) -> usize {
        4 * self.head_dim * self.hidden
    }

    /// Weights in the FFN part of a shard: `s d` (fc1 rows) + `d s` (fc2 columns).
    pub fn ffn_weights(&self) -> usize {
        2 * self.ffn_slice() * self.hidden
    }

    /// Biases travelling with a shard (always f32): `3 hd` (Q/K/V) + `s` (fc1).
    pub fn shard_biases(&self) -> usize {
        3 * self.head_dim + self.ffn_slice()
    }

    /// Bytes of one shard held as f32, weights and biases.
    pub fn shard_f32_bytes(&self) -> u64 {
        4 * (self.attention_weights() + self.ffn_weights() + self.shard_biases()) as u64
    }

    /// Every shard key, layer by layer.
    pub fn keys(&self) -> impl Iterator<Item = ShardKey> + '_ {
        (0..self.layers)
            .flat_map(move |layer| (0..self.heads).map(move |shard| ShardKey { layer, shard }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fidelities_round_trip_through_bits_and_order_by_precision() {
        for (i, f) in FIDELITIES.iter().enumerate() {
            assert_eq!(Fidelity::from_bits(f.bits()).ok(), Some(*f));
            assert_eq!(f.index(), i);
        }
        assert!(FIDELITIES.windows(2).all(|w| w[0] < w[1]));
        assert!(Fidelity::from_bits(7).is_err());
        assert_eq!(Fidelity::Bits(4).tag(), "q4");
    }

    #[test]
    fn minilm_geometry_matches_hand_counts() {
        let cfg = collab_core::model::ModelConfig::preset("all_minilm_l6_v2").expect("preset");
        let g = ShardGeometry::of(cfg.encoder()).expect("MiniLM shards");
        assert_eq!(
            (g.layers, g.heads, g.head_dim, g.ffn_slice()),
            (6, 12, 32, 128)
        );
        // 4 * 32 * 384 + 2 * 128 * 384 weights, 3 * 32 + 128 biases
        assert_eq!(g.shard_f32_bytes(), 4 * (49_152 + 98_304 + 224));
        assert_eq!(g.keys().count(), 72);
    }
}
