//! One safetensors file holding every shard of a model at every fidelity and its resident
//! parameters, read with positioned reads (`pread`) that are counted.
//!
//! Entries (U8 tensors hold shard blobs of [`quant`](super::quant), F32 tensors resident
//! parameters):
//! - `layer.{l}.shard.{i}.{tag}`: shard `i` of layer `l` at the fidelity tagged `tag` (`q2` ..
//!   `q8`, `f32`), shape `[bytes]`;
//! - `layer.{l}.{norm1,norm2}.{weight,bias}`, `layer.{l}.proj.bias`, `layer.{l}.fc2.bias`;
//! - text models: `embed.word` `[vocab, d]`, `embed.position` `[max_positions, d]`,
//!   `embed.token_type0` `[d]`, `embed.norm.{weight,bias}`; vision models: `embed.proj_w`
//!   `[d, c p p]`, `embed.proj_b` `[d]`, `embed.cls` `[1, 1, d]`, `embed.pos` `[1, tokens, d]`;
//! - classifier heads: `head.norm.{weight,bias}`, `head.fc.weight` `[classes, d]`,
//!   `head.fc.bias`;
//! - metadata: `collab.sti.version` (`1`), `collab.sti.model` (the `ModelConfig` as JSON),
//!   `collab.sti.name`, `collab.sti.quant` (the [`QuantOptions`] as JSON).
//!
//! [`ShardFile::open`] reads only the header and checks that every entry the model needs is
//! present, typed and sized as expected and lies inside the file; reads then never parse.

use std::collections::HashMap;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use collab_core::model::ModelConfig;
use collab_core::{Error, Result};

use super::layout::LayerResident;
use super::quant::{QuantOptions, encoded_len};
use super::{FIDELITIES, Fidelity, ShardGeometry, ShardKey};

#[path = "file_header.rs"]
mod header;
#[path = "file_write.rs"]
mod write;

use header::Entry;

pub use write::{WriteReport, write_shard_file};

/// Metadata key of the format version.
pub const META_VERSION: &str = "collab.sti.version";
/// Metadata key of the model configuration (JSON).
pub const META_MODEL: &str = "collab.sti.model";
/// Metadata key of the model's name.
pub const META_NAME: &str = "collab.sti.name";
/// Metadata key of the quantisation options (JSON).
pub const META_QUANT: &str = "collab.sti.quant";
/// The format version written and accepted.
pub const FORMAT_VERSION: &str = "1";
/// The resident parts of each layer: entry `layer.{l}.{part}`, each `[d]`.
pub const LAYER_RESIDENT: [&str; 6] = [
    "norm1.weight",
    "norm1.bias",
    "norm2.weight",
    "norm2.bias",
    "proj.bias",
    "fc2.bias",
];

/// The entry of a shard at a fidelity: `layer.{l}.shard.{i}.{tag}`.
pub fn shard_entry(key: ShardKey, fidelity: Fidelity) -> String {
    format!("layer.{}.shard.{}.{}", key.layer, key.shard, fidelity.tag())
}

/// The entry of a resident part of a layer: `layer.{l}.{part}` (see [`LAYER_RESIDENT`]).
pub fn layer_entry(layer: usize, part: &str) -> String {
    format!("layer.{layer}.{part}")
}

/// Every resident (F32) entry a model of `cfg` has, with its shape.
pub fn expected_resident(cfg: &ModelConfig) -> Vec<(String, Vec<usize>)> {
    let e = cfg.encoder();
    let d = e.hidden;
    let mut out: Vec<(String, Vec<usize>)> = match cfg {
        ModelConfig::Bert(b) => vec![
            ("embed.word".into(), vec![b.vocab_size, d]),
            ("embed.position".into(), vec![b.max_positions, d]),
            ("embed.token_type0".into(), vec![d]),
            ("embed.norm.weight".into(), vec![d]),
            ("embed.norm.bias".into(), vec![d]),
        ],
        ModelConfig::Vit(v) => vec![
            (
                "embed.proj_w".into(),
                vec![d, v.channels * v.patch_size * v.patch_size],
            ),
            ("embed.proj_b".into(), vec![d]),
            ("embed.cls".into(), vec![1, 1, d]),
            ("embed.pos".into(), vec![1, v.num_tokens(), d]),
            ("head.norm.weight".into(), vec![d]),
            ("head.norm.bias".into(), vec![d]),
            ("head.fc.weight".into(), vec![v.num_classes, d]),
            ("head.fc.bias".into(), vec![v.num_classes]),
        ],
    };
    for l in 0..e.layers {
        out.extend(LAYER_RESIDENT.iter().map(|p| (layer_entry(l, p), vec![d])));
    }
    out
}

