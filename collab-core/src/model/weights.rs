//! Where model parameters come from: safetensors checkpoints or seeded random values.
//!
//! A model asks a [`WeightSource`] for each parameter by its checkpoint name and the shape it
//! expects. Names follow timm for ViT/DeiT and Hugging Face for BERT; [`HfVitNames`] maps timm
//! names onto Hugging Face ViT checkpoints (fusing its separate query/key/value into `qkv`), and
//! [`Prefixed`] handles checkpoints saved with a `bert.` prefix.

use std::collections::HashMap;
use std::fmt::Debug;
use std::path::{Path, PathBuf};

use rand::SeedableRng;
use rand::rngs::StdRng;
use rand_distr::{Distribution, Normal};
use safetensors::tensor::{Dtype, Metadata};

use crate::{Error, Result};

/// How a seeded random source fills a parameter; files ignore it.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Init {
    /// Normal with mean 0 and this standard deviation (weights, embeddings).
    Normal(f32),
    /// All zeros (biases).
    Zeros,
    /// All ones (norm scales).
    Ones,
}

/// A source of named `f32` parameters.
pub trait WeightSource: Debug + Send + Sync {
    /// The parameter `name` as row-major `f32`, checked against `shape`.
    ///
    /// # Errors
    /// [`Error::MissingTensor`] or [`Error::TensorShape`] naming the tensor and both shapes.
    fn tensor(&self, name: &str, shape: &[usize], init: Init) -> Result<Vec<f32>>;
    /// Whether `name` exists (always true for generated sources).
    fn contains(&self, name: &str) -> bool;
    /// A description for error messages and reports (a path, or "seeded random (seed 7)").
    fn describe(&self) -> String;
}

/// A safetensors file read into memory, with its header parsed once.
pub struct SafetensorsFile {
    path: PathBuf,
    bytes: Vec<u8>,
    data_start: usize,
    metadata: Metadata,
}

impl Debug for SafetensorsFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SafetensorsFile")
            .field("path", &self.path)
            .field("bytes", &self.bytes.len())
            .finish()
    }
}

impl SafetensorsFile {
    /// Reads and indexes `path`.
    ///
    /// # Errors
    /// [`Error::MissingFile`] if absent, [`Error::BadFile`] if it is not safetensors.
    pub fn open(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref().to_path_buf();
        if !path.exists() {
            return Err(Error::MissingFile {
                path,
                hint: "expected a safetensors checkpoint".into(),
            });
        }
        let bytes = std::fs::read(&path).map_err(|e| Error::io(&path, e))?;
        Self::from_bytes(bytes, path)
    }

    /// Indexes a checkpoint already in memory (one received over the network); `label`
    /// stands for its path in errors.
    ///
    /// # Errors
    /// [`Error::BadFile`] if the bytes are not safetensors (the header is checked against the
    /// byte count before anything is indexed).
    pub fn from_bytes(bytes: Vec<u8>, label: impl Into<PathBuf>) -> Result<Self> {
        let path = label.into();
        let (header_len, metadata) =
            safetensors::SafeTensors::read_metadata(&bytes).map_err(|e| Error::BadFile {
                path: path.clone(),
                message: format!("not a safetensors file: {e}"),
            })?;
        Ok(Self {
            path,
            bytes,
            data_start: 8 + header_len,
            metadata,
        })
    }

    /// Names of every tensor in the file.
    pub fn names(&self) -> Vec<String> {
        let mut v: Vec<String> = self.metadata.tensors().into_keys().collect();
        v.sort();
        v
    }

    /// The stored shape of `name`, if present.
    pub fn shape_of(&self, name: &str) -> Option<Vec<usize>> {
        self.metadata.info(name).map(|i| i.shape.clone())
    }
}

