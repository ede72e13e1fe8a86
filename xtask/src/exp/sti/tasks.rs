//! The labelled tasks the STI experiment scores sub-models on, each split into a profiling
//! part (shard importance) and a disjoint test part (reported accuracy):
//! - MiniLM on STS-B dev: Spearman of pair cosines against the gold scores (profile: the first
//!   `profile` pairs; test: the next `test`);
//! - MiniLM on SST-2 dev: accuracy of a logistic-regression probe trained on the full model's
//!   embeddings of a train split (first 400 sentences), profiled on the next 172, tested on
//!   the last 300;
//! - DeiT-Tiny on the ImageNet sample images: top-1 (profile: the first `profile` images; test:
//!   the next `test`).

use std::path::Path;

use anyhow::{Context, Result};
use collab_backends::candle::CandleBackend;
use collab_core::Backend;
use collab_core::fixtures;
use collab_core::input::{ImagePreprocess, SentenceTokenizer, load_image_batch};
use collab_core::model::Input;
use collab_policies::shard::Fidelity;
use collab_policies::shard::exec::{Executor, ShardCache, uniform};

use super::super::stats::spearman;

type Be = CandleBackend;
type Tensor = <Be as Backend>::Tensor;

/// Scores the outputs of a split's batches, in order.
pub(crate) type Metric = Box<dyn Fn(&[Tensor]) -> collab_core::Result<f64>>;

/// One task: inputs in batches and the metric over their outputs.
pub(crate) struct Split {
    pub(crate) batches: Vec<Input<Be>>,
    pub(crate) metric: Metric,
}

/// A task with its profiling and test splits.
pub(crate) struct Task {
    pub(crate) name: &'static str,
    pub(crate) metric_name: &'static str,
    pub(crate) profile: Split,
    pub(crate) test: Split,
    /// Single requests to stream for latency (test inputs).
    pub(crate) requests: Vec<Input<Be>>,
}

fn text_batches(tok: &SentenceTokenizer, texts: &[&str], batch: usize) -> Result<Vec<Input<Be>>> {
    texts
        .chunks(batch.max(1))
        .map(|c| {
            let ids = c
                .iter()
                .map(|s| tok.encode(s))
                .collect::<collab_core::Result<Vec<_>>>()?;
            Ok(Input::Tokens(ids))
        })
        .collect()
}

fn rows(be: &Be, outs: &[Tensor]) -> collab_core::Result<Vec<Vec<f32>>> {
    let mut v = Vec::new();
    for t in outs {
        let d = *be.dims(t).last().unwrap_or(&1);
        v.extend(be.to_vec(t)?.chunks(d.max(1)).map(<[f32]>::to_vec));
    }
    Ok(v)
}

/// STS-B: embeddings of `a, b, a, b, ...`; Spearman of the pair cosines against gold.
fn stsb_split(be: &Be, tok: &SentenceTokenizer, pairs: &[fixtures::SentencePair]) -> Result<Split> {
    let texts: Vec<&str> = pairs
        .iter()
        .flat_map(|p| [p.a.as_str(), p.b.as_str()])
        .collect();
    let gold: Vec<f64> = pairs.iter().map(|p| p.score).collect();
    let be2 = be.clone();
    Ok(Split {
        batches: text_batches(tok, &texts, 32)?,
        metric: Box::new(move |outs| {
            let emb = rows(&be2, outs)?;
            let cos: Vec<f64> = emb
                .chunks(2)
                .map(|p| p[0].iter().zip(&p[1]).map(|(a, b)| f64::from(a * b)).sum())
                .collect();
            Ok(spearman(&cos, &gold))
        }),
    })
}

pub(crate) fn stsb(
    be: &Be,
    tok: &SentenceTokenizer,
    profile: usize,
    test: usize,
    requests: usize,
) -> Result<Task> {
    let pairs = fixtures::stsb_dev()?;
    let (p, rest) = pairs.split_at(profile.min(pairs.len()));
    let t = &rest[..test.min(rest.len())];
    let reqs = t
        .iter()
        .take(requests)
        .map(|p| Ok(Input::Tokens(vec![tok.encode(&p.a)?])))
        .collect::<collab_core::Result<Vec<_>>>()?;
    Ok(Task {
        name: "stsb",
        metric_name: "stsb-spearman",
        profile: stsb_split(be, tok, p)?,
        test: stsb_split(be, tok, t)?,
        requests: reqs,
    })
}

/// A logistic-regression probe on L2-normalised sentence embeddings, trained by full-batch
/// gradient descent (384 weights and a bias: no need for an autograd crate).
#[derive(Clone, Debug)]
pub(crate) struct Probe {
    w: Vec<f64>,
    b: f64,
}

impl Probe {
    pub(crate) fn train(x: &[Vec<f32>], y: &[usize], epochs: usize, lr: f64, l2: f64) -> Self {
        let d = x.first().map_or(0, Vec::len);
        let mut p = Probe {
            w: vec![0.0; d],
            b: 0.0,
        };
        let n = x.len().max(1) as f64;
        for _ in 0..epochs {
            let mut gw = vec![0.0; d];
            let mut gb = 0.0;
            for (xi, &yi) in x.iter().zip(y) {
                let err = p.prob(xi) - yi as f64;
                for (g, &v) in gw.iter_mut().zip(xi) {
                    *g += err * f64::from(v);
                }
                gb += err;
            }
            for (w, g) in p.w.iter_mut().zip(&gw) {
                *w -= lr * (g / n + l2 * *w);
            }
            p.b -= lr * gb / n;
        }
        p
    }

    fn prob(&self, x: &[f32]) -> f64 {
        let z: f64 = self.b
            + self
                .w
                .iter()
                .zip(x)
                .map(|(w, &v)| w * f64::from(v))
                .sum::<f64>();
        1.0 / (1.0 + (-z).exp())
    }

