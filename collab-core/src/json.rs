//! Pretty JSON files for the data planners read (cost profiles, calibrations, accuracy
//! tables), with errors that name the file.

use std::path::Path;

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::{Error, Result};

/// Writes `value` to `path` as pretty JSON.
///
/// # Errors
/// [`Error::BadFile`] if it does not serialise; [`Error::Io`] naming the file.
pub fn save<T: Serialize>(value: &T, path: &Path) -> Result<()> {
    let json = serde_json::to_string_pretty(value).map_err(|e| Error::BadFile {
        path: path.to_path_buf(),
        message: e.to_string(),
    })?;
    std::fs::write(path, json).map_err(|e| Error::io(path, e))
}

/// Reads a value written by [`save`].
///
/// # Errors
/// [`Error::Io`] if the file cannot be read; [`Error::BadFile`] naming it if it does not parse.
pub fn load<T: DeserializeOwned>(path: &Path) -> Result<T> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    serde_json::from_str(&text).map_err(|e| Error::BadFile {
        path: path.to_path_buf(),
        message: e.to_string(),
    })
}