impl WeightSource for SafetensorsFile {
    fn tensor(&self, name: &str, shape: &[usize], _init: Init) -> Result<Vec<f32>> {
        let info = self
            .metadata
            .info(name)
            .ok_or_else(|| Error::MissingTensor {
                file: self.path.clone(),
                name: name.into(),
                expected: shape.to_vec(),
            })?;
        if info.shape != shape {
            return Err(Error::TensorShape {
                file: self.path.clone(),
                name: name.into(),
                expected: shape.to_vec(),
                found: info.shape.clone(),
            });
        }
        let (start, end) = info.data_offsets;
        let raw = self
            .bytes
            .get(self.data_start + start..self.data_start + end)
            .ok_or_else(|| Error::BadFile {
                path: self.path.clone(),
                message: format!("tensor `{name}` points past the end of the file"),
            })?;
        let n: usize = shape.iter().product();
        let width = match info.dtype {
            Dtype::F32 => 4,
            Dtype::F16 | Dtype::BF16 => 2,
            other => {
                return Err(Error::TensorDtype {
                    file: self.path.clone(),
                    name: name.into(),
                    dtype: format!("{other:?}"),
                });
            }
        };
        if raw.len() != n * width {
            return Err(Error::BadFile {
                path: self.path.clone(),
                message: format!(
                    "tensor `{name}` has {} bytes for {n} values of {width} bytes",
                    raw.len()
                ),
            });
        }
        Ok(match info.dtype {
            Dtype::F32 => raw
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect(),
            Dtype::F16 => raw
                .chunks_exact(2)
                .map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f32())
                .collect(),
            _ => raw
                .chunks_exact(2)
                .map(|c| half::bf16::from_le_bytes([c[0], c[1]]).to_f32())
                .collect(),
        })
    }

    fn contains(&self, name: &str) -> bool {
        self.metadata.info(name).is_some()
    }

    fn describe(&self) -> String {
        self.path.display().to_string()
    }
}

/// Seeded random parameters, for measuring compute cost where accuracy does not matter
/// (ViT-B/16-sized throughput runs). Each tensor's values depend only on the seed and its name.
#[derive(Clone, Debug)]
pub struct SeededRandom {
    seed: u64,
}

impl SeededRandom {
    /// A source with this seed.
    pub fn new(seed: u64) -> Self {
        Self { seed }
    }
}

