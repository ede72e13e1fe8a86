//! `cargo xtask exp calibrate-cost-model`: measures this machine's CPU (candle backend, f32)
//! on the linear, attention and elementwise operators of many LLaMA-style decoder shapes,
//! fits the calibrated roofline (SPEC §7: attainable rate a monotone spline over arithmetic
//! intensity, here per size band, see `collab_policies::operator::Calibration`) on a seeded 70%
//! of each class's shapes and reports its mean absolute percentage error on the other 30%, next
//! to SPEC's single curve per class and the plain roofline (peak = best measured FLOP/s;
//! bandwidth = the calibration's, or streaming).
//!
//! Each operator's FLOPs and bytes come from the IR (`LayerGraph::lower` of 11 decoders with
//! hidden 128..1024 and head sizes 32..128, prefill of 1..512 tokens and decode after 16..1024
//! cached tokens, 4-byte elements; layer 0 and the head, one operator per distinct shape); its
//! time is that of the backend primitive on inputs of its shapes, hot in cache, as an executor
//! runs it: `linear(x, W)`, `q x k^T` (a transposed view), `softmax_last`, `p x v`, `rms_norm`,
//! `add`, `silu(g) * u` (RoPE, embedding and argmax are not timed).
//!
//! Writes `results/calibrate-cost-model/`: `points.csv` (every operator, its split and every
//! model's prediction), `visits.csv` (every timing), `calibration.json` (all points: load it
//! with `Calibration::load` and `fit` it to price operators on this machine), `mape.csv` and
//! `curve.png`. The last line is `cost-model mape=X`: the mean over the held-out linear and
//! attention operators of the calibrated model.

mod executor;
mod report;
mod shapes;

use std::fmt::Write as _;
use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, Result};
use collab_backends::candle::CandleBackend;
use collab_core::graph::{DecoderConfig, OpClass, Stage};
use collab_policies::operator::{Calibration, CalibrationPoint};
use rand::SeedableRng;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;

use super::accuracy::bar;
use shapes::{Op, Pool, Shape, measure, operators, stream_bandwidth};

/// Arguments.
#[derive(clap::Args, Debug)]
pub(crate) struct Args {
    /// Fewer configs and stages (a CI-sized run).
    #[arg(long)]
    quick: bool,
    /// Output folder.
    #[arg(long, default_value = "results/calibrate-cost-model")]
    out: PathBuf,
    /// Seed of the held-out split and of the input values.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Fraction of each class's shapes held out from the fit.
    #[arg(long, default_value_t = 0.3)]
    held_out: f64,
    /// Visits of every shape, in a fresh random order each time.
    #[arg(long, default_value_t = 24)]
    rounds: usize,
    /// Seconds of timed calls per visit of a shape (at least 3 calls).
    #[arg(long, default_value_t = 0.002)]
    budget: f64,
    /// Refit and report from an earlier run's points.csv instead of measuring.
    #[arg(long)]
    points: Option<PathBuf>,
    /// Size bands per class of the calibrated model (1: SPEC §7's single curve per class).
    #[arg(long, default_value_t = 12)]
    size_bands: usize,
    /// Device name written into the calibration.
    #[arg(long, default_value = "cpu-candle-f32")]
    device: String,
}

/// One measured operator.
#[derive(Clone, Copy, Debug)]
struct Sample {
    shape: Shape,
    point: CalibrationPoint,
    held_out: bool,
}

/// Decoder sizes `(hidden, heads, intermediate, vocab)`: head sizes 32, 64 and 128, FFN ratios
/// 2 to 4.
const CONFIGS: [(usize, usize, usize, usize); 11] = [
    (128, 2, 352, 2048),
    (192, 3, 512, 3072),
    (256, 4, 688, 4096),
    (320, 5, 1280, 2048),
    (384, 6, 1024, 8192),
    (512, 8, 1376, 4096),
    (512, 16, 1408, 8192),
    (640, 10, 1728, 8192),
    (768, 12, 2048, 16384),
    (1024, 16, 2752, 8192),
    (1024, 8, 4096, 16384),
];
const PROMPTS: [usize; 9] = [1, 4, 8, 16, 32, 64, 128, 256, 512];
const PASTS: [usize; 4] = [16, 64, 256, 1024];

