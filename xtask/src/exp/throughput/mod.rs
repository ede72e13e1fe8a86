//! `cargo xtask exp forward-throughput`: how close the whole-model forward comes to the
//! machine's dense f32 matmul peak, measured side by side in one run, on one or several
//! backends (`--backend candle,tch`).
//!
//! 1. Matmul peak: the best GFLOP/s of square and ViT-shaped f32 matmuls on the backend.
//! 2. Whole-model forward of DeiT-Tiny (real weights) and ViT-B/16 (seeded random weights: the
//!    compute is the same, accuracy is not measured) at batch 1, 8 and 32: images/s, achieved
//!    GFLOP/s (`ModelConfig::forward_flops`) and the fraction of the peak.
//! 3. The time of one block at each batch size.
//!
//! With several backends, each is measured in turn (back to back, same shapes, same models,
//! same inputs), and the ratios of the other backends to the first (images/s, matmul peak)
//! are printed. A backend is any `collab_backends::any` name (`candle` and `tch` are short for
//! `candle-cpu` and `tch-cpu`), so on a GPU machine `--backend candle-cuda,tch-cuda --batches 64`
//! puts candle's CUDA backend beside libtorch's. Every timed call reads one value of its
//! result back to the host, so queued device work is inside the timing. `tch` needs xtask built
//! with its `tch` feature (see `cargo xtask setup-libtorch`), `candle-cuda` with `cuda`.
//!
//! Writes `results/forward-throughput.csv` (one row per backend, model and batch). With
//! `--per-op`, also where each forward's time goes per primitive (`ops.rs`). The last line
//! printed is `vit-b16 batch=32 fraction_of_matmul_peak=0.XX` for one backend; with several,
//! each other backend's images/s over the first's on each model's largest batch and on
//! DeiT-Tiny's smallest: `deit-tiny batch=32 tch/candle=X vit-b16 batch=32 tch/candle=Y
//! batch1 tch/candle=Z`.

use std::io::Write;

use anyhow::{Result, bail};
use collab_backends::any::{AnyBackend, BackendTask};
use collab_backends::profiled::Profiled;
use collab_core::cost::time_median;
use collab_core::model::weights::SeededRandom;
use collab_core::model::{Hidden, Input, ModelConfig, Transformer};
use collab_core::{Backend, fixtures};

use super::results_dir;

mod ops;

/// `--backend` values: any name of `collab_backends::any` (`candle-cpu`, `tch-cpu`,
/// `candle-cuda`, `tch-cuda:1`, `arm-q8`, ...), with `candle` and `tch` short for their CPU
/// backends. An unknown name, or one whose feature is not compiled in, is an error that says
/// how to build for libtorch.
pub(super) fn open(name: &str) -> Result<AnyBackend> {
    let full = match name {
        "candle" => "candle-cpu",
        "tch" => "tch-cpu",
        other => other,
    };
    AnyBackend::from_name(full).map_err(|e| {
        if full.starts_with("tch") {
            anyhow::anyhow!("{e}\n{NO_TCH}")
        } else {
            anyhow::anyhow!("{e}")
        }
    })
}

/// How to build xtask for the libtorch backend.
const NO_TCH: &str = "--backend tch needs xtask built with its `tch` feature: run `cargo xtask setup-libtorch`, set the LIBTORCH and LD_LIBRARY_PATH it prints, then `cargo run -p xtask --features tch -- exp forward-throughput --backend candle,tch`";

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
    /// Backends to measure, in this order (`candle`, `tch`, or any `collab_backends::any` name
    /// such as `candle-cuda`, `tch-cuda`, `arm-q8`); ratios are to the first.
    #[arg(long, value_delimiter = ',', default_values_t = vec!["candle".to_string()])]
    backend: Vec<String>,
    /// Also profile each forward per primitive (see `ops.rs`): side-by-side tables, and
    /// `results/forward-ops.{csv,md}`.
    #[arg(long)]
    per_op: bool,
    /// Rounds over the backends (A, B, A, B, ... with two backends); each row keeps its best
    /// round. The machines are noisy, and a neighbour's burst then costs one round, not the
    /// comparison. The per-primitive profile runs in the first round only.
    #[arg(long, default_value_t = 2)]
    rounds: usize,
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
        let s = time_median(repeats, || {
            be.matmul(&a, &b)?;
            be.synchronize()
        })?;
        rows.push((format!("{m}x{k}x{n}"), 2.0 * (m * k * n) as f64 / s / 1e9));
    }
    let peak = rows.iter().map(|r| r.1).fold(0.0, f64::max);
    Ok((peak, rows))
}

