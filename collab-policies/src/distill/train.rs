//! Feature distillation through candle autograd (SPEC §6): a small student learns to output
//! the teacher's features (mean squared error), and the cloud's fusion head turns features
//! into class probabilities on both sides of the network.
//!
//! The student is a ViT of the generic model ([`TrainableModel`]) whose classifier outputs as
//! many values as the teacher has features: its head is the projection onto the teacher's
//! feature space, and its checkpoint is an ordinary ViT checkpoint that every backend loads.
//! The teacher's features are whatever its encoders and fusion produce before the head; for a
//! ViT teacher, [`class_token_features`] (the normalised class token).

use std::time::Instant;

use candle_core::{Device, Tensor, Var};
use candle_nn::{AdamW, Optimizer};
use collab_core::model::{Head, Input, Transformer};
use collab_core::{Backend, Error, Result};
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};

use crate::token::tasks::LabelledImages;
use crate::train::{TrainConfig, TrainableModel, cerr};

/// The cloud's fusion head: class logits `weight f + bias` of a feature vector `f`, in host
/// memory. The cloud scores public samples with it and shares it with the devices, which
/// score their private samples through their student (SPEC §6).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct FusionHead {
    /// Classes.
    pub classes: usize,
    /// Feature size.
    pub features: usize,
    /// `[classes, features]`, row-major.
    pub weight: Vec<f32>,
    /// `[classes]`.
    pub bias: Vec<f32>,
}

impl FusionHead {
    /// Class logits of one feature vector.
    ///
    /// # Errors
    /// [`Error::InvalidInput`] for a vector of another size than `features`.
    pub fn logits(&self, f: &[f32]) -> Result<Vec<f32>> {
        if f.len() != self.features
            || self.weight.len() != self.classes * self.features
            || self.bias.len() != self.classes
        {
            return Err(Error::InvalidInput(format!(
                "fusion head of {} classes x {} features got a vector of {}",
                self.classes,
                self.features,
                f.len()
            )));
        }
        Ok(affine(&self.weight, &self.bias, f))
    }

    /// Class probabilities (softmax of the logits) of one feature vector.
    ///
    /// # Errors
    /// As [`logits`](Self::logits).
    pub fn probabilities(&self, f: &[f32]) -> Result<Vec<f32>> {
        let z = self.logits(f)?;
        let max = z.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let e: Vec<f32> = z.iter().map(|v| (v - max).exp()).collect();
        let sum: f32 = e.iter().sum();
        Ok(e.into_iter().map(|v| v / sum).collect())
    }

    /// The most likely class of one feature vector.
    ///
    /// # Errors
    /// As [`logits`](Self::logits).
    pub fn predict(&self, f: &[f32]) -> Result<usize> {
        let z = self.logits(f)?;
        Ok(z.iter()
            .enumerate()
            .fold((0, f32::NEG_INFINITY), |best, (i, &v)| {
                if v > best.1 { (i, v) } else { best }
            })
            .0)
    }

    /// The share of `features` whose predicted class is its label.
    ///
    /// # Errors
    /// [`Error::InvalidInput`] for no samples or unequal lengths; as [`logits`](Self::logits).
    pub fn accuracy(&self, features: &[Vec<f32>], labels: &[usize]) -> Result<f64> {
        if features.is_empty() || features.len() != labels.len() {
            return Err(Error::InvalidInput(format!(
                "accuracy of {} feature vectors against {} labels",
                features.len(),
                labels.len()
            )));
        }
        let mut right = 0;
        for (f, &l) in features.iter().zip(labels) {
            right += usize::from(self.predict(f)? == l);
        }
        Ok(right as f64 / labels.len() as f64)
    }

