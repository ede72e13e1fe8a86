//! `cargo xtask exp arm-quant`: DeiT-Tiny on the quantised device backend at f32, 8 and 4 bits
//! (`QuantizedCandleBackend`, feature `arm`): top-1 accuracy on the 1000 ImageNet sample
//! images against their labels, top-1 agreement with the f32 run, weight memory, and the
//! per-block latency of one image (measured natively on this x86_64 machine: candle's AVX2
//! kernels, not the NEON ones an ARM device runs).
//!
//! Writes `results/arm_quant.csv` (one row per precision) and `results/arm_quant_blocks.csv`
//! (latency per block and precision); the last line printed is
//! `arm-quant q8 agreement=.. q4 agreement=.. weight_mb f32=.. q8=.. q4=..`.

use std::fmt::Write as _;
use std::path::Path;

use anyhow::Result;
use collab_backends::candle::quantized::{
    QuantizedCandleBackend, WeightBits, WeightMemory, megabytes,
};
use collab_core::cost::time_median;
use collab_core::input::{ImagePreprocess, load_image_batch};
use collab_core::model::{Input, Transformer};
use collab_core::{Backend, fixtures};

use super::accuracy::bar;
use super::results_dir;

/// Arguments.
#[derive(clap::Args, Debug)]
pub(crate) struct Args {
    /// Evaluate only the first N images (default: all 1000).
    #[arg(long)]
    limit: Option<usize>,
    /// Batch size of the accuracy runs.
    #[arg(long, default_value_t = 32)]
    batch: usize,
    /// Timed repetitions per block (the median is reported), after one warm-up.
    #[arg(long, default_value_t = 7)]
    reps: usize,
}

/// What one precision gave.
struct Run {
    bits: WeightBits,
    memory: WeightMemory,
    top1: Vec<usize>,
    /// Median milliseconds of embed, each block, head, for one image.
    embed_ms: f64,
    block_ms: Vec<f64>,
    head_ms: f64,
}

pub(crate) fn run(args: Args) -> Result<()> {
    let mut images = fixtures::imagenet_sample()?;
    if let Some(n) = args.limit {
        images.truncate(n);
    }
    anyhow::ensure!(!images.is_empty(), "no sample images");
    let labels: Vec<usize> = images.iter().map(|i| i.label).collect();
    let paths: Vec<&Path> = images.iter().map(|i| i.path.as_path()).collect();
    let runs = run_all(&paths, &args)?;
    let n = labels.len();
    let hits = |p: &[usize], q: &[usize]| p.iter().zip(q).filter(|(a, b)| a == b).count();
    let f32_top1 = runs[0].top1.clone();

    println!(
        "DeiT-Tiny on {n} ImageNet sample images; latency: one image, native x86_64 (AVX2), \
         median of {} reps",
        args.reps
    );
    println!(
        "{:<5} {:>7} {:>10} {:>8} {:>10} {:>10} {:>9} {:>9} {:>10}",
        "bits",
        "top1",
        "agree_f32",
        "packed",
        "linear_MB",
        "total_MB",
        "bits/w",
        "block_ms",
        "forward_ms"
    );
    let mut csv = String::from(
        "precision,images,top1,agreement_f32,linear_weights,packed_weights,linear_mb,\
         linear_f32_mb,other_mb,total_mb,interleaved_copy_mb,bits_per_linear_weight,\
         embed_ms_x86,mean_block_ms_x86,head_ms_x86,forward_ms_x86\n",
    );
    let mut blocks_csv = String::from("precision,block,ms_x86_native\n");
    for r in &runs {
        let m = &r.memory;
        let top1 = hits(&r.top1, &labels) as f64 / n as f64;
        let agree = hits(&r.top1, &f32_top1) as f64 / n as f64;
        let mean_block = r.block_ms.iter().sum::<f64>() / r.block_ms.len().max(1) as f64;
        let forward = r.embed_ms + r.block_ms.iter().sum::<f64>() + r.head_ms;
        println!(
            "{:<5} {top1:>7.4} {agree:>10.4} {:>4}/{:<3} {:>10.2} {:>10.2} {:>9.2} {mean_block:>9.2} {forward:>10.2}",
            r.bits.label(),
            m.packed_weights,
            m.linear_weights,
            megabytes(m.linear_bytes),
            megabytes(m.total_bytes()),
            m.linear_bits_per_weight(),
        );
        writeln!(
            csv,
            "{},{n},{top1:.4},{agree:.4},{},{},{:.3},{:.3},{:.3},{:.3},{:.3},{:.3},{:.3},{mean_block:.3},{:.3},{forward:.3}",
            r.bits.label(),
            m.linear_weights,
            m.packed_weights,
            megabytes(m.linear_bytes),
            megabytes(m.linear_f32_bytes()),
            megabytes(m.other_bytes),
            megabytes(m.total_bytes()),
            megabytes(m.interleaved_bytes),
            m.linear_bits_per_weight(),
            r.embed_ms,
            r.head_ms,
        )?;
        for (i, ms) in r.block_ms.iter().enumerate() {
            writeln!(blocks_csv, "{},{i},{ms:.3}", r.bits.label())?;
        }
    }
    let dir = results_dir()?;
    std::fs::write(dir.join("arm_quant.csv"), csv)?;
    std::fs::write(dir.join("arm_quant_blocks.csv"), blocks_csv)?;
    println!("wrote results/arm_quant.csv and results/arm_quant_blocks.csv");
    println!(
        "memory: bytes held by the weights as created (MB = 10^6 bytes); on an aarch64 CPU with \
         dotprod/i8mm candle also keeps an interleaved copy of each packed weight after its \
         first use (interleaved_copy_mb, here for this CPU)"
    );
    let agree = |i: usize| hits(&runs[i].top1, &f32_top1) as f64 / n as f64;
    let mb = |i: usize| megabytes(runs[i].memory.total_bytes());
    println!(
        "arm-quant q8 agreement={:.3} q4 agreement={:.3} weight_mb f32={:.2} q8={:.2} q4={:.2}",
        agree(1),
        agree(2),
        mb(0),
        mb(1),
        mb(2)
    );
    Ok(())
}

