//! Warm-up fine-tuning (PRODIGY, SPEC §5): every parameter of a ViT trained on labelled
//! images with ToMe merging `r` tokens per block inside every forward pass, so that the model
//! stays accurate when served at merging numbers up to about `r`. Merging's gather and scatter
//! and its proportional attention backpropagate on `CandleBackend::differentiable()` (see
//! `gradients_flow_through_tome_to_every_parameter`).

use std::time::Instant;

use candle_core::Tensor;
use candle_nn::{AdamW, Optimizer};
use collab_core::model::{Input, ModelConfig, NamedTensor, NamedTensors, Transformer};
use collab_core::{Backend, Error, Result};
use rand::SeedableRng;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use serde::Serialize;

use crate::token::schedule::MergeSchedule;
use crate::token::tasks::LabelledImages;
use crate::token::tome::ToMe;
use crate::train::{TrainConfig, TrainableModel, cerr};

/// What one warm-up run did.
#[derive(Clone, Debug, Serialize)]
pub struct WarmupReport {
    /// Tokens merged per block during training.
    pub r: usize,
    /// Mean cross-entropy per epoch (each batch's before its update).
    pub losses: Vec<f64>,
    /// Accuracy over the last epoch's batches, each before its update.
    pub train_accuracy: f64,
    /// Optimisation steps taken.
    pub steps: usize,
    /// Wall-clock time.
    pub seconds: f64,
}

/// ToMe merging `r` tokens per block of `model` (fitted to its token count: at most half of
/// a block's unprotected tokens), or `None` for `r = 0`.
///
/// # Errors
/// [`Error::Config`] for a model that is not a ViT.
pub fn tome_at<B: Backend>(model: &Transformer<B>, r: usize) -> Result<Option<ToMe>> {
    let ModelConfig::Vit(v) = model.config() else {
        return Err(Error::Config("token merging needs a ViT".into()));
    };
    Ok((r > 0).then(|| {
        ToMe::new(
            MergeSchedule::constant(r, model.num_blocks())
                .fitted(v.num_tokens(), model.config().protected_tokens()),
        )
    }))
}

/// Logits `[n, classes]` of `images` with ToMe at `r` (no merging at 0).
///
/// # Errors
/// As the model's stages.
pub fn logits_at<B: Backend>(
    model: &Transformer<B>,
    images: &B::Tensor,
    r: usize,
) -> Result<B::Tensor> {
    let h = model.embed(&Input::Images(images.clone()))?;
    let h = match tome_at(model, r)? {
        Some(tome) => model.run_blocks_with(h, 0..model.num_blocks(), &tome)?,
        None => model.run_blocks(h, 0..model.num_blocks())?,
    };
    model.head(&h)
}

/// Top-1 accuracy of `model` on `data` served at merging number `r`, in batches of `batch`.
///
/// # Errors
/// [`Error::InvalidInput`] for no data or `batch = 0`; as [`logits_at`].
pub fn accuracy_at<B: Backend>(
    model: &Transformer<B>,
    data: &LabelledImages,
    r: usize,
    batch: usize,
) -> Result<f64> {
    if data.is_empty() || batch == 0 {
        return Err(Error::InvalidInput(
            "accuracy needs data and batch > 0".into(),
        ));
    }
    let be = model.backend();
    let all: Vec<usize> = (0..data.len()).collect();
    let mut right = 0;
    for idx in all.chunks(batch) {
        let (images, labels) = data.batch(be, idx)?;
        let logits = logits_at(model, &images, r)?;
        let classes = be.dims(&logits).last().copied().unwrap_or(1).max(1);
        let values = be.to_vec(&logits)?;
        for (row, &l) in values.chunks_exact(classes).zip(&labels) {
            let best = row
                .iter()
                .enumerate()
                .fold(
                    (0, f32::NEG_INFINITY),
                    |b, (i, &v)| if v > b.1 { (i, v) } else { b },
                )
                .0;
            right += usize::from(best == l);
        }
    }
    Ok(right as f64 / data.len() as f64)
}