    /// Fits a head to labelled features by softmax regression (AdamW on the cross-entropy,
    /// seeded shuffles; weights start uniform in `±1/sqrt(features)`, biases at 0).
    ///
    /// # Errors
    /// [`Error::InvalidInput`] for no samples, vectors of unequal sizes, a label not below
    /// `classes`, or a configuration that cannot train.
    pub fn fit(
        features: &[Vec<f32>],
        labels: &[usize],
        classes: usize,
        cfg: &TrainConfig,
    ) -> Result<Self> {
        let f = check_labelled(features, labels, classes)?;
        let mut layers = fit_linear_stack(features, labels, &[f, classes], cfg)?;
        let (weight, bias) = layers.remove(0);
        Ok(Self {
            classes,
            features: f,
            weight,
            bias,
        })
    }
}

/// `weight x + bias` for a row-major `weight [bias.len(), x.len()]` (sizes checked by the
/// caller).
pub(crate) fn affine(weight: &[f32], bias: &[f32], x: &[f32]) -> Vec<f32> {
    weight
        .chunks_exact(x.len().max(1))
        .zip(bias)
        .map(|(row, b)| row.iter().zip(x).map(|(w, v)| w * v).sum::<f32>() + b)
        .collect()
}

/// Checks labelled feature vectors and returns their size.
pub(crate) fn check_labelled(
    features: &[Vec<f32>],
    labels: &[usize],
    classes: usize,
) -> Result<usize> {
    let f = features.first().map_or(0, Vec::len);
    if f == 0
        || features.len() != labels.len()
        || features
            .iter()
            .any(|v| v.len() != f || v.iter().any(|x| !x.is_finite()))
        || labels.iter().any(|&l| l >= classes)
    {
        return Err(Error::InvalidInput(format!(
            "fitting a head needs equal-sized finite feature vectors with one label below \
             {classes} each ({} vectors, {} labels)",
            features.len(),
            labels.len()
        )));
    }
    Ok(f)
}

/// Fits a stack of linear layers of widths `widths[0] -> widths[1] -> ...` (no activation in
/// between: a bottleneck of width `k` is a rank-`k` classifier) to labelled features by
/// AdamW on the cross-entropy of the last layer, in seeded order. Weights start uniform in
/// `±1/sqrt(fan_in)`, biases at 0. Returns each layer's `([out, in] row-major, [out])`.
pub(crate) fn fit_linear_stack(
    features: &[Vec<f32>],
    labels: &[usize],
    widths: &[usize],
    cfg: &TrainConfig,
) -> Result<Vec<(Vec<f32>, Vec<f32>)>> {
    cfg.check()?;
    let x = rows_tensor(features)?;
    let mut rng = StdRng::seed_from_u64(cfg.seed);
    let mut vars = Vec::new();
    for w in widths.windows(2) {
        let (inp, out) = (w[0], w[1]);
        let bound = 1.0 / (inp as f32).sqrt();
        let values: Vec<f32> = (0..out * inp)
            .map(|_| rng.random_range(-bound..bound))
            .collect();
        let weight = Var::from_vec(values, (out, inp), &Device::Cpu).map_err(cerr("var"))?;
        let bias = Var::zeros(out, candle_core::DType::F32, &Device::Cpu).map_err(cerr("var"))?;
        vars.push((weight, bias));
    }
    let all: Vec<Var> = vars
        .iter()
        .flat_map(|(w, b)| [w.clone(), b.clone()])
        .collect();
    let mut opt = AdamW::new(all, cfg.adamw()).map_err(cerr("adamw"))?;
    let mut order: Vec<usize> = (0..labels.len()).collect();
    for _ in 0..cfg.epochs {
        order.shuffle(&mut rng);
        for idx in order.chunks(cfg.batch) {
            let mut z = select_rows(&x, idx)?;
            for (w, b) in &vars {
                z = w
                    .as_tensor()
                    .t()
                    .and_then(|wt| z.matmul(&wt))
                    .and_then(|y| y.broadcast_add(b.as_tensor()))
                    .map_err(cerr("linear"))?;
            }
            let yb = Tensor::new(
                idx.iter().map(|&i| labels[i] as u32).collect::<Vec<_>>(),
                &Device::Cpu,
            )
            .map_err(cerr("labels"))?;
            let loss = candle_nn::loss::cross_entropy(&z, &yb).map_err(cerr("loss"))?;
            opt.backward_step(&loss).map_err(cerr("backward"))?;
        }
    }
    vars.iter()
        .map(|(w, b)| {
            let w = w
                .as_tensor()
                .flatten_all()
                .and_then(|t| t.to_vec1())
                .map_err(cerr("weight"))?;
            let b = b.as_tensor().to_vec1().map_err(cerr("bias"))?;
            Ok((w, b))
        })
        .collect()
}