fn configs(quick: bool) -> Vec<DecoderConfig> {
    CONFIGS
        .iter()
        .enumerate()
        .filter(|(i, _)| !quick || i % 3 == 0)
        .map(|(_, &(hidden, heads, intermediate, vocab))| DecoderConfig {
            name: format!("h{hidden}-H{heads}-f{intermediate}"),
            hidden,
            layers: 1,
            heads,
            intermediate,
            vocab,
            rms_eps: 1e-5,
            rope_theta: 10_000.0,
            dtype_bytes: 4,
        })
        .collect()
}

fn stages(quick: bool) -> Vec<Stage> {
    let prompts = PROMPTS
        .iter()
        .enumerate()
        .filter(|(i, _)| !quick || i % 3 == 0)
        .map(|(_, &prompt)| Stage::Prefill { prompt });
    let pasts = PASTS
        .iter()
        .enumerate()
        .filter(|(i, _)| !quick || i % 2 == 0)
        .map(|(_, &past)| Stage::Decode { past });
    prompts.chain(pasts).collect()
}

pub(crate) fn run(args: Args) -> Result<()> {
    let start = Instant::now();
    let be = CandleBackend::cpu();
    let stream = stream_bandwidth(&be, 1 << 23)?;
    std::fs::create_dir_all(&args.out)
        .with_context(|| format!("cannot create {}", args.out.display()))?;
    let (mut samples, noise) = match &args.points {
        Some(path) => (report::read_points(path)?, None),
        None => {
            let ops = operators(&configs(args.quick), &stages(args.quick))?;
            let timed = measure_all(&be, &ops, &args)?;
            let gaps: Vec<f64> = timed
                .iter()
                .filter(|(s, _)| s.point.class != OpClass::Elementwise)
                .map(|t| t.1)
                .collect();
            let noise = gaps.iter().sum::<f64>() / gaps.len().max(1) as f64;
            (timed.into_iter().map(|t| t.0).collect(), Some(noise))
        }
    };
    if let Some(noise) = noise {
        println!(
            "measurement noise: mean |odd-rounds / even-rounds - 1| = {noise:.3} over linear and \
             attention operators (a floor for any model's error)"
        );
    }
    split(&mut samples, args.held_out, args.seed);
    let all = calibration(&args, &samples, stream, |_| true);
    all.save(&args.out.join("calibration.json"))?;
    let fit = calibration(&args, &samples, stream, |s| !s.held_out);
    let headline = report::report(&args.out, &samples, &fit, stream)?;
    let model = fit.fit()?;
    let band = 2.0 * headline;
    let exec = executor::check(&model, band, 64, 16, if args.quick { 2 } else { 5 })?;
    println!(
        "executor check ({}, prompt 64 + 16 decode steps, fastest of runs): {} linear and attention \
         operators, mape {:.3}, median predicted/measured {:.2}, {:.0}% within +-{:.0}% (twice the \
         held-out mape)",
        executor::config().name,
        exec.ops,
        exec.mape,
        exec.median_ratio,
        100.0 * exec.within_band,
        100.0 * band
    );
    println!(
        "{} shapes ({} held out), stream bandwidth {:.1} GB/s, wall {:.0} s; wrote {}",
        samples.len(),
        samples.iter().filter(|s| s.held_out).count(),
        stream / 1e9,
        start.elapsed().as_secs_f64(),
        args.out.display()
    );
    println!("cost-model mape={headline:.3}");
    Ok(())
}

