//! The labelled tasks that OTAS serves on one DeiT-Tiny backbone (SPEC §4, "Evaluation": tasks
//! A, B, C), all as 224 x 224 images normalised with the ImageNet mean and std.
//!
//! - A: ImageNet-1k on the 1000 sample images with the checkpoint's own head ([`imagenet1k`]);
//! - B: the 1797 8 x 8 handwritten digits upscaled to 224 px, 10 classes ([`digits`]);
//! - C: "animal or not" on the ImageNet sample, 2 classes ([`imagenet_animal`]).
//!
//! Memory: an image takes 3 x 224 x 224 f32 = 588 KiB, so the digits take about 1 GiB and the
//! ImageNet sample about 0.6 GiB.

use std::path::PathBuf;

use collab_core::fixtures;
use collab_core::input::ImagePreprocess;
use collab_core::{Backend, Error, Result};
use rand::SeedableRng;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;

/// Side of the task images (DeiT-Tiny's input size).
pub const IMAGE_SIZE: usize = 224;

/// ImageNet channel means (after scaling to [0, 1]).
const MEAN: [f32; 3] = [0.485, 0.456, 0.406];
/// ImageNet channel standard deviations.
const STD: [f32; 3] = [0.229, 0.224, 0.225];

/// ImageNet classes `0..ANIMAL_CLASSES` are animals (WordNet: tench .. mongoose).
pub const ANIMAL_CLASSES: usize = 398;

/// Labelled images of one task.
#[derive(Clone, Debug)]
pub struct LabelledImages {
    /// Task name (used as the repository key).
    pub name: String,
    /// Number of classes; every label is below it.
    pub classes: usize,
    /// Images in CHW order, `3 x s x s` values each (s = 224 for the real tasks), normalised.
    pub images: Vec<Vec<f32>>,
    /// One label per image.
    pub labels: Vec<usize>,
}

impl LabelledImages {
    /// Number of examples.
    pub fn len(&self) -> usize {
        self.labels.len()
    }

    /// Whether there are no examples.
    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    /// The examples at `idx`, in that order (indices out of range are skipped).
    pub fn subset(&self, idx: &[usize]) -> Self {
        let idx: Vec<usize> = idx.iter().copied().filter(|&i| i < self.len()).collect();
        Self {
            name: self.name.clone(),
            classes: self.classes,
            images: idx.iter().map(|&i| self.images[i].clone()).collect(),
            labels: idx.iter().map(|&i| self.labels[i]).collect(),
        }
    }

    /// The images at `idx` as one tensor `[n, 3, s, s]`, and their labels.
    ///
    /// # Errors
    /// [`Error::InvalidInput`] for no indices, an index out of range, or an image that is not
    /// `3 x s x s` values of the same `s` as the first; backend errors.
    pub fn batch<B: Backend>(&self, backend: &B, idx: &[usize]) -> Result<(B::Tensor, Vec<usize>)> {
        let first = *idx
            .first()
            .ok_or_else(|| Error::InvalidInput("an empty batch of images".into()))?;
        if let Some(&bad) = idx.iter().find(|&&i| i >= self.len()) {
            return Err(Error::InvalidInput(format!(
                "image {bad} out of range: task `{}` has {} images",
                self.name,
                self.len()
            )));
        }
        let len = self.images[first].len();
        let side = ((len / 3) as f64).sqrt().round() as usize;
        if side == 0 || 3 * side * side != len {
            return Err(Error::InvalidInput(format!(
                "image {first} of task `{}` has {len} values, not 3 x s x s",
                self.name
            )));
        }
        let mut data = Vec::with_capacity(idx.len() * len);
        for &i in idx {
            if self.images[i].len() != len {
                return Err(Error::InvalidInput(format!(
                    "image {i} of task `{}` has {} values, image {first} has {len}",
                    self.name,
                    self.images[i].len()
                )));
            }
            data.extend_from_slice(&self.images[i]);
        }
        let t = backend.from_vec(data, &[idx.len(), 3, side, side])?;
        Ok((t, idx.iter().map(|&i| self.labels[i]).collect()))
    }

