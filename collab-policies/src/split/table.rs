//! The accuracy profile of SPEC §1 as data: for each split point and codec setting, the bytes
//! on the wire, the accuracy lost and the codec's time. Written by
//! `cargo xtask exp svd-accuracy`, read by the split selector.

use std::path::Path;

use collab_core::{Error, Result};
use serde::{Deserialize, Serialize};

/// One measured configuration.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AccuracyEntry {
    /// Split point k (the device ran blocks `0..k`).
    pub split: usize,
    /// Codec family name (`svd`, `pca-int8`, `int8`, ...).
    pub codec: String,
    /// Rank used (features for plain codecs).
    pub rank: usize,
    /// Mean bytes per request on the wire.
    pub bytes: f64,
    /// Truncation ratio measured on those bytes.
    pub rho: f64,
    /// Accuracy lost against the uncompressed model (metric difference; may be negative).
    pub loss: f64,
    /// Agreement with the uncompressed model's outputs.
    pub agreement: f64,
    /// Mean encode seconds per request on the machine that measured it.
    pub encode_s: f64,
    /// Mean decode seconds per request.
    pub decode_s: f64,
}

/// The accuracy profile of one model.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AccuracyTable {
    /// The model it was measured on.
    pub model: String,
    /// The metric (`top1`, `spearman`) and its uncompressed value.
    pub metric: String,
    /// Uncompressed metric value.
    pub baseline: f64,
    /// Tokens per request (typical, for SVD byte counts).
    pub tokens: usize,
    /// Hidden features.
    pub features: usize,
    /// Number of blocks of the model.
    pub layers: usize,
    /// The measurements.
    pub entries: Vec<AccuracyEntry>,
}

impl AccuracyTable {
    /// Entries at split point `split`.
    pub fn at(&self, split: usize) -> impl Iterator<Item = &AccuracyEntry> {
        self.entries.iter().filter(move |e| e.split == split)
    }

    /// Writes the table as JSON.
    ///
    /// # Errors
    /// I/O errors.
    pub fn save(&self, path: &Path) -> Result<()> {
        collab_core::json::save(self, path)
    }

    /// Reads a table written by [`AccuracyTable::save`].
    ///
    /// # Errors
    /// [`Error::MissingFile`] naming the command that writes it; [`Error::BadFile`].
    pub fn load(path: &Path) -> Result<Self> {
        if !path.exists() {
            return Err(Error::MissingFile {
                path: path.to_path_buf(),
                hint: "written by `cargo xtask exp svd-accuracy`".into(),
            });
        }
        collab_core::json::load(path)
    }
}
