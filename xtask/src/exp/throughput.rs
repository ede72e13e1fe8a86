//! `cargo xtask exp forward-throughput`: how close the whole-model forward comes to the
//! machine's dense f32 matmul peak, measured side by side in one run.
//!
//! 1. Matmul peak: the best GFLOP/s of square and ViT-shaped f32 matmuls on the backend.
//! 2. Whole-model forward of DeiT-Tiny (real weights) and ViT-B/16 (seeded random weights: the
//!    compute is the same, accuracy is not measured) at batch 1, 8 and 32: images/s, achieved
//!    GFLOP/s (`ModelConfig::forward_flops`) and the fraction of the peak.
//! 3. The time of one block at each batch size.
//!
//! Writes `results/forward-throughput.csv`; the last line printed is
//! `vit-b16 batch=32 fraction_of_matmul_peak=0.XX`.

use std::io::Write;

use anyhow::Result;
use collab_backends::candle::CandleBackend;
use collab_core::cost::time_median;
use collab_core::model::weights::SeededRandom;
use collab_core::model::{Hidden, Input, ModelConfig, Transformer};
use collab_core::{Backend, fixtures};

use super::results_dir;

/// Arguments.
#[derive(clap::Args, Debug)]
pub(crate) struct Args {
    /// Timed repetitions per measurement (median kept, after one warm-up).
    #[arg(long, default_value_t = 3)]
    repeats: usize,
    /// Batch sizes.
    #[arg(long, value_delimiter = ',', default_values_t = vec![1, 8, 32])]
    batches: Vec<usize>,
    /// Models to measure (`deit-tiny`, `vit-b16`).
    #[arg(long, value_delimiter = ',', default_values_t = vec!["deit-tiny".to_string(), "vit-b16".to_string()])]
    models: Vec<String>,
}

/// Best matmul GFLOP/s over a few shapes: square ones and the ViT-B linear layers at batch 32.
fn matmul_peak<B: Backend>(be: &B, repeats: usize) -> Result<(f64, Vec<(String, f64)>)> {
    let shapes = [
        (1024, 1024, 1024),
        (2048, 2048, 2048),
        (32 * 197, 768, 2304),
        (32 * 197, 768, 3072),
        (32 * 197, 3072, 768),
    ];
    let mut rows = vec![];
    for (m, k, n) in shapes {
        let a = be.from_vec(
            (0..m * k).map(|i| (i % 97) as f32 * 0.01).collect(),
            &[m, k],
        )?;
        let b = be.from_vec(
            (0..k * n).map(|i| (i % 89) as f32 * 0.01).collect(),
            &[k, n],
        )?;
        let s = time_median(repeats, || be.matmul(&a, &b))?;
        rows.push((format!("{m}x{k}x{n}"), 2.0 * (m * k * n) as f64 / s / 1e9));
    }
    let peak = rows.iter().map(|r| r.1).fold(0.0, f64::max);
    Ok((peak, rows))
}

struct Row {
    model: &'static str,
    batch: usize,
    images_per_s: f64,
    gflops: f64,
    fraction: f64,
    block_ms: f64,
}

fn measure<B: Backend>(
    name: &'static str,
    model: &Transformer<B>,
    batches: &[usize],
    repeats: usize,
    peak: f64,
) -> Result<Vec<Row>> {
    let be = model.backend();
    let cfg = model.config().clone();
    let ModelConfig::Vit(v) = &cfg else {
        anyhow::bail!("forward-throughput measures ViT models");
    };
    let mut rows = vec![];
    for &b in batches {
        let n = b * 3 * v.image_size * v.image_size;
        let x = be.from_vec(
            (0..n).map(|i| ((i % 251) as f32 / 125.0) - 1.0).collect(),
            &[b, 3, v.image_size, v.image_size],
        )?;
        let input = Input::Images(x);
        let s = time_median(repeats, || model.forward(&input))?;
        let h: Hidden<B> = model.embed(&input)?;
        let block = time_median(repeats, || model.run_blocks(h.clone(), 0..1))?;
        let ips = b as f64 / s;
        let gflops = cfg.forward_flops(v.num_tokens()) * ips / 1e9;
        rows.push(Row {
            model: name,
            batch: b,
            images_per_s: ips,
            gflops,
            fraction: gflops / peak,
            block_ms: block * 1e3,
        });
        let r = rows.last().expect("just pushed");
        println!(
            "{:<10} batch={:<3} images/s={:>8.2} latency_ms={:>9.1} GFLOP/s={:>6.1} fraction_of_peak={:.2} block_ms={:.1}",
            r.model,
            r.batch,
            r.images_per_s,
            s * 1e3,
            r.gflops,
            r.fraction,
            r.block_ms
        );
    }
    Ok(rows)
}

pub(crate) fn run(args: Args) -> Result<()> {
    let be = CandleBackend::cpu();
    println!(
        "backend {} on {} threads",
        be.name(),
        std::thread::available_parallelism().map_or(1, |n| n.get())
    );
    let (peak, mm) = matmul_peak(&be, args.repeats)?;
    for (shape, g) in &mm {
        println!("matmul {shape:<16} {g:>7.1} GFLOP/s");
    }
    println!("matmul peak {peak:.1} GFLOP/s");

    let mut rows = vec![];
    if args.models.iter().any(|m| m == "deit-tiny") {
        let deit = fixtures::deit_tiny(be.clone())?;
        rows.extend(measure(
            "deit-tiny",
            &deit,
            &args.batches,
            args.repeats,
            peak,
        )?);
    }
    if args.models.iter().any(|m| m == "vit-b16") {
        println!("vit-b16 uses seeded random weights (compute cost only)");
        let vitb = Transformer::new(
            be.clone(),
            ModelConfig::preset("vit_base_patch16_224")?,
            &SeededRandom::new(0),
        )?;
        rows.extend(measure(
            "vit-b16",
            &vitb,
            &args.batches,
            args.repeats,
            peak,
        )?);
    }

    println!(
        "reference, quoted from the foundation issue (PyTorch eager CPU, 2 threads, this kind of machine; not measured in this run):"
    );
    println!(
        "  vit-b16 batch=32 4.1 images/s fraction 0.81 | deit-tiny batch=32 45 images/s fraction 0.64 | deit-tiny batch=1 37 images/s"
    );

    let path = results_dir()?.join("forward-throughput.csv");
    let mut f = std::fs::File::create(&path)?;
    writeln!(
        f,
        "backend,model,batch,images_per_s,gflops,matmul_peak_gflops,fraction_of_peak,block_ms"
    )?;
    for r in &rows {
        writeln!(
            f,
            "{},{},{},{:.3},{:.2},{:.2},{:.4},{:.3}",
            be.name(),
            r.model,
            r.batch,
            r.images_per_s,
            r.gflops,
            peak,
            r.fraction,
            r.block_ms
        )?;
    }
    println!("wrote {}", path.display());
    // The summary is ViT-B/16's largest batch when it was measured, else the last row.
    let last = rows
        .iter()
        .rev()
        .find(|r| r.model == "vit-b16")
        .or(rows.last())
        .ok_or_else(|| anyhow::anyhow!("no model measured (see --models)"))?;
    println!(
        "{} batch={} fraction_of_matmul_peak={:.2}",
        last.model, last.batch, last.fraction
    );
    Ok(())
}