/// The same ViT with its classifier replaced by `weight [classes, d]` and `bias [classes]`
/// (a task head, e.g. a linear probe's).
///
/// # Errors
/// [`Error::Config`] for a model that is not a ViT; [`Error::InvalidInput`] for a head of
/// other sizes; as [`Transformer::new`].
pub fn with_task_head<B: Backend>(
    model: &Transformer<B>,
    weight: Vec<f32>,
    bias: Vec<f32>,
) -> Result<Transformer<B>> {
    let ModelConfig::Vit(mut v) = model.config().clone() else {
        return Err(Error::Config("a task head needs a ViT".into()));
    };
    let d = v.encoder.hidden;
    let classes = bias.len();
    if classes == 0 || weight.len() != classes * d {
        return Err(Error::InvalidInput(format!(
            "a head of {} weights and {classes} biases for {d} features",
            weight.len()
        )));
    }
    v.num_classes = classes;
    let mut params: Vec<NamedTensor> = model
        .named_parameters()?
        .into_iter()
        .filter(|t| t.name != "head.weight" && t.name != "head.bias")
        .collect();
    params.push(NamedTensor {
        name: "head.weight".into(),
        shape: vec![classes, d],
        values: weight,
    });
    params.push(NamedTensor {
        name: "head.bias".into(),
        shape: vec![classes],
        values: bias,
    });
    Transformer::new(
        model.backend().clone(),
        ModelConfig::Vit(v),
        &NamedTensors::new(params),
    )
}

/// Fine-tunes every parameter of `model` on `data` (cross-entropy of its classifier) with
/// ToMe merging `r` tokens per block in every forward pass; AdamW, seeded order, a progress
/// bar when `cfg.progress`. The variables change in place.
///
/// # Errors
/// [`Error::InvalidInput`] for no data, a label beyond the classifier's classes, or a
/// configuration that cannot train; [`Error::Config`] when no gradient reaches a parameter.
pub fn warm_up<B: Backend<Tensor = Tensor>>(
    model: &TrainableModel<B>,
    data: &LabelledImages,
    r: usize,
    cfg: &TrainConfig,
    label: &str,
) -> Result<WarmupReport> {
    cfg.check()?;
    let m = model.model();
    let classes = match m.config() {
        ModelConfig::Vit(v) => v.num_classes,
        ModelConfig::Bert(_) => return Err(Error::Config("warm-up needs a ViT".into())),
    };
    if data.is_empty() || data.labels.iter().any(|&l| l >= classes) {
        return Err(Error::InvalidInput(format!(
            "warm-up on {} images with labels below {classes} (got a larger one or none)",
            data.len()
        )));
    }
    let start = Instant::now();
    let mut opt = AdamW::new(model.vars(), cfg.adamw()).map_err(cerr("adamw"))?;
    let mut rng = StdRng::seed_from_u64(cfg.seed);
    let mut order: Vec<usize> = (0..data.len()).collect();
    let (mut losses, mut accuracy, mut steps) = (vec![], 0.0, 0);
    for epoch in 0..cfg.epochs {
        order.shuffle(&mut rng);
        let bar = cfg.progress_bar(
            order.len().div_ceil(cfg.batch),
            format!("{label} r={r} epoch {}/{}", epoch + 1, cfg.epochs),
        );
        let (mut total, mut right) = (0.0, 0);
        for idx in order.chunks(cfg.batch) {
            let (images, labels) = data.batch(m.backend(), idx)?;
            let logits = logits_at(m, &images, r)?;
            let targets = Tensor::new(
                labels.iter().map(|&l| l as u32).collect::<Vec<_>>(),
                logits.device(),
            )
            .map_err(cerr("labels"))?;
            let loss =
                candle_nn::loss::cross_entropy(&logits, &targets).map_err(cerr("cross_entropy"))?;
            let pred = logits
                .detach()
                .argmax(1)
                .and_then(|p| p.to_vec1::<u32>())
                .map_err(cerr("argmax"))?;
            right += pred
                .iter()
                .zip(&labels)
                .filter(|&(&p, &l)| p as usize == l)
                .count();
            let value = f64::from(loss.to_scalar::<f32>().map_err(cerr("loss"))?);
            let grads = loss.backward().map_err(cerr("backward"))?;
            if steps == 0 {
                model.check_gradients(&grads)?;
            }
            opt.step(&grads).map_err(cerr("step"))?;
            steps += 1;
            total += value * idx.len() as f64;
            bar.inc(1);
            bar.set_message(format!("loss {value:.4}"));
        }
        let mean = total / data.len() as f64;
        bar.finish_with_message(format!("mean loss {mean:.4}"));
        losses.push(mean);
        accuracy = right as f64 / data.len() as f64;
    }
    Ok(WarmupReport {
        r,
        losses,
        train_accuracy: accuracy,
        steps,
        seconds: start.elapsed().as_secs_f64(),
    })
}