/// Rows as a `[n, f]` host tensor.
pub(crate) fn rows_tensor(rows: &[Vec<f32>]) -> Result<Tensor> {
    let f = rows.first().map_or(0, Vec::len);
    let flat: Vec<f32> = rows.iter().flatten().copied().collect();
    Tensor::from_vec(flat, (rows.len(), f), &Device::Cpu).map_err(cerr("rows"))
}

fn select_rows(t: &Tensor, idx: &[usize]) -> Result<Tensor> {
    let ids = Tensor::new(
        idx.iter().map(|&i| i as u32).collect::<Vec<_>>(),
        t.device(),
    )
    .map_err(cerr("ids"))?;
    t.index_select(&ids, 0).map_err(cerr("index_select"))
}

/// Runs `f` on `idx` of `data` in batches of `batch` and returns the rows of its `[n, k]`
/// outputs.
fn per_sample<B: Backend>(
    model: &Transformer<B>,
    data: &LabelledImages,
    idx: &[usize],
    batch: usize,
    f: impl Fn(&B::Tensor) -> Result<B::Tensor>,
) -> Result<Vec<Vec<f32>>> {
    if batch == 0 {
        return Err(Error::InvalidInput("a batch of 0 samples".into()));
    }
    let be = model.backend();
    let mut out = Vec::with_capacity(idx.len());
    for part in idx.chunks(batch) {
        let (images, _) = data.batch(be, part)?;
        let y = f(&images)?;
        let dims = be.dims(&y);
        let values = be.to_vec(&y)?;
        let k = dims.last().copied().unwrap_or(0);
        if dims.len() != 2 || dims[0] != part.len() {
            return Err(Error::shape(
                "per_sample",
                format!("{dims:?} for {} samples", part.len()),
            ));
        }
        out.extend(values.chunks_exact(k.max(1)).map(<[f32]>::to_vec));
    }
    Ok(out)
}

/// A ViT's normalised class token (its classifier's input) for the samples `idx` of `data`:
/// the features of a ViT teacher.
///
/// # Errors
/// [`Error::Config`] for a model without a classifier head; [`Error::InvalidInput`] for
/// `batch = 0`, a bad index or images of another size; backend errors.
pub fn class_token_features<B: Backend>(
    model: &Transformer<B>,
    data: &LabelledImages,
    idx: &[usize],
    batch: usize,
) -> Result<Vec<Vec<f32>>> {
    let Head::Classifier(head) = model.head_stage() else {
        return Err(Error::Config(
            "class-token features need a ViT with a classifier head".into(),
        ));
    };
    let be = model.backend();
    per_sample(model, data, idx, batch, |images| {
        let h = model.embed(&Input::Images(images.clone()))?;
        let h = model.run_blocks(h, 0..model.num_blocks())?;
        let (b, _, d) = h.dims3(be)?;
        let cls = be.reshape(&be.narrow(&h.x, 1, 0, 1)?, &[b, d])?;
        head.norm.forward(be, &cls)
    })
}

/// The model's outputs for the samples `idx` of `data`: a student's features.
///
/// # Errors
/// [`Error::InvalidInput`] for `batch = 0`, a bad index or images of another size; backend
/// errors.
pub fn outputs<B: Backend>(
    model: &Transformer<B>,
    data: &LabelledImages,
    idx: &[usize],
    batch: usize,
) -> Result<Vec<Vec<f32>>> {
    per_sample(model, data, idx, batch, |images| {
        model.forward(&Input::Images(images.clone()))
    })
}