/// An open shard file. Reads are positioned (`pread`) and may come from several threads at
/// once; every byte read through it is counted in [`ShardFile::bytes_read`].
pub struct ShardFile {
    path: PathBuf,
    file: File,
    index: HashMap<String, Entry>,
    config: ModelConfig,
    geometry: ShardGeometry,
    name: String,
    quant: QuantOptions,
    bytes_read: AtomicU64,
}

impl std::fmt::Debug for ShardFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ShardFile")
            .field("path", &self.path)
            .field("name", &self.name)
            .field("entries", &self.index.len())
            .field("bytes_read", &self.bytes_read())
            .finish()
    }
}

impl ShardFile {
    /// Opens `path`, reading only its header, and checks it: safetensors, format version 1,
    /// a valid model configuration and quantisation options, every entry inside the file and
    /// of a size matching its dtype and shape, and every entry the model needs present (each
    /// shard at each fidelity, U8, of [`encoded_len`] bytes; each resident tensor, F32, of the
    /// shape its configuration implies).
    ///
    /// # Errors
    /// [`Error::Io`] if the file cannot be opened or read; [`Error::BadFile`] naming the file
    /// and the entry or key that is wrong.
    pub fn open(path: &Path) -> Result<Self> {
        let bad = |message: String| Error::BadFile {
            path: path.to_path_buf(),
            message,
        };
        let file = File::open(path).map_err(|e| Error::io(path, e))?;
        let (index, meta) = header::read_index(path, &file)?;
        let get = |key: &str| {
            meta.get(key)
                .ok_or_else(|| bad(format!("metadata lacks `{key}`: not an STI shard file")))
        };
        let version = get(META_VERSION)?;
        if version != FORMAT_VERSION {
            return Err(bad(format!(
                "shard file version {version}, expected {FORMAT_VERSION}"
            )));
        }
        let config: ModelConfig = serde_json::from_str(get(META_MODEL)?)
            .map_err(|e| bad(format!("bad `{META_MODEL}`: {e}")))?;
        config
            .validate()
            .map_err(|e| bad(format!("bad `{META_MODEL}`: {e}")))?;
        let geometry = ShardGeometry::of(config.encoder())
            .map_err(|e| bad(format!("bad `{META_MODEL}`: {e}")))?;
        let quant: QuantOptions = serde_json::from_str(get(META_QUANT)?)
            .map_err(|e| bad(format!("bad `{META_QUANT}`: {e}")))?;
        quant
            .validate()
            .map_err(|e| bad(format!("bad `{META_QUANT}`: {e}")))?;
        let name = get(META_NAME)?.clone();
        let expect = |entry: &str, dtype: &str, shape: &[usize]| -> Result<()> {
            match index.get(entry) {
                None => Err(bad(format!("missing entry `{entry}`"))),
                Some(e) if e.dtype != dtype || e.shape != shape => Err(bad(format!(
                    "entry `{entry}` is {} {:?}, expected {dtype} {shape:?}",
                    e.dtype, e.shape
                ))),
                Some(_) => Ok(()),
            }
        };
        for key in geometry.keys() {
            for f in FIDELITIES {
                let len = encoded_len(&geometry, f, &quant)
                    .map_err(|e| bad(format!("cannot size shards: {e}")))?;
                expect(&shard_entry(key, f), "U8", &[len as usize])?;
            }
        }
        for (entry, shape) in expected_resident(&config) {
            expect(&entry, "F32", &shape)?;
        }
        Ok(Self {
            path: path.to_path_buf(),
            file,
            index,
            config,
            geometry,
            name,
            quant,
            bytes_read: AtomicU64::new(0),
        })
    }

    /// The model's configuration.
    pub fn model_config(&self) -> &ModelConfig {
        &self.config
    }

    /// How the model is cut into shards.
    pub fn geometry(&self) -> &ShardGeometry {
        &self.geometry
    }

    /// The model's name as written.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// How the shards were quantised.
    pub fn quant_options(&self) -> &QuantOptions {
        &self.quant
    }

    fn entry(&self, name: &str) -> Result<&Entry> {
        self.index.get(name).ok_or_else(|| Error::BadFile {
            path: self.path.clone(),
            message: format!("no entry `{name}`"),
        })
    }

    fn shard(&self, key: ShardKey, fidelity: Fidelity) -> Result<&Entry> {
        let g = &self.geometry;
        if key.layer >= g.layers || key.shard >= g.heads {
            return Err(Error::InvalidInput(format!(
                "no shard {}.{} in a model of {} layers of {} shards",
                key.layer, key.shard, g.layers, g.heads
            )));
        }
        self.entry(&shard_entry(key, fidelity))
    }

    /// Reads `len` bytes at `offset` in one positioned read, counting them.
    fn pread(&self, offset: u64, len: u64) -> Result<Vec<u8>> {
        let mut buf = vec![0u8; len as usize];
        self.file
            .read_exact_at(&mut buf, offset)
            .map_err(|e| Error::io(&self.path, e))?;
        self.bytes_read.fetch_add(len, Ordering::Relaxed);
        Ok(buf)
    }