/// `batch` deterministic images of `size x size` pixels, values in [-1, 1).
fn images<B: Backend>(be: &B, batch: usize, size: usize) -> Result<Input<B>> {
    let n = batch * 3 * size * size;
    let x = be.from_vec(
        (0..n).map(|i| ((i % 251) as f32 / 125.0) - 1.0).collect(),
        &[batch, 3, size, size],
    )?;
    Ok(Input::Images(x))
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
        let input = images(be, b, v.image_size)?;
        let s = time_median(repeats, || {
            model.forward(&input)?;
            be.synchronize()
        })?;
        let h: Hidden<B> = model.embed(&input)?;
        let block = time_median(repeats, || {
            model.run_blocks(h.clone(), 0..1)?;
            be.synchronize()
        })?;
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

/// What one backend measured.
struct Run {
    label: String,
    name: String,
    peak: f64,
    rows: Vec<Row>,
    ops: Vec<ops::OpsRow>,
}

/// The matmul peak and every model and batch of `args` on `be`.
fn run_backend<B: Backend>(
    label: String,
    be: B,
    threads: usize,
    args: &Args,
    profile: bool,
) -> Result<Run> {
    println!("backend {} on {threads} threads", be.name());
    let (peak, mm) = matmul_peak(&be, args.repeats)?;
    for (shape, g) in &mm {
        println!("matmul {shape:<16} {g:>7.1} GFLOP/s");
    }
    println!("matmul peak {peak:.1} GFLOP/s");

    let (mut rows, mut per_op) = (vec![], vec![]);
    let profiled = Profiled::new(be.clone());
    if args.models.iter().any(|m| m == "deit-tiny") {
        let deit = fixtures::deit_tiny(be.clone())?;
        rows.extend(measure(
            "deit-tiny",
            &deit,
            &args.batches,
            args.repeats,
            peak,
        )?);
        if profile {
            let deit = fixtures::deit_tiny(profiled.clone())?;
            per_op.extend(ops::profile(
                "deit-tiny",
                &deit,
                &profiled,
                &args.batches,
                args.repeats,
            )?);
        }
    }
    if args.models.iter().any(|m| m == "vit-b16") {
        println!("vit-b16 uses seeded random weights (compute cost only)");
        let cfg = ModelConfig::preset("vit_base_patch16_224")?;
        let vitb = Transformer::new(be.clone(), cfg.clone(), &SeededRandom::new(0))?;
        rows.extend(measure(
            "vit-b16",
            &vitb,
            &args.batches,
            args.repeats,
            peak,
        )?);
        if profile {
            let vitb = Transformer::new(profiled.clone(), cfg, &SeededRandom::new(0))?;
            per_op.extend(ops::profile(
                "vit-b16",
                &vitb,
                &profiled,
                &args.batches,
                args.repeats,
            )?);
        }
    }
    Ok(Run {
        label,
        name: be.name(),
        peak,
        rows,
        ops: per_op,
    })
}

impl Run {
    /// Keeps, per row and for the matmul peak, the better of `self` and `other` (another round
    /// of the same backend).
    fn keep_best(&mut self, other: Run) {
        self.peak = self.peak.max(other.peak);
        for row in other.rows {
            match self
                .rows
                .iter_mut()
                .find(|r| r.model == row.model && r.batch == row.batch)
            {
                Some(r) if r.images_per_s >= row.images_per_s => {}
                Some(r) => *r = row,
                None => self.rows.push(row),
            }
        }
        for r in &mut self.rows {
            r.fraction = r.gflops / self.peak;
        }
        self.ops.extend(other.ops);
    }
}

/// [`run_backend`] on whichever backend an [`AnyBackend`] holds.
struct Measure<'a> {
    label: String,
    threads: usize,
    args: &'a Args,
    profile: bool,
}

impl BackendTask for Measure<'_> {
    type Output = Result<Run>;
    fn run<B: Backend>(self, backend: &B) -> Result<Run> {
        run_backend(
            self.label,
            backend.clone(),
            self.threads,
            self.args,
            self.profile,
        )
    }
}

/// The threads `backend` computes with: libtorch's intra-op pool (`OMP_NUM_THREADS` at start),
/// else rayon's (`RAYON_NUM_THREADS`, else every core).
fn threads(backend: &AnyBackend) -> usize {
    match backend {
        #[cfg(feature = "tch")]
        AnyBackend::Tch(_) => collab_backends::tch::TchBackend::num_threads(),
        // candle's rule: RAYON_NUM_THREADS when set, else every core.
        _ => std::env::var("RAYON_NUM_THREADS")
            .ok()
            .and_then(|v| v.parse().ok())
            .filter(|&n: &usize| n > 0)
            .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get())),
    }
}