/// FNV-1a, to derive a per-tensor seed from its name.
fn fnv1a(s: &str) -> u64 {
    s.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

impl WeightSource for SeededRandom {
    fn tensor(&self, name: &str, shape: &[usize], init: Init) -> Result<Vec<f32>> {
        let n: usize = shape.iter().product();
        Ok(match init {
            Init::Zeros => vec![0.0; n],
            Init::Ones => vec![1.0; n],
            Init::Normal(std) => {
                let mut rng = StdRng::seed_from_u64(self.seed ^ fnv1a(name));
                let dist = Normal::new(0.0f32, std)
                    .map_err(|e| Error::Config(format!("bad init std {std}: {e}")))?;
                (0..n).map(|_| dist.sample(&mut rng)).collect()
            }
        })
    }

    fn contains(&self, _name: &str) -> bool {
        true
    }

    fn describe(&self) -> String {
        format!("seeded random weights (seed {})", self.seed)
    }
}

/// Looks every name up under a prefix first (`bert.`), then as is.
#[derive(Debug)]
pub struct Prefixed<S> {
    inner: S,
    prefix: String,
}

impl<S: WeightSource> Prefixed<S> {
    /// Wraps `inner`, trying `prefix` + name before name.
    pub fn new(inner: S, prefix: impl Into<String>) -> Self {
        Self {
            inner,
            prefix: prefix.into(),
        }
    }

    fn resolve(&self, name: &str) -> String {
        let p = format!("{}{name}", self.prefix);
        if self.inner.contains(&p) {
            p
        } else {
            name.to_string()
        }
    }
}

impl<S: WeightSource> WeightSource for Prefixed<S> {
    fn tensor(&self, name: &str, shape: &[usize], init: Init) -> Result<Vec<f32>> {
        self.inner.tensor(&self.resolve(name), shape, init)
    }

    fn contains(&self, name: &str) -> bool {
        self.inner.contains(&self.resolve(name))
    }

    fn describe(&self) -> String {
        self.inner.describe()
    }
}

/// Serves timm ViT names from a Hugging Face ViT checkpoint (`vit.encoder.layer.N...`).
#[derive(Debug)]
pub struct HfVitNames<S> {
    inner: S,
}

impl<S: WeightSource> HfVitNames<S> {
    /// Wraps a Hugging Face ViT checkpoint.
    pub fn new(inner: S) -> Self {
        Self { inner }
    }

    /// Whether `source` looks like a Hugging Face ViT checkpoint.
    pub fn detect(source: &S) -> bool {
        source.contains("vit.embeddings.cls_token")
    }

    fn map(name: &str) -> String {
        let fixed: HashMap<&str, &str> = [
            ("cls_token", "vit.embeddings.cls_token"),
            ("pos_embed", "vit.embeddings.position_embeddings"),
            (
                "patch_embed.proj.weight",
                "vit.embeddings.patch_embeddings.projection.weight",
            ),
            (
                "patch_embed.proj.bias",
                "vit.embeddings.patch_embeddings.projection.bias",
            ),
            ("norm.weight", "vit.layernorm.weight"),
            ("norm.bias", "vit.layernorm.bias"),
            ("head.weight", "classifier.weight"),
            ("head.bias", "classifier.bias"),
        ]
        .into_iter()
        .collect();
        if let Some(n) = fixed.get(name) {
            return (*n).to_string();
        }
        let Some(rest) = name.strip_prefix("blocks.") else {
            return name.to_string();
        };
        let Some((layer, param)) = rest.split_once('.') else {
            return name.to_string();
        };
        let hf = match param {
            "norm1.weight" => "layernorm_before.weight",
            "norm1.bias" => "layernorm_before.bias",
            "norm2.weight" => "layernorm_after.weight",
            "norm2.bias" => "layernorm_after.bias",
            "attn.proj.weight" => "attention.output.dense.weight",
            "attn.proj.bias" => "attention.output.dense.bias",
            "mlp.fc1.weight" => "intermediate.dense.weight",
            "mlp.fc1.bias" => "intermediate.dense.bias",
            "mlp.fc2.weight" => "output.dense.weight",
            "mlp.fc2.bias" => "output.dense.bias",
            _ => return name.to_string(),
        };
        format!("vit.encoder.layer.{layer}.{hf}")
    }
}

impl<S: WeightSource> WeightSource for HfVitNames<S> {
    fn tensor(&self, name: &str, shape: &[usize], init: Init) -> Result<Vec<f32>> {
        // timm fuses q, k, v into one `qkv` projection; Hugging Face stores them apart.
        if let Some(stem) = name
            .strip_suffix(".attn.qkv.weight")
            .or(name.strip_suffix(".attn.qkv.bias"))
        {
            let layer = stem.trim_start_matches("blocks.");
            let kind = if name.ends_with("weight") {
                "weight"
            } else {
                "bias"
            };
            let mut part_shape = shape.to_vec();
            part_shape[0] /= 3;
            let mut out = Vec::new();
            for p in ["query", "key", "value"] {
                let n = format!("vit.encoder.layer.{layer}.attention.attention.{p}.{kind}");
                out.extend(self.inner.tensor(&n, &part_shape, init)?);
            }
            return Ok(out);
        }
        self.inner.tensor(&Self::map(name), shape, init)
    }

    fn contains(&self, name: &str) -> bool {
        self.inner.contains(&Self::map(name))
    }

    fn describe(&self) -> String {
        self.inner.describe()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seeded_random_is_deterministic_per_name() {
        let s = SeededRandom::new(7);
        let a = s.tensor("x", &[4], Init::Normal(0.02)).expect("gen");
        let b = s.tensor("x", &[4], Init::Normal(0.02)).expect("gen");
        let c = s.tensor("y", &[4], Init::Normal(0.02)).expect("gen");
        assert_eq!(a, b);
        assert_ne!(a, c);
        assert_eq!(
            s.tensor("n", &[2], Init::Ones).expect("gen"),
            vec![1.0, 1.0]
        );
    }

    #[test]
    fn hf_vit_names_map_timm_names() {
        assert_eq!(
            HfVitNames::<SeededRandom>::map("blocks.3.mlp.fc2.bias"),
            "vit.encoder.layer.3.output.dense.bias"
        );
        assert_eq!(
            HfVitNames::<SeededRandom>::map("head.weight"),
            "classifier.weight"
        );
    }

    #[test]
    fn missing_file_is_a_typed_error() {
        let e = SafetensorsFile::open("/nonexistent/x.safetensors").expect_err("missing");
        assert!(matches!(e, Error::MissingFile { .. }), "{e}");
    }
}
