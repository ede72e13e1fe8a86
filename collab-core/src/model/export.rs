//! A model's parameters under their checkpoint names, and a safetensors save that
//! [`Transformer::from_safetensors`] loads back: what fine-tuning (PRODIGY, SPEC §5) and
//! distillation (SPEC §6) write their checkpoints with.
//!
//! ViT only so far: the text model keeps BERT's query, key and value fused and only the first
//! row of the token-type table, so its export needs the table kept whole first.

use std::path::Path;

use safetensors::tensor::{Dtype, TensorView};

use super::{Embedding, Head, Transformer};
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

impl<B: Backend> Transformer<B> {
    /// Every parameter under its timm name and shape (the patch embedding as the convolution
    /// kernel `[d, c, p, p]`), in load order.
    ///
    /// # Errors
    /// [`Error::Config`] for a text model (see the module docs); backend errors.
    pub fn named_parameters(&self) -> Result<Vec<NamedTensor>> {
        let be = self.backend();
        let (Embedding::Patches(patch), Head::Classifier(head), crate::model::ModelConfig::Vit(v)) =
            (self.embedding(), self.head_stage(), self.config())
        else {
            return Err(Error::Config(
                "exporting parameters is implemented for ViT models only".into(),
            ));
        };
        let mut out = Vec::new();
        let mut push = |name: String, t: &B::Tensor, shape: Vec<usize>| -> Result<()> {
            let values = be.to_vec(t)?;
            if values.len() != shape.iter().product::<usize>() {
                return Err(Error::shape(
                    "named_parameters",
                    format!("{name}: {} values for shape {shape:?}", values.len()),
                ));
            }
            out.push(NamedTensor {
                name,
                shape,
                values,
            });
            Ok(())
        };
        let (d, c, p) = (v.encoder.hidden, v.channels, v.patch_size);
        push(
            "patch_embed.proj.weight".into(),
            &patch.proj_w,
            vec![d, c, p, p],
        )?;
        push("patch_embed.proj.bias".into(), &patch.proj_b, vec![d])?;
        push("cls_token".into(), &patch.cls, vec![1, 1, d])?;
        push("pos_embed".into(), &patch.pos, vec![1, v.num_tokens(), d])?;
        for (l, block) in self.blocks().iter().enumerate() {
            let pre = format!("blocks.{l}");
            let linears = [
                ("attn.qkv", &block.attn.qkv),
                ("attn.proj", &block.attn.proj),
                ("mlp.fc1", &block.fc1),
                ("mlp.fc2", &block.fc2),
            ];
            for (name, lin) in linears {
                push(format!("{pre}.{name}.weight"), &lin.w, be.dims(&lin.w))?;
                if let Some(b) = &lin.b {
                    push(format!("{pre}.{name}.bias"), b, be.dims(b))?;
                }
            }
            for (name, norm) in [("norm1", &block.norm1), ("norm2", &block.norm2)] {
                push(
                    format!("{pre}.{name}.weight"),
                    &norm.gamma,
                    be.dims(&norm.gamma),
                )?;
                push(
                    format!("{pre}.{name}.bias"),
                    &norm.beta,
                    be.dims(&norm.beta),
                )?;
            }
        }
        push(
            "norm.weight".into(),
            &head.norm.gamma,
            be.dims(&head.norm.gamma),
        )?;
        push(
            "norm.bias".into(),
            &head.norm.beta,
            be.dims(&head.norm.beta),
        )?;
        push("head.weight".into(), &head.fc.w, be.dims(&head.fc.w))?;
        if let Some(b) = &head.fc.b {
            push("head.bias".into(), b, be.dims(b))?;
        }
        Ok(out)
    }

    /// Writes [`named_parameters`](Self::named_parameters) as an `f32` safetensors file.
    ///
    /// # Errors
    /// As `named_parameters`; [`Error::Io`] when the file cannot be written.
    pub fn save_safetensors(&self, path: &Path) -> Result<()> {
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
        safetensors::serialize_to_file(views, None, path)
            .map_err(|e| Error::io(path, std::io::Error::other(e.to_string())))
    }
}
