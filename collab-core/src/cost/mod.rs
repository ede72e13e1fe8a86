//! Cost models: predicted time of a piece of work on a device.
//!
//! Every planner asks a [`CostModel`] (split selection, batch schedulers, token allocation,
//! operator placement). The first implementation, [`MeasuredProfile`], times the real model on
//! a backend over a grid of batch sizes and token counts and interpolates; analytical models
//! (roofline, calibrated roofline) implement the same trait.

mod measured;
mod scaled;
mod timing;

use std::fmt::{self, Debug};

use serde::{Deserialize, Serialize};

pub use measured::{MeasuredProfile, ProfilePoint, ProfileSpec, profile_model};
pub use scaled::Scaled;
pub use timing::{median, quantile, time_median};

use crate::Result;
use crate::graph::OpClass;

/// A stage of a model's forward pass at a batch size and token count.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(tag = "stage", rename_all = "snake_case")]
pub enum Workload {
    /// The embedding of `batch` inputs producing `tokens` tokens each.
    Embed {
        /// Inputs in the batch.
        batch: usize,
        /// Tokens per input.
        tokens: usize,
    },
    /// Block `layer` (0-based) on `batch` inputs of `tokens` tokens.
    Block {
        /// The block.
        layer: usize,
        /// Inputs in the batch.
        batch: usize,
        /// Tokens per input entering the block.
        tokens: usize,
    },
    /// The head on `batch` inputs of `tokens` tokens.
    Head {
        /// Inputs in the batch.
        batch: usize,
        /// Tokens per input.
        tokens: usize,
    },
    /// One shard of a layer (STI, SPEC §3: one attention head and its slice of FFN neurons)
    /// stored at `bits` bits per weight (32 = f32), on one input of `tokens` tokens: its
    /// dequantisation and its share of the layer's compute.
    Shard {
        /// Bits per stored weight (2..=8, or 32 for f32).
        bits: u8,
        /// Tokens of the input.
        tokens: usize,
    },
    /// One operator of an operator graph ([`crate::graph::Operator::workload`]), priced by its
    /// cost class, FLOPs and bytes moved. It has no batch or token count of its own.
    Operator {
        /// The cost class.
        class: OpClass,
        /// Floating-point operations.
        flops: u64,
        /// Bytes read plus bytes written.
        bytes: u64,
    },
}

impl Workload {
    /// The batch size (1 for an operator).
    pub fn batch(&self) -> usize {
        match *self {
            Workload::Embed { batch, .. }
            | Workload::Block { batch, .. }
            | Workload::Head { batch, .. } => batch,
            Workload::Shard { .. } | Workload::Operator { .. } => 1,
        }
    }

    /// Tokens per input (0 for an operator, whose size is in its FLOPs and bytes).
    pub fn tokens(&self) -> usize {
        match *self {
            Workload::Embed { tokens, .. }
            | Workload::Block { tokens, .. }
            | Workload::Head { tokens, .. }
            | Workload::Shard { tokens, .. } => tokens,
            Workload::Operator { .. } => 0,
        }
    }
}

impl fmt::Display for Workload {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Workload::Embed { batch, tokens } => write!(f, "embed(batch={batch}, tokens={tokens})"),
            Workload::Block {
                layer,
                batch,
                tokens,
            } => write!(f, "block {layer}(batch={batch}, tokens={tokens})"),
            Workload::Head { batch, tokens } => write!(f, "head(batch={batch}, tokens={tokens})"),
            Workload::Shard { bits, tokens } => write!(f, "{bits}-bit shard(tokens={tokens})"),
            Workload::Operator {
                class,
                flops,
                bytes,
            } => write!(f, "{class:?} operator(flops={flops}, bytes={bytes})"),
        }
    }
}

/// Predicts how long a workload takes on one device.
///
/// ```
/// use collab_core::cost::{CostModel, Workload};
/// use collab_core::{Error, Result};
///
/// /// Every block costs 2 ms per input; nothing else is known.
/// #[derive(Debug)]
/// struct FlatBlocks;
///
/// impl CostModel for FlatBlocks {
///     fn name(&self) -> String {
///         "flat-blocks".into()
///     }
///     fn seconds(&self, work: &Workload) -> Result<f64> {
///         match work {
///             Workload::Block { batch, .. } => Ok(0.002 * *batch as f64),
///             other => Err(Error::NoPrediction {
///                 model: self.name(),
///                 workload: other.to_string(),
///                 reason: "blocks only".into(),
///             }),
///         }
///     }
/// }
///
/// // The provided `blocks_seconds` sums the blocks.
/// assert!((FlatBlocks.blocks_seconds(0..6, 2, 197)? - 0.024).abs() < 1e-12);
/// assert!(FlatBlocks.seconds(&Workload::Head { batch: 1, tokens: 197 }).is_err());
/// # Ok::<(), collab_core::Error>(())
/// ```
pub trait CostModel: Debug + Send + Sync {
    /// A name for reports (the device and backend it describes).
    fn name(&self) -> String;

    /// Predicted seconds for `work`.
    ///
    /// # Errors
    /// [`crate::Error::NoPrediction`] if the model has no data for that kind of work.
    fn seconds(&self, work: &Workload) -> Result<f64>;

    /// Predicted seconds for blocks `layers` on `batch` inputs of `tokens` tokens each.
    ///
    /// # Errors
    /// As [`CostModel::seconds`].
    fn blocks_seconds(
        &self,
        layers: std::ops::Range<usize>,
        batch: usize,
        tokens: usize,
    ) -> Result<f64> {
        layers
            .map(|layer| {
                self.seconds(&Workload::Block {
                    layer,
                    batch,
                    tokens,
                })
            })
            .sum()
    }
}
