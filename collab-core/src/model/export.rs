//! A model's parameters under their checkpoint names: read them ([`Transformer::named_parameters`]),
//! replace them in place ([`Transformer::for_each_parameter_mut`], how a trainer turns every
//! parameter into a trainable variable), save them as safetensors that
//! [`Transformer::from_safetensors`] loads back, and build a model from values in memory
//! ([`NamedTensors`], how weight averages become models). What fine-tuning (PRODIGY, SPEC §5)
//! and distillation (SPEC §6) work with.
//!
//! ViT only so far: the text model keeps BERT's query, key and value fused and only the first
//! row of the token-type table, so its export needs the table kept whole first.

use std::collections::HashMap;
use std::path::Path;

use safetensors::tensor::{Dtype, TensorView};

use super::weights::{Init, WeightSource};
use super::{
    Attention, Block, ClassifierHead, Embedding, Head, LayerNorm, Linear, ModelConfig, Transformer,
};
use crate::{Backend, Error, Result};

/// One parameter: its checkpoint name and shape, and its values in host memory.
#[derive(Clone, Debug, PartialEq)]
pub struct NamedTensor {
    /// The name in the checkpoint (timm's for ViT).
    pub name: String,
    /// The shape in the checkpoint.
    pub shape: Vec<usize>,
    /// Row-major values.
    pub values: Vec<f32>,
}

/// A ViT's parameters in load order: `(timm name, tensor, checkpoint shape when it differs
/// from the stored one)`. One list for shared and mutable access: `$m` is empty or `mut`, and
/// the patterns below bind through whichever reference the match scrutinee is.
macro_rules! vit_parameters {
    ($model:expr, $($m:tt)*) => {{
        let model = $model;
        let (Embedding::Patches(patch), Head::Classifier(head), ModelConfig::Vit(v)) =
            (&$($m)* model.embedding, &$($m)* model.head, &model.config)
        else {
            return Err(Error::Config(
                "a model's named parameters are implemented for ViT models only".into(),
            ));
        };
        let (d, c, p) = (v.encoder.hidden, v.channels, v.patch_size);
        let mut slots = vec![
            ("patch_embed.proj.weight".to_string(), &$($m)* patch.proj_w, Some(vec![d, c, p, p])),
            ("patch_embed.proj.bias".to_string(), &$($m)* patch.proj_b, None),
            ("cls_token".to_string(), &$($m)* patch.cls, None),
            ("pos_embed".to_string(), &$($m)* patch.pos, None),
        ];
        for (l, block) in (&$($m)* model.blocks).into_iter().enumerate() {
            let Block { attn, norm1, fc1, fc2, norm2, .. } = block;
            let Attention { qkv, proj, .. } = attn;
            let linears = [("attn.qkv", qkv), ("attn.proj", proj), ("mlp.fc1", fc1), ("mlp.fc2", fc2)];
            for (name, Linear { w, b }) in linears {
                slots.push((format!("blocks.{l}.{name}.weight"), w, None));
                if let Some(b) = b {
                    slots.push((format!("blocks.{l}.{name}.bias"), b, None));
                }
            }
            for (name, LayerNorm { gamma, beta, .. }) in [("norm1", norm1), ("norm2", norm2)] {
                slots.push((format!("blocks.{l}.{name}.weight"), gamma, None));
                slots.push((format!("blocks.{l}.{name}.bias"), beta, None));
            }
        }
        let ClassifierHead { norm, fc } = head;
        slots.push(("norm.weight".to_string(), &$($m)* norm.gamma, None));
        slots.push(("norm.bias".to_string(), &$($m)* norm.beta, None));
        slots.push(("head.weight".to_string(), &$($m)* fc.w, None));
        if let Some(b) = &$($m)* fc.b {
            slots.push(("head.bias".to_string(), b, None));
        }
        slots
    }};
}

impl<B: Backend> Transformer<B> {
    /// Every parameter under its timm name and shape (the patch embedding as the convolution
    /// kernel `[d, c, p, p]`), in load order.
    ///
    /// # Errors
    /// [`Error::Config`] for a text model (see the module docs); backend errors.
    pub fn named_parameters(&self) -> Result<Vec<NamedTensor>> {
        let be = self.backend();
        vit_parameters!(self,)
            .into_iter()
            .map(|(name, t, shape)| {
                let shape = shape.unwrap_or_else(|| be.dims(t));
                let values = be.to_vec(t)?;
                if values.len() != shape.iter().product::<usize>() {
                    return Err(Error::shape(
                        "named_parameters",
                        format!("{name}: {} values for shape {shape:?}", values.len()),
                    ));
                }
                Ok(NamedTensor {
                    name,
                    shape,
                    values,
                })
            })
            .collect()
    }

