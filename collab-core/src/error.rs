//! The error type every collab-core API returns.
//!
//! Errors name what was wrong (the tensor, the shape expected and found, the file and where it
//! comes from) so that a user can act on them without reading the source.

use std::path::PathBuf;

/// Result alias used across collab-core.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong in collab-core and in the backends that implement its traits.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A tensor primitive failed inside a backend.
    #[error("backend `{backend}` failed in `{op}`: {message}")]
    Backend {
        /// The backend's name.
        backend: String,
        /// The primitive that failed.
        op: &'static str,
        /// What the backend reported.
        message: String,
    },
    /// An argument had a shape the operation cannot take.
    #[error("`{op}`: {message}")]
    Shape {
        /// The operation that rejected its input.
        op: &'static str,
        /// The shapes involved and what was expected.
        message: String,
    },
    /// A checkpoint lacks a tensor the model needs.
    #[error("checkpoint {file}: missing tensor `{name}` (expected shape {expected:?})")]
    MissingTensor {
        /// The checkpoint file.
        file: PathBuf,
        /// The tensor name looked up (the checkpoint's own naming).
        name: String,
        /// The shape the model expects.
        expected: Vec<usize>,
    },
    /// A checkpoint tensor has the wrong shape.
    #[error("checkpoint {file}: tensor `{name}` has shape {found:?}, expected {expected:?}")]
    TensorShape {
        /// The checkpoint file.
        file: PathBuf,
        /// The tensor name.
        name: String,
        /// The shape the model expects.
        expected: Vec<usize>,
        /// The shape stored in the file.
        found: Vec<usize>,
    },
    /// A checkpoint tensor has a data type the loader cannot convert.
    #[error("checkpoint {file}: tensor `{name}` has dtype {dtype}, expected F32, F16 or BF16")]
    TensorDtype {
        /// The checkpoint file.
        file: PathBuf,
        /// The tensor name.
        name: String,
        /// The stored dtype.
        dtype: String,
    },
    /// A file the program needs is not where it was looked for.
    #[error("missing file {path}: {hint}")]
    MissingFile {
        /// Where it was looked for.
        path: PathBuf,
        /// Where it comes from and how to get it.
        hint: String,
    },
    /// A file exists but could not be parsed.
    #[error("cannot read {path}: {message}")]
    BadFile {
        /// The file.
        path: PathBuf,
        /// What was wrong.
        message: String,
    },
    /// An input (image, text, request) is not acceptable.
    #[error("invalid input: {0}")]
    InvalidInput(String),
    /// A configuration is inconsistent.
    #[error("invalid config: {0}")]
    Config(String),
    /// A cost model was asked about a workload it has no data for.
    #[error("cost model `{model}` cannot predict {workload}: {reason}")]
    NoPrediction {
        /// The cost model's name.
        model: String,
        /// The workload asked about.
        workload: String,
        /// Why there is no prediction.
        reason: String,
    },
    /// Bytes on the wire could not be encoded or decoded by an activation codec.
    #[error("codec `{codec}`: {message}")]
    Codec {
        /// The codec's name.
        codec: String,
        /// What was wrong.
        message: String,
    },
    /// An I/O error with the path it concerns.
    #[error("I/O error on {path}: {source}")]
    Io {
        /// The path being read or written.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
}

impl Error {
    /// A shape error for `op`.
    pub fn shape(op: &'static str, message: impl Into<String>) -> Self {
        Self::Shape {
            op,
            message: message.into(),
        }
    }

    /// A codec error.
    pub fn codec(codec: impl Into<String>, message: impl Into<String>) -> Self {
        Self::Codec {
            codec: codec.into(),
            message: message.into(),
        }
    }

    /// An I/O error on `path`.
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Self::Io {
            path: path.into(),
            source,
        }
    }
}
