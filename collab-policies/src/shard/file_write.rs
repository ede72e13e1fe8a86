//! Writing a shard file: every shard of a model at every fidelity, and its resident params.

use std::borrow::Cow;
use std::collections::HashMap;
use std::path::{Path, PathBuf};

use safetensors::tensor::{Dtype, View};

use collab_core::model::{Embedding, Head, Transformer};
use collab_core::{Backend, Error, Result};

use super::super::layout::{LayerResident, cut_layer};
use super::super::quant::{QuantOptions, encode_shard};
use super::super::{FIDELITIES, Fidelity, ShardGeometry, ShardKey};
use super::{
    FORMAT_VERSION, META_MODEL, META_NAME, META_QUANT, META_VERSION, expected_resident,
    layer_entry, shard_entry,
};

/// What [`write_shard_file`] wrote.
#[derive(Clone, Debug, PartialEq)]
pub struct WriteReport {
    /// The file.
    pub path: PathBuf,
    /// Bytes of all the model's shard blobs at each fidelity, lowest fidelity first.
    pub bytes_per_fidelity: Vec<(Fidelity, u64)>,
    /// Bytes of the resident (f32) tensors: norms, output biases, embedding, head.
    pub resident_bytes: u64,
    /// Size of the file.
    pub file_bytes: u64,
}

/// One tensor to write.
struct Tensor {
    dtype: Dtype,
    shape: Vec<usize>,
    data: Vec<u8>,
}

impl View for Tensor {
    fn dtype(&self) -> Dtype {
        self.dtype
    }
    fn shape(&self) -> &[usize] {
        &self.shape
    }
    fn data(&self) -> Cow<'_, [u8]> {
        Cow::Borrowed(&self.data)
    }
    fn data_len(&self) -> usize {
        self.data.len()
    }
}

fn f32_tensor(values: &[f32], shape: Vec<usize>) -> Tensor {
    Tensor {
        dtype: Dtype::F32,
        shape,
        data: values.iter().flat_map(|v| v.to_le_bytes()).collect(),
    }
}

/// The resident tensors of the embedding and the head, with their shapes as the model holds
/// them.
fn stage_tensors<B: Backend>(model: &Transformer<B>) -> Result<Vec<(String, Tensor)>> {
    let be = model.backend();
    let t = |name: &str, x: &B::Tensor| -> Result<(String, Tensor)> {
        Ok((name.to_string(), f32_tensor(&be.to_vec(x)?, be.dims(x))))
    };
    let mut out = vec![];
    match model.embedding() {
        Embedding::Text(e) => {
            out.push(t("embed.word", &e.word)?);
            out.push(t("embed.position", &e.position)?);
            out.push(t("embed.token_type0", &e.token_type0)?);
            out.push(t("embed.norm.weight", &e.norm.gamma)?);
            out.push(t("embed.norm.bias", &e.norm.beta)?);
        }
        Embedding::Patches(p) => {
            out.push(t("embed.proj_w", &p.proj_w)?);
            out.push(t("embed.proj_b", &p.proj_b)?);
            out.push(t("embed.cls", &p.cls)?);
            out.push(t("embed.pos", &p.pos)?);
        }
    }
    if let Head::Classifier(c) = model.head_stage() {
        out.push(t("head.norm.weight", &c.norm.gamma)?);
        out.push(t("head.norm.bias", &c.norm.beta)?);
        out.push(t("head.fc.weight", &c.fc.w)?);
        let classes = be.dims(&c.fc.w).first().copied().unwrap_or(0);
        let bias = match &c.fc.b {
            Some(b) => be.to_vec(b)?,
            None => vec![0.0; classes],
        };
        out.push(("head.fc.bias".into(), f32_tensor(&bias, vec![classes])));
    }
    Ok(out)
}