    /// Calls `f` on every parameter tensor with its timm name, in load order, so that it may
    /// replace the tensor: a trainer swaps each for a variable of the same values (the prompt
    /// trainer's `Var`s, for every weight). The replacement must keep the tensor's stored
    /// shape (the patch embedding is stored `[d, c p p]`); the model does not check it, and a
    /// wrong shape fails at the next forward.
    ///
    /// # Errors
    /// [`Error::Config`] for a text model; the first error `f` returns.
    pub fn for_each_parameter_mut(
        &mut self,
        mut f: impl FnMut(&str, &mut B::Tensor) -> Result<()>,
    ) -> Result<()> {
        for (name, t, _) in vit_parameters!(self, mut) {
            f(&name, t)?;
        }
        Ok(())
    }

    /// The same model on another backend (or a detached copy on the same one): its
    /// parameters read to host memory and loaded again. How a trained model leaves the
    /// differentiable training backend for a fast serving one.
    ///
    /// # Errors
    /// As [`named_parameters`](Self::named_parameters) and [`Transformer::new`].
    pub fn to_backend<B2: Backend>(&self, backend: B2) -> Result<Transformer<B2>> {
        let params = NamedTensors::new(self.named_parameters()?);
        Transformer::new(backend, self.config.clone(), &params)
    }

    /// Writes [`named_parameters`](Self::named_parameters) as an `f32` safetensors file.
    ///
    /// # Errors
    /// As `named_parameters`; [`Error::Io`] when the file cannot be written.
    pub fn save_safetensors(&self, path: &Path) -> Result<()> {
        let bytes = self.to_safetensors_bytes()?;
        std::fs::write(path, bytes).map_err(|e| Error::io(path, e))
    }

    /// [`named_parameters`](Self::named_parameters) as the bytes of an `f32` safetensors file
    /// (what a personalised student crosses the network as).
    ///
    /// # Errors
    /// As `named_parameters`.
    pub fn to_safetensors_bytes(&self) -> Result<Vec<u8>> {
        let params = self.named_parameters()?;
        let bytes: Vec<Vec<u8>> = params
            .iter()
            .map(|t| t.values.iter().flat_map(|v| v.to_le_bytes()).collect())
            .collect();
        let views = params
            .iter()
            .zip(&bytes)
            .map(|(t, b)| {
                TensorView::new(Dtype::F32, t.shape.clone(), b)
                    .map(|v| (t.name.clone(), v))
                    .map_err(|e| Error::Config(format!("{}: {e}", t.name)))
            })
            .collect::<Result<Vec<_>>>()?;
        safetensors::serialize(views, None)
            .map_err(|e| Error::Config(format!("serialising a checkpoint: {e}")))
    }

    /// A model from the bytes of a safetensors checkpoint with timm ViT names (what
    /// [`to_safetensors_bytes`](Self::to_safetensors_bytes) writes).
    ///
    /// # Errors
    /// [`Error::BadFile`] for bytes that are not safetensors; as [`Transformer::new`] (a
    /// missing tensor or one of another shape than `config` needs).
    pub fn from_safetensors_bytes(backend: B, config: ModelConfig, bytes: Vec<u8>) -> Result<Self> {
        let file = super::weights::SafetensorsFile::from_bytes(bytes, "<checkpoint in memory>")?;
        Transformer::new(backend, config, &file)
    }
}

/// Parameters held in memory, by name, as a [`WeightSource`]: build a model from
/// [`Transformer::named_parameters`] of others (a weight average, a trained copy) with
/// [`Transformer::new`].
#[derive(Clone, Debug, Default)]
pub struct NamedTensors {
    by_name: HashMap<String, NamedTensor>,
}

impl NamedTensors {
    /// The parameters, by name (a later duplicate name replaces an earlier one).
    pub fn new(params: Vec<NamedTensor>) -> Self {
        Self {
            by_name: params.into_iter().map(|t| (t.name.clone(), t)).collect(),
        }
    }
}

impl WeightSource for NamedTensors {
    fn tensor(&self, name: &str, shape: &[usize], _init: Init) -> Result<Vec<f32>> {
        let t = self.by_name.get(name).ok_or_else(|| Error::MissingTensor {
            file: self.describe().into(),
            name: name.to_string(),
            expected: shape.to_vec(),
        })?;
        if t.shape != shape || t.values.len() != shape.iter().product::<usize>() {
            return Err(Error::TensorShape {
                file: self.describe().into(),
                name: name.to_string(),
                expected: shape.to_vec(),
                found: t.shape.clone(),
            });
        }
        Ok(t.values.clone())
    }

    fn contains(&self, name: &str) -> bool {
        self.by_name.contains_key(name)
    }

    fn describe(&self) -> String {
        format!("{} parameters in memory", self.by_name.len())
    }
}
