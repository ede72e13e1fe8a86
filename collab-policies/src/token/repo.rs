//! The prompt repository (OTAS, SPEC §4): per task, its prompt sets indexed by prompt count and
//! the classification head trained with each, one safetensors file per (task, count).
//!
//! File `<dir>/<task>.prompts-<count>.safetensors` holds the tensors `prompts`
//! `[layers, gamma, d]` (absent for count 0), `head.weight` `[classes, d]` and `head.bias`
//! `[classes]`, all F32; its metadata holds `format` ([`FORMAT`]), `task`, `count`, `classes`
//! and `meta` (the [`EntryMeta`] as JSON).

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use collab_core::model::{ClassifierHead, Head, Linear, Transformer};
use collab_core::{Backend, Error, Result};
use safetensors::tensor::{Dtype, SafeTensors, TensorView};

use super::prompt::PromptSet;

/// The `format` metadata value of a repository file.
pub const FORMAT: &str = "collab-otas-prompts/1";

/// How a missing entry is trained, for error messages (`{task}` and `{count}` are filled in).
pub const TRAIN_HINT: &str = "train it with the OTAS prompt-training experiment \
(`cargo xtask exp token-train --tasks {task} --counts 0,...,{count}`)";

/// A task's head on the ViT: the backbone's own final LayerNorm and the task's `fc` on the
/// class token (OTAS, SPEC §4: a task = its prompts + its classification head).
///
/// # Errors
/// [`Error::Config`] if the backbone has no classifier head (a BERT encoder).
pub fn task_head<B: Backend>(model: &Transformer<B>, fc: Linear<B>) -> Result<Head<B>> {
    match model.head_stage() {
        Head::Classifier(c) => Ok(Head::Classifier(ClassifierHead {
            norm: c.norm.clone(),
            fc,
        })),
        Head::MeanPool(_) => Err(Error::Config(
            "task heads need a backbone with a classifier head (a ViT), not a mean-pool encoder"
                .into(),
        )),
    }
}

/// One task at one prompt count: its prompts, head and training record.
#[derive(Clone, Debug)]
pub struct PromptEntry<B: Backend> {
    /// Task name (letters, digits, `-`, `_`).
    pub task: String,
    /// The prompts, `None` for count 0 (head only).
    pub prompts: Option<PromptSet<B>>,
    /// Classifier `[classes, d]` with bias `[classes]`.
    pub fc: Linear<B>,
    /// Number of classes.
    pub classes: usize,
    /// How the entry was trained.
    pub meta: EntryMeta,
}

impl<B: Backend> PromptEntry<B> {
    /// Prompt tokens per layer (0 without prompts).
    pub fn count(&self) -> usize {
        self.prompts.as_ref().map_or(0, PromptSet::gamma)
    }
}

/// Training record of an entry.
#[derive(Clone, Debug, Default, serde::Serialize, serde::Deserialize)]
pub struct EntryMeta {
    /// Training examples.
    pub train_examples: usize,
    /// Epochs trained.
    pub epochs: usize,
    /// Accuracy on the training examples.
    pub train_accuracy: f64,
    /// Accuracy on held-out examples, when measured.
    pub test_accuracy: Option<f64>,
    /// Wall-clock training time.
    pub seconds: f64,
}

/// A folder of prompt entries.
#[derive(Clone, Debug)]
pub struct PromptRepository {
    dir: PathBuf,
}

/// Checks a task name: non-empty, letters, digits, `-` and `_` only (no path separators).
///
/// # Errors
/// [`Error::InvalidInput`] naming the task.
pub fn validate_task(task: &str) -> Result<()> {
    let ok = !task.is_empty()
        && task
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
    if ok {
        Ok(())
    } else {
        Err(Error::InvalidInput(format!(
            "task name `{task}` must be non-empty and use only letters, digits, `-` and `_`"
        )))
    }
}

