//! A codec's row at one split of a real image classifier: accuracy against the labels,
//! agreement with the unsplit model, bytes per request and reconstruction error (SPEC §1's
//! measurements, one codec at a time; `cargo xtask exp svd-accuracy` sweeps them all).
//!
//! ```no_run
//! use collab_bench::codec_eval::{SplitData, evaluate};
//! use collab_backends::candle::CandleBackend;
//! use collab_core::fixtures;
//! use collab_policies::codec::{CodecContext, CodecRegistry};
//!
//! let model = fixtures::deit_tiny(CandleBackend::cpu())?;
//! let images = fixtures::imagenet_sample()?;
//! let data = SplitData::collect(&model, &images[..32], 6)?;
//! let ctx = CodecContext { split: 6, bases: None };
//! let int8 = CodecRegistry::builtin().build(&"int8".parse()?, &ctx)?;
//! let row = evaluate(&model, &data, int8.as_ref())?;
//! println!("{row}");
//! # Ok::<(), collab_core::Error>(())
//! ```

use std::fmt;
use std::path::Path;

use collab_core::fixtures::LabelledImage;
use collab_core::input::{ImagePreprocess, load_image_batch};
use collab_core::model::{Hidden, Input, Transformer};
use collab_core::split::{Activation, ActivationCodec};
use collab_core::{Backend, Error, Result};
use collab_policies::svd::{SplitBases, SplitBasis};

/// The activations of labelled images at one split, with the unsplit model's answers.
#[derive(Clone, Debug)]
pub struct SplitData {
    /// The split: the activation after blocks `0..split`.
    pub split: usize,
    /// One activation per image.
    pub activations: Vec<Activation>,
    /// Tokens kept from merging (the class token), as the head needs them.
    pub protected: usize,
    /// Each image's label.
    pub labels: Vec<usize>,
    /// The unsplit model's top-1 class per image.
    pub unsplit: Vec<usize>,
}

impl SplitData {
    /// Runs `model` on `images` (ImageNet preprocessing at the model's input side) and keeps
    /// the activations after blocks `0..split`.
    ///
    /// # Errors
    /// [`Error::Config`] for no images or a split outside `1..L`; image and backend errors.
    pub fn collect<B: Backend>(
        model: &Transformer<B>,
        images: &[LabelledImage],
        split: usize,
    ) -> Result<SplitData> {
        let layers = model.num_blocks();
        if images.is_empty() || split == 0 || split >= layers {
            return Err(Error::Config(format!(
                "codec evaluation needs images and a split in 1..{layers} (got {} images, split {split})",
                images.len()
            )));
        }
        let side = match model.config() {
            collab_core::model::ModelConfig::Vit(v) => v.image_size,
            collab_core::model::ModelConfig::Bert(_) => {
                return Err(Error::Config(
                    "codec evaluation runs image classifiers".into(),
                ));
            }
        };
        let be = model.backend();
        let pre = ImagePreprocess::imagenet(side as u32);
        let mut data = SplitData {
            split,
            activations: vec![],
            protected: 0,
            labels: vec![],
            unsplit: vec![],
        };
        for chunk in images.chunks(16) {
            let paths: Vec<&Path> = chunk.iter().map(|i| i.path.as_path()).collect();
            let pixels = load_image_batch(&pre, &paths)?;
            let x = be.from_vec(pixels, &[chunk.len(), 3, side, side])?;
            let h = model.run_blocks(model.embed(&Input::Images(x))?, 0..split)?;
            let (b, n, d) = h.dims3(be)?;
            data.protected = h.protected;
            let values = be.to_vec(&h.x)?;
            for row in values.chunks(n * d) {
                data.activations.push(Activation::new(n, d, row.to_vec())?);
            }
            let logits = be.to_vec(&model.head(&model.run_blocks(h, split..layers)?)?)?;
            data.unsplit
                .extend(logits.chunks(logits.len() / b).map(argmax));
            data.labels.extend(chunk.iter().map(|i| i.label));
        }
        Ok(data)
    }

    /// The PCA bases `pca`, `tpca` and `mpca` codecs need at this split, fitted on these
    /// activations (fit them on images you do not evaluate on).
    ///
    /// # Errors
    /// What fitting reports (too few rows).
    pub fn fit_bases(&self, model: &str) -> Result<SplitBases> {
        let mut bases = SplitBases::new(model);
        let basis = SplitBasis::fit(&self.activations, &format!("block {}", self.split))?;
        bases.insert(self.split, basis)?;
        Ok(bases)
    }
}