/// What one distillation run did.
#[derive(Clone, Debug, Serialize)]
pub struct DistillReport {
    /// Samples distilled on.
    pub samples: usize,
    /// Mean feature MSE per epoch (each batch's loss before its update).
    pub losses: Vec<f64>,
    /// Wall-clock time.
    pub seconds: f64,
}

/// Distils `student` towards `targets` on the samples `subset` of `data`: AdamW on the mean
/// squared error between the student's outputs and the targets, `cfg.epochs` passes in a
/// seeded order. The student's variables change in place.
///
/// `targets[i]` is the teacher's feature vector of `data`'s sample `i` (the student's inputs
/// may be smaller images of the same samples).
///
/// # Errors
/// [`Error::InvalidInput`] for an empty subset, an index out of range, targets not one per
/// sample or of another size than the student's output, or a configuration that cannot train;
/// [`Error::Config`] when no gradient reaches a parameter (a backend that cuts the graph).
pub fn distil<B: Backend<Tensor = Tensor>>(
    student: &TrainableModel<B>,
    data: &LabelledImages,
    targets: &[Vec<f32>],
    subset: &[usize],
    cfg: &TrainConfig,
    label: &str,
) -> Result<DistillReport> {
    cfg.check()?;
    let width = targets.first().map_or(0, Vec::len);
    if subset.is_empty()
        || targets.len() != data.len()
        || targets.iter().any(|t| t.len() != width)
        || subset.iter().any(|&i| i >= data.len())
    {
        return Err(Error::InvalidInput(format!(
            "distilling on {} of {} samples with {} targets (need a non-empty subset in range \
             and one equal-sized target per sample)",
            subset.len(),
            data.len(),
            targets.len()
        )));
    }
    let start = Instant::now();
    let model = student.model();
    let targets = rows_tensor(targets)?;
    let mut opt = AdamW::new(student.vars(), cfg.adamw()).map_err(cerr("adamw"))?;
    let mut rng = StdRng::seed_from_u64(cfg.seed);
    let mut order = subset.to_vec();
    let mut losses = Vec::with_capacity(cfg.epochs);
    let mut checked = false;
    for epoch in 0..cfg.epochs {
        order.shuffle(&mut rng);
        let bar = cfg.progress_bar(
            order.len().div_ceil(cfg.batch),
            format!("{label} epoch {}/{}", epoch + 1, cfg.epochs),
        );
        let mut total = 0.0;
        for idx in order.chunks(cfg.batch) {
            let (images, _) = data.batch(model.backend(), idx)?;
            let out = model.forward(&Input::Images(images))?;
            let want = select_rows(&targets, idx)?;
            if out.dims() != want.dims() {
                return Err(Error::InvalidInput(format!(
                    "the student outputs {:?}, the targets are {:?}",
                    out.dims(),
                    want.dims()
                )));
            }
            let loss = (out - want)
                .and_then(|d| d.sqr())
                .and_then(|d| d.mean_all())
                .map_err(cerr("mse"))?;
            let value = f64::from(loss.to_scalar::<f32>().map_err(cerr("loss"))?);
            let grads = loss.backward().map_err(cerr("backward"))?;
            if !checked {
                student.check_gradients(&grads)?;
                checked = true;
            }
            opt.step(&grads).map_err(cerr("step"))?;
            total += value * idx.len() as f64;
            bar.inc(1);
            bar.set_message(format!("mse {value:.4}"));
        }
        let mean = total / order.len() as f64;
        bar.finish_with_message(format!("mean mse {mean:.4}"));
        losses.push(mean);
    }
    Ok(DistillReport {
        samples: subset.len(),
        losses,
        seconds: start.elapsed().as_secs_f64(),
    })
}

/// Class probabilities of feature vectors through `head`, one row each.
///
/// # Errors
/// As [`FusionHead::probabilities`].
pub fn probabilities(head: &FusionHead, features: &[Vec<f32>]) -> Result<Vec<Vec<f32>>> {
    features.iter().map(|f| head.probabilities(f)).collect()
}