    pub(crate) fn accuracy(&self, x: &[Vec<f32>], y: &[usize]) -> f64 {
        let ok = x
            .iter()
            .zip(y)
            .filter(|(xi, yi)| usize::from(self.prob(xi) >= 0.5) == **yi)
            .count();
        ok as f64 / x.len().max(1) as f64
    }
}

fn sst2_split(
    be: &Be,
    tok: &SentenceTokenizer,
    items: &[fixtures::LabelledSentence],
    probe: &Probe,
) -> Result<Split> {
    let texts: Vec<&str> = items.iter().map(|s| s.text.as_str()).collect();
    let labels: Vec<usize> = items.iter().map(|s| s.label).collect();
    let (be2, probe) = (be.clone(), probe.clone());
    Ok(Split {
        batches: text_batches(tok, &texts, 32)?,
        metric: Box::new(move |outs| Ok(probe.accuracy(&rows(&be2, outs)?, &labels))),
    })
}

/// SST-2 with a probe trained on the full f32 sub-model's embeddings of the train split.
pub(crate) fn sst2(
    be: &Be,
    tok: &SentenceTokenizer,
    exec: &Executor<Be>,
    cache: &ShardCache,
    requests: usize,
) -> Result<(Task, f64)> {
    let all = fixtures::sst2_dev()?;
    anyhow::ensure!(
        all.len() >= 872,
        "SST-2 dev has {} sentences, expected 872",
        all.len()
    );
    let (train, rest) = all.split_at(400);
    let (profile, test) = rest.split_at(172);
    let g = exec.file().geometry();
    let full = uniform(g.layers, g.heads, Fidelity::F32);
    let texts: Vec<&str> = train.iter().map(|s| s.text.as_str()).collect();
    let mut emb = Vec::new();
    for b in text_batches(tok, &texts, 32)? {
        emb.extend(rows(be, &[exec.run_cached(&full, cache, &b)?])?);
    }
    let labels: Vec<usize> = train.iter().map(|s| s.label).collect();
    let probe = Probe::train(&emb, &labels, 400, 4.0, 1e-4);
    let train_acc = probe.accuracy(&emb, &labels);
    let reqs = test
        .iter()
        .take(requests)
        .map(|s| Ok(Input::Tokens(vec![tok.encode(&s.text)?])))
        .collect::<collab_core::Result<Vec<_>>>()?;
    Ok((
        Task {
            name: "sst2",
            metric_name: "sst2-accuracy",
            profile: sst2_split(be, tok, profile, &probe)?,
            test: sst2_split(be, tok, test, &probe)?,
            requests: reqs,
        },
        train_acc,
    ))
}

fn image_split(be: &Be, images: &[fixtures::LabelledImage]) -> Result<Split> {
    let pre = ImagePreprocess::imagenet(224);
    let batches = images
        .chunks(16)
        .map(|c| {
            let paths: Vec<&Path> = c.iter().map(|i| i.path.as_path()).collect();
            let data = load_image_batch(&pre, &paths)?;
            Ok(Input::Images(be.from_vec(data, &[c.len(), 3, 224, 224])?))
        })
        .collect::<Result<Vec<_>>>()?;
    let labels: Vec<usize> = images.iter().map(|i| i.label).collect();
    let be2 = be.clone();
    Ok(Split {
        batches,
        metric: Box::new(move |outs| {
            let mut ok = 0usize;
            let mut i = 0;
            for t in outs {
                for c in be2.index_to_vec(&be2.argmax_last(t)?)? {
                    ok += usize::from(labels.get(i) == Some(&(c as usize)));
                    i += 1;
                }
            }
            Ok(ok as f64 / labels.len().max(1) as f64)
        }),
    })
}

pub(crate) fn imagenet(be: &Be, profile: usize, test: usize, requests: usize) -> Result<Task> {
    let images = fixtures::imagenet_sample().context("ImageNet sample images")?;
    let (p, rest) = images.split_at(profile.min(images.len()));
    let t = &rest[..test.min(rest.len())];
    let pre = ImagePreprocess::imagenet(224);
    let reqs = t
        .iter()
        .take(requests)
        .map(|i| {
            let data = load_image_batch(&pre, &[i.path.as_path()])?;
            Ok(Input::Images(be.from_vec(data, &[1, 3, 224, 224])?))
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(Task {
        name: "imagenet",
        metric_name: "top1",
        profile: image_split(be, p)?,
        test: image_split(be, t)?,
        requests: reqs,
    })
}

/// The task's metric for a sub-model, computed on shard bytes in memory (the same layer code
/// the streaming executor runs).
pub(crate) fn score(
    exec: &Executor<Be>,
    cache: &ShardCache,
    sub: &[Vec<(usize, Fidelity)>],
    split: &Split,
) -> Result<f64> {
    let outs = split
        .batches
        .iter()
        .map(|b| exec.run_cached(sub, cache, b))
        .collect::<collab_core::Result<Vec<_>>>()?;
    Ok((split.metric)(&outs)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn probe_learns_a_separable_problem() {
        let x: Vec<Vec<f32>> = (0..40)
            .map(|i| vec![if i % 2 == 0 { 1.0 } else { -1.0 }, (i as f32 * 0.37).sin()])
            .collect();
        let y: Vec<usize> = (0..40).map(|i| usize::from(i % 2 == 0)).collect();
        let p = Probe::train(&x, &y, 200, 1.0, 0.0);
        assert_eq!(p.accuracy(&x, &y), 1.0);
        let flipped: Vec<usize> = y.iter().map(|v| 1 - v).collect();
        assert_eq!(p.accuracy(&x, &flipped), 0.0);
    }
}
