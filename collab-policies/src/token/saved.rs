//! The token-profile file of OTAS (SPEC §4, "Profiles"): accuracy per task and gamma on held-out
//! data, latency per gamma and batch size, and the merge schedule chosen for each gamma < 0.
//! `cargo xtask exp token-profile` writes it; `cargo xtask exp otas` and a live server's
//! `otas` token policy ([`super::live`]) load it.

use std::collections::BTreeMap;
use std::path::Path;

use super::schedule::MergeSchedule;
use collab_core::adaptive::{Gamma, ProfileTable};
use collab_core::{Error, Result};
use serde::{Deserialize, Serialize};

/// What a token-profile run saves.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SavedTokenProfile {
    /// Accuracy and latency per (task, gamma, batch size): what the allocator reads.
    pub table: ProfileTable,
    /// The merge schedule chosen for each gamma < 0.
    pub schedules: BTreeMap<Gamma, MergeSchedule>,
    /// Profiling score (mean training-split accuracy) of every candidate schedule, by gamma.
    pub schedule_scores: BTreeMap<Gamma, Vec<(String, f64)>>,
    /// Test examples per task.
    pub test_examples: Vec<usize>,
}

impl SavedTokenProfile {
    /// Writes the profile as pretty JSON, creating the folder if needed.
    ///
    /// # Errors
    /// [`Error::Io`] when the file cannot be written.
    pub fn save(&self, path: &Path) -> Result<()> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        }
        let text = serde_json::to_string_pretty(self)
            .map_err(|e| Error::Config(format!("token profile: {e}")))?;
        std::fs::write(path, text).map_err(|e| Error::io(path, e))
    }

    /// Loads a profile written by [`SavedTokenProfile::save`].
    ///
    /// # Errors
    /// [`Error::Io`] when the file cannot be read, [`Error::BadFile`] when it does not parse.
    pub fn load(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        serde_json::from_str(&text).map_err(|e| Error::BadFile {
            path: path.to_path_buf(),
            message: e.to_string(),
        })
    }
}