pub(crate) fn run(args: Args) -> Result<()> {
    if args.backend.is_empty() {
        bail!("--backend names no backend (candle, tch, ...)");
    }
    // Every name is checked before anything is measured.
    let backends = args
        .backend
        .iter()
        .map(|name| open(name).map(|b| (name.clone(), b)))
        .collect::<Result<Vec<_>>>()?;
    let mut runs: Vec<Run> = vec![];
    for round in 0..args.rounds.max(1) {
        println!("round {}/{}", round + 1, args.rounds.max(1));
        for (i, (label, backend)) in backends.iter().enumerate() {
            let run = backend.run(Measure {
                label: label.clone(),
                threads: threads(backend),
                args: &args,
                profile: args.per_op && round == 0,
            })?;
            match runs.get_mut(i) {
                Some(best) => best.keep_best(run),
                None => runs.push(run),
            }
        }
    }

    println!(
        "reference, quoted from the foundation issue (PyTorch eager CPU, 2 threads, this kind of machine; not measured in this run):"
    );
    println!(
        "  vit-b16 batch=32 4.1 images/s fraction 0.81 | deit-tiny batch=32 45 images/s fraction 0.64 | deit-tiny batch=1 37 images/s"
    );

    let first = &runs[0];
    for other in &runs[1..] {
        println!(
            "{}/{}: matmul peak {:.2}x",
            other.label,
            first.label,
            other.peak / first.peak
        );
        for r in &other.rows {
            if let Some(base) = same_row(first, r) {
                println!(
                    "{}/{}: {:<10} batch={:<3} images/s {:.2}x",
                    other.label,
                    first.label,
                    r.model,
                    r.batch,
                    r.images_per_s / base.images_per_s
                );
            }
        }
    }

    let path = results_dir()?.join("forward-throughput.csv");
    let mut f = std::fs::File::create(&path)?;
    writeln!(
        f,
        "backend,model,batch,images_per_s,gflops,matmul_peak_gflops,fraction_of_peak,block_ms"
    )?;
    for run in &runs {
        for r in &run.rows {
            writeln!(
                f,
                "{},{},{},{:.3},{:.2},{:.2},{:.4},{:.3}",
                run.name,
                r.model,
                r.batch,
                r.images_per_s,
                r.gflops,
                run.peak,
                r.fraction,
                r.block_ms
            )?;
        }
    }
    println!("wrote {}", path.display());
    if args.per_op {
        ops::report(&runs)?;
    }
    println!("{}", summary(&runs)?);
    Ok(())
}

/// The last line. With one backend: `vit-b16 batch=32 fraction_of_matmul_peak=F` (ViT-B/16's
/// largest batch when it was measured, else the last row). With several: per other backend,
/// its images/s over the first's on each model's largest batch, then on DeiT-Tiny's smallest,
/// the device case: `deit-tiny batch=32 tch/candle=X vit-b16 batch=32 tch/candle=Y batch1
/// tch/candle=Z`.
fn summary(runs: &[Run]) -> Result<String> {
    let first = &runs[0];
    let Some(last) = first
        .rows
        .iter()
        .filter(|r| r.model == "vit-b16")
        .max_by_key(|r| r.batch)
        .or(first.rows.last())
    else {
        bail!("no model measured (see --models)");
    };
    if runs.len() == 1 {
        return Ok(format!(
            "{} batch={} fraction_of_matmul_peak={:.2}",
            last.model, last.batch, last.fraction
        ));
    }
    let largest = |model: &str| {
        first
            .rows
            .iter()
            .filter(|r| r.model == model)
            .max_by_key(|r| r.batch)
    };
    let smallest_deit = first
        .rows
        .iter()
        .filter(|r| r.model == "deit-tiny")
        .min_by_key(|r| r.batch);
    let mut parts = vec![];
    for other in &runs[1..] {
        let ratio = |base: &Row| {
            same_row(other, base).map(|r| {
                format!(
                    "{}/{}={:.2}",
                    other.label,
                    first.label,
                    r.images_per_s / base.images_per_s
                )
            })
        };
        for model in ["deit-tiny", "vit-b16"] {
            if let Some(base) = largest(model)
                && let Some(r) = ratio(base)
            {
                parts.push(format!("{model} batch={} {r}", base.batch));
            }
        }
        if let Some(base) = smallest_deit
            && let Some(r) = ratio(base)
        {
            parts.push(format!("batch{} {r}", base.batch));
        }
    }
    Ok(parts.join(" "))
}

/// The row of `run` with the model and batch of `like`.
fn same_row<'a>(run: &'a Run, like: &Row) -> Option<&'a Row> {
    run.rows
        .iter()
        .find(|r| r.model == like.model && r.batch == like.batch)
}