fn f32_bytes(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

impl PromptRepository {
    /// The repository in `dir`, created if absent.
    ///
    /// # Errors
    /// [`Error::Io`] if the folder cannot be created.
    pub fn open(dir: impl Into<PathBuf>) -> Result<Self> {
        let dir = dir.into();
        std::fs::create_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
        Ok(Self { dir })
    }

    /// The folder.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The file of (`task`, `count`).
    ///
    /// # Errors
    /// [`Error::InvalidInput`] for a bad task name.
    pub fn path(&self, task: &str, count: usize) -> Result<PathBuf> {
        validate_task(task)?;
        Ok(self.dir.join(format!("{task}.prompts-{count}.safetensors")))
    }

    /// Writes `entry` (replacing the file of its task and count) and returns the file.
    ///
    /// # Errors
    /// [`Error::InvalidInput`] for a bad task name; [`Error::Shape`] if the head does not
    /// match `classes` and the prompts' hidden size; [`Error::Io`] / backend errors.
    pub fn save<B: Backend>(&self, backend: &B, entry: &PromptEntry<B>) -> Result<PathBuf> {
        let path = self.path(&entry.task, entry.count())?;
        let w_dims = backend.dims(&entry.fc.w);
        let d = match (w_dims.as_slice(), &entry.prompts) {
            ([c, d], None) if *c == entry.classes => *d,
            ([c, d], Some(p)) if *c == entry.classes && *d == p.hidden() => *d,
            _ => {
                return Err(Error::shape(
                    "prompt_repository",
                    format!(
                        "head weight {w_dims:?} must be [{}, hidden] matching the prompts",
                        entry.classes
                    ),
                ));
            }
        };
        let bias = match &entry.fc.b {
            Some(b) => backend.to_vec(b)?,
            None => vec![0.0; entry.classes],
        };
        if bias.len() != entry.classes {
            return Err(Error::shape(
                "prompt_repository",
                format!(
                    "head bias has {} values, {} classes",
                    bias.len(),
                    entry.classes
                ),
            ));
        }
        let mut data: Vec<(String, Vec<u8>, Vec<usize>)> = vec![
            (
                "head.weight".into(),
                f32_bytes(&backend.to_vec(&entry.fc.w)?),
                vec![entry.classes, d],
            ),
            ("head.bias".into(), f32_bytes(&bias), vec![entry.classes]),
        ];
        if let Some(p) = &entry.prompts {
            let mut values = Vec::with_capacity(p.layers() * p.gamma() * d);
            for t in p.per_layer() {
                values.extend(backend.to_vec(t)?);
            }
            data.push((
                "prompts".into(),
                f32_bytes(&values),
                vec![p.layers(), p.gamma(), d],
            ));
        }
        let views = data
            .iter()
            .map(|(name, bytes, shape)| {
                TensorView::new(Dtype::F32, shape.clone(), bytes)
                    .map(|v| (name.clone(), v))
                    .map_err(|e| Error::BadFile {
                        path: path.clone(),
                        message: e.to_string(),
                    })
            })
            .collect::<Result<Vec<_>>>()?;
        let meta = serde_json::to_string(&entry.meta).map_err(|e| Error::BadFile {
            path: path.clone(),
            message: format!("cannot encode the entry's meta: {e}"),
        })?;
        let info = HashMap::from([
            ("format".to_string(), FORMAT.to_string()),
            ("task".to_string(), entry.task.clone()),
            ("count".to_string(), entry.count().to_string()),
            ("classes".to_string(), entry.classes.to_string()),
            ("meta".to_string(), meta),
        ]);
        safetensors::tensor::serialize_to_file(views, Some(info), &path).map_err(|e| {
            Error::BadFile {
                path: path.clone(),
                message: format!("cannot write: {e}"),
            }
        })?;
        Ok(path)
    }

    /// Reads the entry of (`task`, `count`).
    ///
    /// # Errors
    /// [`Error::InvalidInput`] for a bad task name; [`Error::MissingFile`] naming the task,
    /// the count and how to train it; [`Error::BadFile`] for a file that does not parse, lacks
    /// a tensor or metadata, or disagrees with its name.
    pub fn load<B: Backend>(
        &self,
        backend: &B,
        task: &str,
        count: usize,
    ) -> Result<PromptEntry<B>> {
        let path = self.path(task, count)?;
        if !path.exists() {
            let stored = self.counts(task).unwrap_or_default();
            return Err(Error::MissingFile {
                path,
                hint: format!(
                    "no prompts for task `{task}` with {count} prompts per layer (stored counts: \
                     {stored:?}); {}",
                    TRAIN_HINT
                        .replace("{task}", task)
                        .replace("{count}", &count.to_string())
                ),
            });
        }
        let bytes = std::fs::read(&path).map_err(|e| Error::io(&path, e))?;
        let bad = |message: String| Error::BadFile {
            path: path.clone(),
            message,
        };
        let st = SafeTensors::deserialize(&bytes).map_err(|e| bad(e.to_string()))?;
        let (_, header) = SafeTensors::read_metadata(&bytes).map_err(|e| bad(e.to_string()))?;
        let info = header.metadata().clone().unwrap_or_default();
        let field = |k: &str| {
            info.get(k)
                .cloned()
                .ok_or_else(|| bad(format!("metadata lacks `{k}`")))
        };
        if field("format")? != FORMAT {
            return Err(bad(format!("format is not {FORMAT}")));
        }
        let meta: EntryMeta =
            serde_json::from_str(&field("meta")?).map_err(|e| bad(format!("meta: {e}")))?;
        let tensor = |name: &str| -> Result<(Vec<f32>, Vec<usize>)> {
            let v = st
                .tensor(name)
                .map_err(|_| bad(format!("missing tensor `{name}`")))?;
            if v.dtype() != Dtype::F32 {
                return Err(bad(format!(
                    "tensor `{name}` is {:?}, expected F32",
                    v.dtype()
                )));
            }
            let values = v
                .data()
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect();
            Ok((values, v.shape().to_vec()))
        };
        let (w, w_shape) = tensor("head.weight")?;
        let (b, b_shape) = tensor("head.bias")?;
        let (classes, d) = match w_shape[..] {
            [c, d] if b_shape == [c] => (c, d),
            _ => {
                return Err(bad(format!(
                    "head.weight {w_shape:?} / head.bias {b_shape:?} are not [classes, d] / \
                     [classes]"
                )));
            }
        };
        let prompts = if count == 0 {
            if st.tensor("prompts").is_ok() {
                return Err(bad("a count-0 entry must not hold prompts".into()));
            }
            None
        } else {
            let (p, shape) = tensor("prompts")?;
            let layers = match shape[..] {
                [l, g, pd] if g == count && pd == d && l > 0 => l,
                _ => {
                    return Err(bad(format!(
                        "prompts {shape:?} are not [layers, {count}, {d}]"
                    )));
                }
            };
            let per_layer = p
                .chunks_exact(count * d)
                .take(layers)
                .map(|c| backend.from_vec(c.to_vec(), &[count, d]))
                .collect::<Result<Vec<_>>>()?;
            Some(PromptSet::new(backend, per_layer)?)
        };
        Ok(PromptEntry {
            task: task.to_string(),
            prompts,
            fc: Linear {
                w: backend.from_vec(w, &[classes, d])?,
                b: Some(backend.from_vec(b, &[classes])?),
            },
            classes,
            meta,
        })
    }

    /// The prompt counts stored for `task`, ascending.
    ///
    /// # Errors
    /// [`Error::InvalidInput`] for a bad task name; [`Error::Io`] if the folder cannot be read.
    pub fn counts(&self, task: &str) -> Result<Vec<usize>> {
        validate_task(task)?;
        let prefix = format!("{task}.prompts-");
        let mut out: Vec<usize> = std::fs::read_dir(&self.dir)
            .map_err(|e| Error::io(&self.dir, e))?
            .filter_map(|e| e.ok()?.file_name().into_string().ok())
            .filter_map(|name| {
                let n = name.strip_prefix(&prefix)?.strip_suffix(".safetensors")?;
                // Only the canonical spelling `path` writes (no `+`, no leading zeros).
                n.parse().ok().filter(|c: &usize| c.to_string() == n)
            })
            .collect();
        out.sort_unstable();
        Ok(out)
    }
}
