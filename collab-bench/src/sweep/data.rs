//! The evaluation and calibration sets of the sweep, carried block by block.
//!
//! DeiT-Tiny: the 1000 ImageNet sample images; every tenth image (sorted names) is a
//! calibration image for the PCA bases, the other 900 are evaluated. MiniLM: `calibration`
//! STS-B dev pairs spread evenly over the set calibrate, the others are evaluated (the set is
//! ordered by genre, short video captions first: calibrating on the first pairs alone would
//! fit the bases to captions and leave most positions of the longer sentences unfitted).

use std::path::Path;

use collab_core::input::{ImagePreprocess, load_image_batch};
use collab_core::model::{Hidden, Input, Transformer};
use collab_core::stats::spearman;
use collab_core::{Backend, Result, fixtures};

/// A batch of hidden states and the real token count of each of its items.
#[derive(Clone, Debug)]
pub struct Batch<B: Backend> {
    /// The hidden states after the blocks run so far.
    pub hidden: Hidden<B>,
    /// Each item's real token count (text pads to the longest).
    pub lens: Vec<usize>,
}

/// What the sweep scores a configuration by.
#[derive(Clone, Copy, Debug)]
pub struct Score {
    /// Top-1 accuracy, or Spearman correlation.
    pub metric: f64,
    /// Top-1 agreement with the uncompressed model, or mean cosine to its embeddings.
    pub agreement: f64,
}

/// The model and its data.
#[derive(Debug)]
pub struct SweepData<B: Backend> {
    /// The model's name in reports (`deit-tiny`, `minilm`).
    pub name: &'static str,
    /// The metric (`top1`, `spearman`).
    pub metric_name: &'static str,
    /// The model.
    pub model: Transformer<B>,
    /// Evaluation batches, carried block by block.
    pub eval: Vec<Batch<B>>,
    /// Calibration batches (disjoint from the evaluation), carried block by block.
    pub calib: Vec<Batch<B>>,
    labels: Labels,
}

#[derive(Debug)]
enum Labels {
    Classes(Vec<usize>),
    Similarity(Vec<f64>),
}

impl<B: Backend> SweepData<B> {
    /// DeiT-Tiny on `be`, on the first `images` sample images.
    ///
    /// # Errors
    /// Missing fixtures, image and backend errors.
    pub fn deit(be: B, images: usize, batch: usize) -> Result<Self> {
        let model = fixtures::deit_tiny(be.clone())?;
        let mut all = fixtures::imagenet_sample()?;
        all.truncate(images);
        let (calib, eval): (Vec<_>, Vec<_>) =
            all.into_iter().enumerate().partition(|(i, _)| i % 10 == 0);
        let pre = ImagePreprocess::imagenet(224);
        let embed = |items: &[(usize, fixtures::LabelledImage)]| -> Result<Vec<Batch<B>>> {
            items
                .chunks(batch.max(1))
                .map(|chunk| {
                    let paths: Vec<&Path> = chunk.iter().map(|(_, i)| i.path.as_path()).collect();
                    let x =
                        be.from_vec(load_image_batch(&pre, &paths)?, &[chunk.len(), 3, 224, 224])?;
                    let hidden = model.embed(&Input::Images(x))?;
                    let n = hidden.dims3(&be)?.1;
                    Ok(Batch {
                        hidden,
                        lens: vec![n; chunk.len()],
                    })
                })
                .collect()
        };
        Ok(Self {
            name: "deit-tiny",
            metric_name: "top1",
            eval: embed(&eval)?,
            calib: embed(&calib)?,
            labels: Labels::Classes(eval.iter().map(|(_, i)| i.label).collect()),
            model,
        })
    }