/// Times every operator in `rounds` visits, each round in a fresh seeded random order, and
/// keeps per operator its fastest visit (a visit: the median of a few consecutive calls), with
/// the relative gap between the fastest odd and the fastest even round (the measurement's own
/// noise, from half the visits each). Every visit is written to `visits.csv`.
///
/// Why rounds and the fastest: this shared 2-core VM alternates between a fast state and one
/// where everything runs 1.3-2x slower, for seconds to tens of seconds at a time (seen in
/// probes of fixed kernels, single- and multi-threaded alike, with no other process running).
/// A median over consecutive calls stays in one state; visits spread over the whole run reach
/// the fast state, and the fastest visit estimates the uncontended time consistently for every
/// operator.
fn measure_all(be: &CandleBackend, ops: &[Op], args: &Args) -> Result<Vec<(Sample, f64)>> {
    let rounds = args.rounds.max(2);
    let pool = Pool::new(args.seed);
    let mut visits = vec![Vec::with_capacity(rounds); ops.len()];
    let pb = bar(ops.len() * rounds, "timing operators");
    for round in 0..rounds {
        let mut order: Vec<usize> = (0..ops.len()).collect();
        order.shuffle(&mut StdRng::seed_from_u64(
            args.seed ^ (0x5eed + round as u64),
        ));
        for i in order {
            visits[i].push(measure(
                be,
                &pool,
                ops[i].shape,
                args.seed + i as u64,
                args.budget,
            )?);
            pb.inc(1);
        }
    }
    pb.finish_and_clear();
    let mut csv = String::from("kind,a,b,c,d,visit_seconds...\n");
    for (op, v) in ops.iter().zip(&visits) {
        let (kind, d) = op.shape.columns();
        let v: Vec<String> = v.iter().map(|x| format!("{x:.4e}")).collect();
        writeln!(
            csv,
            "{kind},{},{},{},{},{}",
            d[0],
            d[1],
            d[2],
            d[3],
            v.join(",")
        )?;
    }
    let path = args.out.join("visits.csv");
    std::fs::write(&path, csv).with_context(|| format!("cannot write {}", path.display()))?;
    let fastest = |v: &mut dyn Iterator<Item = f64>| v.fold(f64::INFINITY, f64::min);
    Ok(ops
        .iter()
        .zip(&visits)
        .map(|(op, v)| {
            let odd = fastest(&mut v.iter().skip(1).step_by(2).copied());
            let even = fastest(&mut v.iter().step_by(2).copied());
            let sample = Sample {
                shape: op.shape,
                point: CalibrationPoint {
                    class: op.class,
                    flops: op.flops,
                    bytes: op.bytes,
                    seconds: odd.min(even),
                },
                held_out: false,
            };
            (sample, (odd / even - 1.0).abs())
        })
        .collect())
}

/// Marks a seeded random `fraction` of each class's samples as held out.
fn split(samples: &mut [Sample], fraction: f64, seed: u64) {
    let mut rng = StdRng::seed_from_u64(seed);
    for class in OpClass::ALL {
        let mut idx: Vec<usize> = (0..samples.len())
            .filter(|&i| samples[i].point.class == class)
            .collect();
        idx.shuffle(&mut rng);
        let k = (fraction * idx.len() as f64).round() as usize;
        for (j, &i) in idx.iter().enumerate() {
            samples[i].held_out = j < k;
        }
    }
}

/// The calibration of the samples that `keep` selects. Its bandwidth is the highest of the
/// streaming bandwidth and of what any kept operator moved per second (operators whose data
/// sit in cache move bytes faster than DRAM streams them; a lower roof would price them above
/// their own measurement).
fn calibration(
    args: &Args,
    samples: &[Sample],
    stream: f64,
    keep: impl Fn(&Sample) -> bool,
) -> Calibration {
    let points: Vec<CalibrationPoint> = samples
        .iter()
        .filter(|s| keep(s))
        .map(|s| s.point)
        .collect();
    let bandwidth = points
        .iter()
        .map(|p| p.bytes as f64 / p.seconds)
        .fold(stream, f64::max);
    Calibration {
        device: args.device.clone(),
        price_per_second: 0.0,
        bandwidth,
        size_bands: args.size_bands,
        points,
    }
}