fn layer_tensors(layer: usize, r: &LayerResident) -> Vec<(String, Tensor)> {
    let d = r.proj_bias.len();
    [
        ("norm1.weight", &r.norm1_gamma),
        ("norm1.bias", &r.norm1_beta),
        ("norm2.weight", &r.norm2_gamma),
        ("norm2.bias", &r.norm2_beta),
        ("proj.bias", &r.proj_bias),
        ("fc2.bias", &r.fc2_bias),
    ]
    .into_iter()
    .map(|(part, v)| (layer_entry(layer, part), f32_tensor(v, vec![d])))
    .collect()
}

/// Writes `model` to `path` (creating its folder): every shard at every fidelity in
/// [`FIDELITIES`] and the resident parameters, under the names and metadata of the module
/// doc. `progress(done, total)` is called as shards are encoded (`total` = shards in the
/// model). The file is written to a temporary sibling and renamed into place; its contents are
/// held in memory until then (134 MB for MiniLM).
///
/// # Errors
/// [`Error::Config`] for invalid options or a model that cannot be sharded; [`Error::Shape`]
/// if a resident tensor does not have the shape its configuration implies;
/// [`Error::InvalidInput`] for non-finite weights; [`Error::Io`] / [`Error::BadFile`] if the
/// file cannot be written.
pub fn write_shard_file<B: Backend>(
    model: &Transformer<B>,
    name: &str,
    path: &Path,
    opts: &QuantOptions,
    progress: &dyn Fn(usize, usize),
) -> Result<WriteReport> {
    opts.validate()?;
    let cfg = model.config();
    let g = ShardGeometry::of(cfg.encoder())?;
    let total = g.layers * g.heads;
    progress(0, total);
    let mut tensors = stage_tensors(model)?;
    let mut per_fidelity = vec![0u64; FIDELITIES.len()];
    for layer in 0..g.layers {
        let (shards, resident) = cut_layer(model, layer)?;
        tensors.extend(layer_tensors(layer, &resident));
        for (shard, w) in shards.iter().enumerate() {
            let key = ShardKey { layer, shard };
            for (i, &f) in FIDELITIES.iter().enumerate() {
                let blob = encode_shard(w, &g, f, opts)?;
                per_fidelity[i] += blob.len() as u64;
                let shape = vec![blob.len()];
                let t = Tensor {
                    dtype: Dtype::U8,
                    shape,
                    data: blob,
                };
                tensors.push((shard_entry(key, f), t));
            }
            progress(layer * g.heads + shard + 1, total);
        }
    }
    let mut shapes: HashMap<&str, &[usize]> = HashMap::new();
    for (n, t) in &tensors {
        shapes.insert(n, &t.shape);
    }
    for (n, shape) in expected_resident(cfg) {
        if shapes.get(n.as_str()).copied() != Some(shape.as_slice()) {
            return Err(Error::shape(
                "write_shard_file",
                format!(
                    "resident tensor `{n}` has shape {:?}, expected {shape:?}",
                    shapes.get(n.as_str())
                ),
            ));
        }
    }
    let resident_bytes = tensors
        .iter()
        .filter(|(_, t)| t.dtype == Dtype::F32)
        .map(|(_, t)| t.data.len() as u64)
        .sum();
    let json = |v: Result<String, serde_json::Error>| {
        v.map_err(|e| Error::Config(format!("cannot write the file's metadata: {e}")))
    };
    let metadata = HashMap::from([
        (META_VERSION.to_string(), FORMAT_VERSION.to_string()),
        (META_MODEL.to_string(), json(serde_json::to_string(cfg))?),
        (META_NAME.to_string(), name.to_string()),
        (META_QUANT.to_string(), json(serde_json::to_string(opts))?),
    ]);
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    }
    safetensors::tensor::serialize_to_file(tensors, Some(metadata), path).map_err(|e| {
        Error::BadFile {
            path: path.to_path_buf(),
            message: format!("cannot write the shard file: {e}"),
        }
    })?;
    let file_bytes = std::fs::metadata(path)
        .map_err(|e| Error::io(path, e))?
        .len();
    Ok(WriteReport {
        path: path.to_path_buf(),
        bytes_per_fidelity: FIDELITIES.iter().copied().zip(per_fidelity).collect(),
        resident_bytes,
        file_bytes,
    })
}
