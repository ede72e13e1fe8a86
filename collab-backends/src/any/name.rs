//! Backend names as configurations write them, and the per-side configuration of a split.

use std::fmt;
use std::str::FromStr;

use collab_core::{Error, Result};
use serde::{Deserialize, Serialize};

use super::{AnyBackend, BACKEND_NAMES};

/// `name` split into its kind and an optional `:N` device ordinal.
pub(super) fn parse_name(name: &str) -> Result<(&str, Option<usize>)> {
    let (kind, ordinal) = match name.split_once(':') {
        Some((kind, n)) => {
            let n = n.parse::<usize>().map_err(|_| {
                Error::Config(format!(
                    "backend {name:?}: the device ordinal after ':' must be a number"
                ))
            })?;
            (kind, Some(n))
        }
        None => (name, None),
    };
    if !BACKEND_NAMES.contains(&kind) {
        return Err(Error::Config(format!(
            "unknown backend {name:?}; the names are {}",
            BACKEND_NAMES.join(", ")
        )));
    }
    if ordinal.is_some() && !kind.ends_with("-cuda") {
        return Err(Error::Config(format!(
            "backend {name:?}: only CUDA backends take a device ordinal"
        )));
    }
    Ok((kind, ordinal))
}

/// A backend name as written in a configuration, checked when parsed: it names a backend
/// this build has, and [`BackendName::open`] makes that backend.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct BackendName(String);

impl BackendName {
    /// Makes the backend.
    ///
    /// # Errors
    /// [`Error::Config`] when a CUDA device cannot be opened.
    pub fn open(&self) -> Result<AnyBackend> {
        AnyBackend::from_name(&self.0)
    }

    /// The name as written.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for BackendName {
    type Err = Error;
    /// # Errors
    /// [`Error::Config`] for an unknown name or one whose feature this build lacks. CUDA
    /// devices are not opened here.
    fn from_str(s: &str) -> Result<Self> {
        let (kind, _) = parse_name(s)?;
        let compiled = match kind {
            "reference" => true,
            "candle-cpu" => cfg!(feature = "candle"),
            "candle-cuda" => cfg!(feature = "cuda"),
            "arm-f32" | "arm-q8" | "arm-q4" => cfg!(feature = "arm"),
            _ => cfg!(feature = "tch"),
        };
        if !compiled {
            let feature = match kind {
                "candle-cpu" => "candle",
                "candle-cuda" => "cuda",
                "tch-cpu" | "tch-cuda" => "tch",
                _ => "arm",
            };
            return Err(Error::Config(format!(
                "backend {s:?} needs collab-backends' `{feature}` feature, which this build \
                 does not have (rebuild with `--features {feature}`)"
            )));
        }
        Ok(Self(s.to_string()))
    }
}

/// For serde: the bare message, which `SplitBackends::from_json` wraps once in
/// [`Error::Config`].
impl TryFrom<String> for BackendName {
    type Error = String;
    fn try_from(s: String) -> std::result::Result<Self, String> {
        s.parse().map_err(|e| match e {
            Error::Config(m) => m,
            other => other.to_string(),
        })
    }
}

impl From<BackendName> for String {
    fn from(n: BackendName) -> Self {
        n.0
    }
}

impl fmt::Display for BackendName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Which backend runs each side of a split: `{ "device": "arm-q8", "cloud": "tch-cuda" }`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SplitBackends {
    /// The device side: embedding and the blocks before the split.
    pub device: BackendName,
    /// The cloud side: the blocks after the split and the head.
    pub cloud: BackendName,
}

impl SplitBackends {
    /// Parses the JSON form.
    ///
    /// # Errors
    /// [`Error::Config`] naming what is wrong: bad JSON, a missing or unknown field, an unknown
    /// backend, or one this build lacks.
    pub fn from_json(text: &str) -> Result<Self> {
        serde_json::from_str(text).map_err(|e| Error::Config(format!("split backends {e}")))
    }
}
