//! Forward passes and accuracy of a task's prompts and head (OTAS, SPEC §4), on any backend.

use collab_core::model::{Head, Input, Transformer};
use collab_core::token::{IdentityAdapter, TokenAdapter};
use collab_core::{Backend, Error, Result};

use crate::token::prompt::{PromptAdapter, PromptSet};
use crate::token::repo::{PromptEntry, task_head};
use crate::token::tasks::LabelledImages;

/// Logits `[n, classes]` of `images` with `prompts` inserted at every layer they cover.
///
/// # Errors
/// As the model's stages and the prompt adapter.
pub fn logits<B: Backend>(
    model: &Transformer<B>,
    head: &Head<B>,
    prompts: Option<&PromptSet<B>>,
    images: &B::Tensor,
) -> Result<B::Tensor> {
    let n = model.backend().dims(images).first().copied().unwrap_or(0);
    match prompts {
        Some(p) => {
            let adapter = PromptAdapter::uniform(model.backend(), p, n)?;
            logits_with(model, head, &adapter, images)
        }
        None => logits_with(model, head, &IdentityAdapter, images),
    }
}

fn logits_with<B: Backend>(
    model: &Transformer<B>,
    head: &Head<B>,
    adapter: &dyn TokenAdapter<B>,
    images: &B::Tensor,
) -> Result<B::Tensor> {
    let h = model.embed(&Input::Images(images.clone()))?;
    let h = model.run_blocks_with(h, 0..model.num_blocks(), adapter)?;
    head.forward(model.backend(), &h)
}

/// Accuracy of `entry` on `data` at its prompt count, on any backend (batches of `batch`).
///
/// # Errors
/// [`Error::InvalidInput`] for no data, `batch = 0` or other classes than the entry's;
/// [`Error::Config`] for a backbone without a classifier head; backend errors.
pub fn evaluate<B: Backend>(
    model: &Transformer<B>,
    entry: &PromptEntry<B>,
    data: &LabelledImages,
    batch: usize,
) -> Result<f64> {
    if entry.classes != data.classes {
        return Err(Error::InvalidInput(format!(
            "entry `{}` has {} classes, data `{}` {}",
            entry.task, entry.classes, data.name, data.classes
        )));
    }
    let head = task_head(model, entry.fc.clone())?;
    accuracy(model, data, batch, |images| {
        logits(model, &head, entry.prompts.as_ref(), images)
    })
}

/// Accuracy of `head` on `data` with `adapter` at every block (a ToMe adapter for gamma < 0).
/// The adapter must accept every batch size up to `batch` (the last batch may be smaller).
///
/// # Errors
/// [`Error::InvalidInput`] for no data or `batch = 0`; the adapter's and backend errors.
pub fn evaluate_with<B: Backend>(
    model: &Transformer<B>,
    head: &Head<B>,
    adapter: &dyn TokenAdapter<B>,
    data: &LabelledImages,
    batch: usize,
) -> Result<f64> {
    accuracy(model, data, batch, |images| {
        logits_with(model, head, adapter, images)
    })
}

fn accuracy<B: Backend>(
    model: &Transformer<B>,
    data: &LabelledImages,
    batch: usize,
    forward: impl Fn(&B::Tensor) -> Result<B::Tensor>,
) -> Result<f64> {
    if data.is_empty() || batch == 0 {
        return Err(Error::InvalidInput(format!(
            "evaluation needs data and batch > 0 (task `{}`: {} examples, batch {batch})",
            data.name,
            data.len()
        )));
    }
    let backend = model.backend();
    let all: Vec<usize> = (0..data.len()).collect();
    let mut correct = 0;
    for idx in all.chunks(batch) {
        let (images, labels) = data.batch(backend, idx)?;
        let pred = backend.index_to_vec(&backend.argmax_last(&forward(&images)?)?)?;
        correct += pred
            .iter()
            .zip(&labels)
            .filter(|&(&p, &l)| p as usize == l)
            .count();
    }
    Ok(correct as f64 / data.len() as f64)
}