    /// MiniLM on `be`, on STS-B dev: `calibration` pairs spread evenly over the set (every
    /// `len / calibration`-th) calibrate; the first `pairs` of the others are evaluated.
    ///
    /// # Errors
    /// MiniLM missing from the model cache (`cargo xtask fetch-models` puts it there), backend
    /// errors.
    pub fn minilm(be: B, calibration: usize, pairs: usize, batch: usize) -> Result<Self> {
        let (model, tok) = fixtures::minilm(be.clone())?;
        let all = fixtures::stsb_dev()?;
        let stride = (all.len() / calibration.max(1)).max(1);
        let (calib, mut eval): (Vec<_>, Vec<_>) = all
            .into_iter()
            .enumerate()
            .partition(|(i, _)| i % stride == 0 && i / stride < calibration);
        eval.truncate(pairs);
        let calib_pairs: Vec<fixtures::SentencePair> = calib.into_iter().map(|(_, p)| p).collect();
        let eval_pairs: Vec<fixtures::SentencePair> = eval.into_iter().map(|(_, p)| p).collect();
        let embed = |ps: &[fixtures::SentencePair]| -> Result<Vec<Batch<B>>> {
            let ids = ps
                .iter()
                .flat_map(|p| [p.a.as_str(), p.b.as_str()])
                .map(|s| tok.encode(s))
                .collect::<collab_core::Result<Vec<_>>>()?;
            ids.chunks(batch.max(2) / 2 * 2)
                .map(|chunk| {
                    let lens = chunk.iter().map(Vec::len).collect();
                    let hidden = model.embed(&Input::Tokens(chunk.to_vec()))?;
                    Ok(Batch { hidden, lens })
                })
                .collect()
        };
        Ok(Self {
            name: "minilm",
            metric_name: "spearman",
            eval: embed(&eval_pairs)?,
            calib: embed(&calib_pairs)?,
            labels: Labels::Similarity(eval_pairs.iter().map(|p| p.score).collect()),
            model,
        })
    }

    /// Runs one block on every batch (evaluation and calibration).
    ///
    /// # Errors
    /// Backend errors.
    pub fn advance(&mut self, block: usize) -> Result<()> {
        for b in self.eval.iter_mut().chain(self.calib.iter_mut()) {
            b.hidden = self.model.run_blocks(b.hidden.clone(), block..block + 1)?;
        }
        Ok(())
    }

    /// Features of the hidden states.
    pub fn features(&self) -> usize {
        self.model.config().encoder().hidden
    }

    /// Scores head outputs (one `Vec` per evaluation batch) against the labels and against the
    /// uncompressed outputs `reference`.
    pub fn score(&self, outputs: &[Vec<f32>], reference: &[Vec<f32>]) -> Score {
        let flat: Vec<f32> = outputs.concat();
        let refs: Vec<f32> = reference.concat();
        match &self.labels {
            Labels::Classes(labels) => {
                let classes = flat.len() / labels.len().max(1);
                let argmax = |v: &[f32]| -> Vec<usize> {
                    v.chunks(classes)
                        .map(|row| {
                            row.iter()
                                .enumerate()
                                .fold(
                                    (0, f32::MIN),
                                    |best, (i, &x)| if x > best.1 { (i, x) } else { best },
                                )
                                .0
                        })
                        .collect()
                };
                let (pred, base) = (argmax(&flat), argmax(&refs));
                let n = labels.len() as f64;
                Score {
                    metric: pred.iter().zip(labels).filter(|(p, l)| p == l).count() as f64 / n,
                    agreement: pred.iter().zip(&base).filter(|(p, b)| p == b).count() as f64 / n,
                }
            }
            Labels::Similarity(gold) => {
                let d = flat.len() / (2 * gold.len()).max(1);
                let cos = |a: &[f32], b: &[f32]| {
                    a.iter().zip(b).map(|(x, y)| f64::from(x * y)).sum::<f64>()
                };
                let sims: Vec<f64> = flat.chunks(2 * d).map(|p| cos(&p[..d], &p[d..])).collect();
                let agreement = flat
                    .chunks(d)
                    .zip(refs.chunks(d))
                    .map(|(a, b)| cos(a, b))
                    .sum::<f64>()
                    / (2 * gold.len()) as f64;
                Score {
                    metric: spearman(&sims, gold),
                    agreement,
                }
            }
        }
    }
}