    /// The same examples at a `factor` times smaller side, each output pixel the mean of a
    /// `factor x factor` block per channel (a small student's input, SPEC §6).
    ///
    /// # Errors
    /// [`Error::InvalidInput`] for `factor = 0`, or an image that is not `3 x s x s` values
    /// with `s` a multiple of `factor`.
    pub fn downsampled(&self, factor: usize) -> Result<Self> {
        let images = self
            .images
            .iter()
            .enumerate()
            .map(|(i, img)| {
                let side = ((img.len() / 3) as f64).sqrt().round() as usize;
                if factor == 0
                    || side == 0
                    || 3 * side * side != img.len()
                    || !side.is_multiple_of(factor)
                {
                    return Err(Error::InvalidInput(format!(
                        "image {i} of task `{}` ({} values) is not 3 x s x s with s a positive \
                         multiple of {factor}",
                        self.name,
                        img.len()
                    )));
                }
                let small = side / factor;
                let norm = 1.0 / (factor * factor) as f32;
                let mut out = vec![0.0f32; 3 * small * small];
                for c in 0..3 {
                    for y in 0..side {
                        for x in 0..side {
                            out[(c * small + y / factor) * small + x / factor] +=
                                img[(c * side + y) * side + x] * norm;
                        }
                    }
                }
                Ok(out)
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            name: self.name.clone(),
            classes: self.classes,
            images,
            labels: self.labels.clone(),
        })
    }

    /// A seeded shuffle split: `train` examples for training, the rest for testing.
    ///
    /// # Errors
    /// [`Error::InvalidInput`] unless `0 < train < len`.
    pub fn split(self, train: usize, seed: u64) -> Result<TaskSplit> {
        if train == 0 || train >= self.len() {
            return Err(Error::InvalidInput(format!(
                "task `{}` has {} examples: cannot take {train} for training and keep a test set",
                self.name,
                self.len()
            )));
        }
        let mut order: Vec<usize> = (0..self.len()).collect();
        order.shuffle(&mut StdRng::seed_from_u64(seed));
        // Move the images rather than copy them (the digits take about 1 GiB).
        let mut images: Vec<Option<Vec<f32>>> = self.images.into_iter().map(Some).collect();
        let mut part = |idx: &[usize]| LabelledImages {
            name: self.name.clone(),
            classes: self.classes,
            images: idx.iter().filter_map(|&i| images[i].take()).collect(),
            labels: idx.iter().map(|&i| self.labels[i]).collect(),
        };
        Ok(TaskSplit {
            train: part(&order[..train]),
            test: part(&order[train..]),
        })
    }
}

/// Training and test examples of a task (disjoint).
#[derive(Clone, Debug)]
pub struct TaskSplit {
    /// Training examples.
    pub train: LabelledImages,
    /// Test examples.
    pub test: LabelledImages,
}

/// One 8 x 8 digit (grey levels `0..=16`) as a normalised `3 x 224 x 224` image: bilinear
/// upscaling with half-pixel centres (PyTorch's `align_corners = False`, edges clamped),
/// scaled to [0, 1] (ink bright on black, as stored), copied to the three channels and
/// normalised with the ImageNet mean and std.
pub fn digit_image(pixels: &[u8; 64]) -> Vec<f32> {
    let s = IMAGE_SIZE;
    let scale = 8.0 / s as f32;
    // Source coordinate, lower neighbour and weight of the upper one, per output coordinate.
    let coords: Vec<(usize, usize, f32)> = (0..s)
        .map(|o| {
            let src = ((o as f32 + 0.5) * scale - 0.5).clamp(0.0, 7.0);
            let lo = src.floor() as usize;
            (lo, (lo + 1).min(7), src - lo as f32)
        })
        .collect();
    let px = |y: usize, x: usize| f32::from(pixels[y * 8 + x]) / 16.0;
    let mut grey = Vec::with_capacity(s * s);
    for &(y0, y1, wy) in &coords {
        for &(x0, x1, wx) in &coords {
            let top = px(y0, x0) * (1.0 - wx) + px(y0, x1) * wx;
            let bottom = px(y1, x0) * (1.0 - wx) + px(y1, x1) * wx;
            grey.push(top * (1.0 - wy) + bottom * wy);
        }
    }
    let mut out = Vec::with_capacity(3 * s * s);
    for c in 0..3 {
        out.extend(grey.iter().map(|&v| (v - MEAN[c]) / STD[c]));
    }
    out
}

