//! `cargo xtask exp accuracy --model deit-tiny|minilm`: the real checkpoints on their fixture
//! data, to compare with the independent reference (DeiT-Tiny top-1 79.6% / top-5 94.9% on the
//! 1000 sample images; MiniLM Spearman 0.867 on STS-B dev).

use std::path::Path;

use anyhow::{Context, Result};
use clap::ValueEnum;
use collab_backends::candle::CandleBackend;
use collab_core::input::{ImagePreprocess, load_image_batch};
use collab_core::model::Input;
use collab_core::{Backend, fixtures};
use indicatif::{ProgressBar, ProgressStyle};

use super::stats::spearman;

/// Which checkpoint to evaluate.
#[derive(Clone, Copy, Debug, ValueEnum)]
pub(crate) enum Model {
    /// DeiT-Tiny/16 on the 1000 ImageNet sample images.
    DeitTiny,
    /// all-MiniLM-L6-v2 on STS-B dev.
    Minilm,
}

/// Arguments.
#[derive(clap::Args, Debug)]
pub(crate) struct Args {
    /// The model.
    #[arg(long, value_enum)]
    model: Model,
    /// Evaluate only the first N items (default: all).
    #[arg(long)]
    limit: Option<usize>,
    /// Batch size.
    #[arg(long, default_value_t = 32)]
    batch: usize,
}

pub(crate) fn run(args: Args) -> Result<()> {
    match args.model {
        Model::DeitTiny => deit(&args),
        Model::Minilm => minilm(&args),
    }
}

/// A progress bar for `n` items of `what`.
pub(super) fn bar(n: usize, what: &str) -> ProgressBar {
    let pb = ProgressBar::new(n as u64);
    pb.set_style(
        ProgressStyle::with_template("{msg} [{bar:40}] {pos}/{len} {elapsed_precise} eta {eta}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    pb.set_message(what.to_string());
    pb
}

fn deit(args: &Args) -> Result<()> {
    let be = CandleBackend::cpu();
    let model = fixtures::deit_tiny(be.clone())?;
    let mut images = fixtures::imagenet_sample()?;
    if let Some(n) = args.limit {
        images.truncate(n);
    }
    let pre = ImagePreprocess::imagenet(224);
    let (mut top1, mut top5) = (0usize, 0usize);
    let pb = bar(images.len(), "deit-tiny");
    for chunk in images.chunks(args.batch.max(1)) {
        let paths: Vec<&Path> = chunk.iter().map(|i| i.path.as_path()).collect();
        let data = load_image_batch(&pre, &paths)?;
        let x = be.from_vec(data, &[chunk.len(), 3, 224, 224])?;
        let logits = model.forward(&Input::Images(x))?;
        let order = be.index_to_vec(&be.argsort_last(&logits, true)?)?;
        for (i, img) in chunk.iter().enumerate() {
            let ranked = &order[i * 1000..i * 1000 + 5];
            top1 += usize::from(ranked[0] as usize == img.label);
            top5 += usize::from(ranked.iter().any(|&c| c as usize == img.label));
        }
        pb.inc(chunk.len() as u64);
    }
    pb.finish_and_clear();
    let n = images.len();
    println!("reference (independent numpy, fixtures README): top1=0.7960 top5=0.9490 on n=1000");
    println!(
        "deit-tiny n={n} top1={:.4} top5={:.4}",
        top1 as f64 / n as f64,
        top5 as f64 / n as f64
    );
    Ok(())
}

fn minilm(args: &Args) -> Result<()> {
    let be = CandleBackend::cpu();
    let (model, tok) =
        fixtures::minilm(be.clone()).context("run `cargo xtask fetch-models` first")?;
    let mut pairs = fixtures::stsb_dev()?;
    if let Some(n) = args.limit {
        pairs.truncate(n);
    }
    let sentences: Vec<&str> = pairs
        .iter()
        .flat_map(|p| [p.a.as_str(), p.b.as_str()])
        .collect();
    let pb = bar(sentences.len(), "minilm");
    let mut emb: Vec<Vec<f32>> = Vec::with_capacity(sentences.len());
    for chunk in sentences.chunks(args.batch.max(1)) {
        let ids = chunk
            .iter()
            .map(|s| tok.encode(s))
            .collect::<collab_core::Result<Vec<_>>>()?;
        let out = be.to_vec(&model.forward(&Input::Tokens(ids))?)?;
        emb.extend(out.chunks(384).map(<[f32]>::to_vec));
        pb.inc(chunk.len() as u64);
    }
    pb.finish_and_clear();
    let cos: Vec<f64> = emb
        .chunks(2)
        .map(|p| p[0].iter().zip(&p[1]).map(|(a, b)| f64::from(a * b)).sum())
        .collect();
    let gold: Vec<f64> = pairs.iter().map(|p| p.score).collect();
    println!("reference (independent numpy, fixtures README): spearman=0.867 on n=1500");
    println!(
        "minilm stsb n={} spearman={:.4}",
        pairs.len(),
        spearman(&cos, &gold)
    );
    Ok(())
}