/// Every precision on every image: each batch of images is decoded once and classified by
/// the three models in turn; then each model's latency on the first image.
fn run_all(paths: &[&Path], args: &Args) -> Result<Vec<Run>> {
    let mut models = Vec::new();
    for bits in WeightBits::ALL {
        let be = QuantizedCandleBackend::new(bits);
        let model = fixtures::deit_tiny(be.clone())?;
        // Right after loading: the model's weights only.
        let memory = be.memory();
        models.push((be, model, memory));
    }
    let pre = ImagePreprocess::imagenet(224);
    let pb = bar(paths.len(), "deit-tiny f32/q8/q4");
    let mut top1 = vec![Vec::with_capacity(paths.len()); models.len()];
    let mut first_image = None;
    for chunk in paths.chunks(args.batch.max(1)) {
        let data = load_image_batch(&pre, chunk)?;
        if first_image.is_none() {
            first_image = Some(data[..3 * 224 * 224].to_vec());
        }
        for ((be, model, _), top1) in models.iter().zip(&mut top1) {
            let x = be.from_vec(data.clone(), &[chunk.len(), 3, 224, 224])?;
            let logits = model.forward(&Input::Images(x))?;
            top1.extend(
                be.index_to_vec(&be.argmax_last(&logits)?)?
                    .into_iter()
                    .map(|c| c as usize),
            );
        }
        pb.inc(chunk.len() as u64);
    }
    pb.finish_and_clear();
    let first_image = first_image.ok_or_else(|| anyhow::anyhow!("no sample images"))?;
    let mut runs = Vec::new();
    for ((be, model, memory), top1) in models.into_iter().zip(top1) {
        let (embed_ms, block_ms, head_ms) =
            latency(&be, &model, first_image.clone(), args.reps.max(1))?;
        runs.push(Run {
            bits: be.bits(),
            memory,
            top1,
            embed_ms,
            block_ms,
            head_ms,
        });
    }
    Ok(runs)
}

/// Median ms of embed, every block and the head, for one image (`pixels`, preprocessed).
fn latency(
    be: &QuantizedCandleBackend,
    model: &Transformer<QuantizedCandleBackend>,
    pixels: Vec<f32>,
    reps: usize,
) -> Result<(f64, Vec<f64>, f64)> {
    let input = Input::Images(be.from_vec(pixels, &[1, 3, 224, 224])?);
    let ms = |seconds: f64| seconds * 1e3;
    let embed_ms = ms(time_median(reps, || model.embed(&input))?);
    let mut h = model.embed(&input)?;
    let mut block_ms = Vec::new();
    for i in 0..model.num_blocks() {
        block_ms.push(ms(time_median(reps, || {
            model.run_blocks(h.clone(), i..i + 1)
        })?));
        h = model.run_blocks(h, i..i + 1)?;
    }
    let head_ms = ms(time_median(reps, || model.head(&h))?);
    Ok((embed_ms, block_ms, head_ms))
}