/// One codec's measurements at one split.
#[derive(Clone, Debug, PartialEq)]
pub struct CodecRow {
    /// The codec's name.
    pub codec: String,
    /// The split.
    pub split: usize,
    /// Images evaluated.
    pub images: usize,
    /// Top-1 accuracy against the labels.
    pub top1: f64,
    /// The unsplit model's top-1 accuracy on the same images.
    pub unsplit_top1: f64,
    /// Fraction of images whose top-1 equals the unsplit model's.
    pub agreement: f64,
    /// Mean encoded bytes per request.
    pub bytes: f64,
    /// Mean relative L2 error of the decoded activation.
    pub relative_error: f64,
}

impl fmt::Display for CodecRow {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{:<16} split {:>2}: top-1 {:.3} (unsplit {:.3}, loss {:+.3}), agreement {:.3}, {:>8.0} bytes, rel. error {:.4} ({} images)",
            self.codec,
            self.split,
            self.top1,
            self.unsplit_top1,
            self.unsplit_top1 - self.top1,
            self.agreement,
            self.bytes,
            self.relative_error,
            self.images
        )
    }
}

/// Encodes and decodes every activation of `data` with `codec`, runs the rest of `model` on
/// the decoded activations and measures the row.
///
/// # Errors
/// [`Error::Config`] for split data without activations or whose labels and answers do not
/// match them in number; the codec's errors (an encode or decode that fails is an error, not
/// a wrong answer); backend errors.
pub fn evaluate<B: Backend>(
    model: &Transformer<B>,
    data: &SplitData,
    codec: &dyn ActivationCodec,
) -> Result<CodecRow> {
    let n = data.activations.len();
    if n == 0 || data.labels.len() != n || data.unsplit.len() != n {
        return Err(Error::Config(format!(
            "split data with {n} activations, {} labels and {} unsplit answers",
            data.labels.len(),
            data.unsplit.len()
        )));
    }
    let be = model.backend();
    let layers = model.num_blocks();
    let (mut correct, mut agree, mut bytes, mut error) = (0usize, 0usize, 0usize, 0.0f64);
    for (i, act) in data.activations.iter().enumerate() {
        let wire = codec.encode(act)?;
        bytes += wire.len();
        let back = codec.decode(&wire)?;
        if (back.tokens, back.features) != (act.tokens, act.features) {
            return Err(Error::codec(
                codec.name(),
                format!(
                    "decoded {}x{} from {}x{}",
                    back.tokens, back.features, act.tokens, act.features
                ),
            ));
        }
        error += relative_error(&act.values, &back.values);
        let x = be.from_vec(back.values, &[1, back.tokens, back.features])?;
        let h = Hidden::new(x, data.protected);
        let logits = be.to_vec(&model.head(&model.run_blocks(h, data.split..layers)?)?)?;
        let top = argmax(&logits);
        correct += usize::from(top == data.labels[i]);
        agree += usize::from(top == data.unsplit[i]);
    }
    let n = data.activations.len().max(1) as f64;
    let unsplit = data
        .unsplit
        .iter()
        .zip(&data.labels)
        .filter(|(a, b)| a == b)
        .count();
    Ok(CodecRow {
        codec: codec.name(),
        split: data.split,
        images: data.activations.len(),
        top1: correct as f64 / n,
        unsplit_top1: unsplit as f64 / n,
        agreement: agree as f64 / n,
        bytes: bytes as f64 / n,
        relative_error: error / n,
    })
}

fn argmax(x: &[f32]) -> usize {
    x.iter()
        .enumerate()
        .max_by(|a, b| a.1.total_cmp(b.1))
        .map_or(0, |(i, _)| i)
}

/// `||x - y|| / ||x||` over the pairs of `x` and `y` (the absolute error `||x - y||` for a
/// zero `x`, so a zero activation rebuilt exactly scores 0).
pub fn relative_error(x: &[f32], y: &[f32]) -> f64 {
    let (mut err, mut norm) = (0f64, 0f64);
    for (a, b) in x.iter().zip(y) {
        err += f64::from(a - b).powi(2);
        norm += f64::from(*a).powi(2);
    }
    if norm > 0.0 {
        (err / norm).sqrt()
    } else {
        err.sqrt()
    }
}