/// Task B: the 1797 digits of the fixtures (`digits/digits.csv.gz`) as 224 px images (see
/// [`digit_image`]), 10 classes, split by a seeded shuffle into `train` examples and the
/// rest as test.
///
/// # Errors
/// The fixture's errors; [`Error::InvalidInput`] unless `0 < train < 1797`.
pub fn digits(train: usize, seed: u64) -> Result<TaskSplit> {
    digits_all()?.split(train, seed)
}

/// All 1797 digits of the fixtures as 224 px images (see [`digit_image`]), in file order.
///
/// # Errors
/// The fixture's errors.
pub fn digits_all() -> Result<LabelledImages> {
    let digits = fixtures::digits()?;
    Ok(LabelledImages {
        name: "digits".into(),
        classes: 10,
        images: digits.iter().map(|d| digit_image(&d.pixels)).collect(),
        labels: digits.iter().map(|d| d.label).collect(),
    })
}

/// Loads and preprocesses images on all cores (DeiT evaluation preprocessing at 224 px).
fn load_images(paths: &[PathBuf]) -> Result<Vec<Vec<f32>>> {
    let pre = ImagePreprocess::imagenet(IMAGE_SIZE as u32);
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let chunk = paths.len().div_ceil(threads).max(1);
    std::thread::scope(|scope| {
        let handles: Vec<_> = paths
            .chunks(chunk)
            .map(|part| {
                let pre = &pre;
                scope.spawn(move || part.iter().map(|p| pre.load(p)).collect::<Result<Vec<_>>>())
            })
            .collect();
        let mut out = Vec::with_capacity(paths.len());
        for h in handles {
            let part = h
                .join()
                .map_err(|_| Error::InvalidInput("an image-loading thread panicked".into()))??;
            out.extend(part);
        }
        Ok(out)
    })
}

/// The ImageNet sample with its class indices.
fn imagenet_sample() -> Result<(Vec<Vec<f32>>, Vec<usize>)> {
    let sample = fixtures::imagenet_sample()?;
    if let Some(bad) = sample.iter().find(|s| s.label >= 1000) {
        return Err(Error::BadFile {
            path: bad.path.clone(),
            message: "its wnid is not one of the 1000 ImageNet classes".into(),
        });
    }
    let paths: Vec<PathBuf> = sample.iter().map(|s| s.path.clone()).collect();
    Ok((
        load_images(&paths)?,
        sample.iter().map(|s| s.label).collect(),
    ))
}

/// Task C: "animal or not" on the 1000 ImageNet sample images: label 1 when the ImageNet class
/// index is below [`ANIMAL_CLASSES`] (398 animals, 602 others), split by a seeded shuffle
/// into `train` examples and the rest as test.
///
/// # Errors
/// The fixtures' errors; [`Error::InvalidInput`] unless `0 < train < 1000`.
pub fn imagenet_animal(train: usize, seed: u64) -> Result<TaskSplit> {
    imagenet_animal_from(imagenet1k()?, train, seed)
}

/// Task C from already decoded ImageNet-1k samples (as [`imagenet1k`] returns them), so a
/// caller holding both tasks decodes the 1000 JPEGs once; the same split as
/// [`imagenet_animal`] for the same `train` and `seed`.
///
/// # Errors
/// [`Error::InvalidInput`] unless `0 < train < len`.
pub fn imagenet_animal_from(
    imagenet: LabelledImages,
    train: usize,
    seed: u64,
) -> Result<TaskSplit> {
    LabelledImages {
        name: "imagenet-animal".into(),
        classes: 2,
        labels: imagenet
            .labels
            .iter()
            .map(|&c| usize::from(c < ANIMAL_CLASSES))
            .collect(),
        images: imagenet.images,
    }
    .split(train, seed)
}

/// Task A: ImageNet-1k on the 1000 sample images (one per class), served with the checkpoint's
/// own head (no training; gamma <= 0 only).
///
/// # Errors
/// The fixtures' errors.
pub fn imagenet1k() -> Result<LabelledImages> {
    let (images, labels) = imagenet_sample()?;
    Ok(LabelledImages {
        name: "imagenet1k".into(),
        classes: 1000,
        images,
        labels,
    })
}