    /// Bytes of a shard's blob at `fidelity` (no IO).
    ///
    /// # Errors
    /// [`Error::InvalidInput`] for a key outside the model.
    pub fn shard_len(&self, key: ShardKey, fidelity: Fidelity) -> Result<u64> {
        Ok(self.shard(key, fidelity)?.len)
    }

    /// A shard's blob at `fidelity`, in one positioned read (counted).
    ///
    /// # Errors
    /// [`Error::InvalidInput`] for a key outside the model; [`Error::Io`] if the read fails
    /// (the file shrank since it was opened).
    pub fn read_shard(&self, key: ShardKey, fidelity: Fidelity) -> Result<Vec<u8>> {
        let e = self.shard(key, fidelity)?;
        self.pread(e.offset, e.len)
    }

    fn f32_entry(&self, name: &str) -> Result<&Entry> {
        let e = self.entry(name)?;
        if e.dtype != "F32" {
            return Err(Error::InvalidInput(format!(
                "entry `{name}` is {}, not an f32 tensor",
                e.dtype
            )));
        }
        Ok(e)
    }

    /// A resident f32 tensor and its shape, in one positioned read (counted).
    ///
    /// # Errors
    /// [`Error::BadFile`] if there is no such entry; [`Error::InvalidInput`] if it is not
    /// f32; [`Error::Io`] if the read fails.
    pub fn read_f32(&self, name: &str) -> Result<(Vec<f32>, Vec<usize>)> {
        let e = self.f32_entry(name)?;
        let bytes = self.pread(e.offset, e.len)?;
        Ok((f32s(&bytes), e.shape.clone()))
    }

    /// Rows `rows` (in that order, repeats allowed) of a 2-D f32 tensor, row-major, one
    /// positioned read per row (counted).
    ///
    /// # Errors
    /// [`Error::BadFile`] if there is no such entry; [`Error::InvalidInput`] if it is not a
    /// 2-D f32 tensor or a row is out of range; [`Error::Io`] if a read fails.
    pub fn read_rows(&self, name: &str, rows: &[u32]) -> Result<Vec<f32>> {
        let e = self.f32_entry(name)?;
        let &[n, cols] = e.shape.as_slice() else {
            return Err(Error::InvalidInput(format!(
                "entry `{name}` of shape {:?} is not 2-D",
                e.shape
            )));
        };
        if let Some(r) = rows.iter().find(|&&r| r as usize >= n) {
            return Err(Error::InvalidInput(format!(
                "row {r} of `{name}`, which has {n} rows"
            )));
        }
        let row_bytes = 4 * cols as u64;
        let mut out = Vec::with_capacity(rows.len() * cols);
        for &r in rows {
            out.extend(f32s(
                &self.pread(e.offset + u64::from(r) * row_bytes, row_bytes)?,
            ));
        }
        Ok(out)
    }

    /// The resident parameters of layer `layer`: six counted reads.
    ///
    /// # Errors
    /// [`Error::InvalidInput`] for a layer outside the model; as [`ShardFile::read_f32`].
    pub fn read_layer_resident(&self, layer: usize) -> Result<LayerResident> {
        if layer >= self.geometry.layers {
            return Err(Error::InvalidInput(format!(
                "no layer {layer} in a model of {}",
                self.geometry.layers
            )));
        }
        let r = |part: &str| Ok(self.read_f32(&layer_entry(layer, part))?.0);
        Ok(LayerResident {
            norm1_gamma: r("norm1.weight")?,
            norm1_beta: r("norm1.bias")?,
            norm2_gamma: r("norm2.weight")?,
            norm2_beta: r("norm2.bias")?,
            proj_bias: r("proj.bias")?,
            fc2_bias: r("fc2.bias")?,
            eps: self.config.encoder().layer_norm_eps,
        })
    }

    /// Bytes of an entry (no IO).
    ///
    /// # Errors
    /// [`Error::BadFile`] if there is no such entry.
    pub fn tensor_len(&self, name: &str) -> Result<u64> {
        Ok(self.entry(name)?.len)
    }

    /// Whether the file has an entry `name`.
    pub fn has(&self, name: &str) -> bool {
        self.index.contains_key(name)
    }

    /// Bytes read through this handle since it was opened or last reset (the header not
    /// counted).
    pub fn bytes_read(&self) -> u64 {
        self.bytes_read.load(Ordering::Relaxed)
    }

    /// Sets [`ShardFile::bytes_read`] back to zero.
    pub fn reset_bytes_read(&self) {
        self.bytes_read.store(0, Ordering::Relaxed);
    }
}

fn f32s(bytes: &[u8]) -> Vec<f32> {
    bytes
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect()
}

#[cfg(test)]
#[path = "file_tests.rs"]
mod tests;
