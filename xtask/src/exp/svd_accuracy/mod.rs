//! `cargo xtask exp svd-accuracy --model deit-tiny|minilm`: the accuracy profile of SPEC §1,
//! measured by `collab_bench::sweep` (every split point, target ratio and codec family; see
//! there for what a cell measures). A cell whose codec cannot reach rho is `n/a`.
//!
//! Writes under `results/svd-accuracy/<model>/`: `cells.csv`, `table.json` (the
//! `AccuracyTable` the split selector reads), `bases.bin` (the `SplitBases` the calibrated
//! cells were measured with, for `collab-server --bases` and `collab-device --bases`), a
//! heatmap PNG per codec, and a loss-vs-bytes frontier PNG per block. Last line: the
//! `svd-only ... best ... best-codec=...` summary over blocks 1-7.

use std::io::Write;

use anyhow::Result;
use collab_bench::sweep::{Cell, SweepData, SweepPlan};
use collab_core::Backend;
use collab_policies::svd::Family;

use collab_backends::any::BackendTask;

use super::accuracy::{Model, bar};
use super::plot::{Series, heatmap, line_chart};

/// Arguments.
#[derive(clap::Args, Debug)]
pub(crate) struct Args {
    /// The backend the model runs on (any collab-backends name: `candle-cpu`, `tch-cpu`,
    /// `candle-cuda`, `tch-cuda:1`, ...); the codecs always run on the CPU. The default is
    /// libtorch's CPU backend when xtask is built with `--features tch` (2.7-3x faster on
    /// DeiT-Tiny here, and within 1.5e-5 of the f64 reference backend, like candle; see
    /// collab-backends/README.md), otherwise candle's.
    #[arg(long, default_value = DEFAULT_BACKEND)]
    backend: String,
    /// The model.
    #[arg(long, value_enum, default_value = "deit-tiny")]
    model: Model,
    /// DeiT: sample images used (every tenth calibrates, the rest are evaluated).
    #[arg(long, default_value_t = 1000)]
    images: usize,
    /// MiniLM: STS-B pairs used for calibration (spread evenly over the set).
    #[arg(long, default_value_t = 100)]
    calibration_pairs: usize,
    /// MiniLM: STS-B pairs evaluated (the first of those that do not calibrate).
    #[arg(long, default_value_t = 1400)]
    pairs: usize,
    /// Split points (1-based blocks), comma-separated; default all.
    #[arg(long, value_delimiter = ',')]
    blocks: Vec<usize>,
    /// Target truncation ratios.
    #[arg(long, value_delimiter = ',', default_values_t = [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9])]
    rhos: Vec<f64>,
    /// Codec families (default: f16, bf16, int8, svd, svd-f16, svd-int8, pca, pca-f16,
    /// pca-int8, wsvd, and around a calibrated per-position mean: csvd, csvd-int8 (per-request
    /// SVD), cpca, cpca-int8 (PCA of centred activations), asvd, asvd-int8 (per request the
    /// better of csvd and cpca), hsvd, hsvd-int8 (also a cpca projection followed by the SVD
    /// of its residual), lsvd, lsvd-int8 (hsvd by each token's error relative to its spread),
    /// mpca (per request the largest centred PCA coefficients in f32 and a bitmask of where
    /// they are, at cpca's bytes), tpca (every centred PCA coefficient, each column at its own
    /// width, at cpca-int8's bytes)).
    #[arg(long, value_delimiter = ',')]
    codecs: Vec<String>,
    /// Results go to `results/svd-accuracy/<model>[-<tag>]/`.
    #[arg(long)]
    tag: Option<String>,
    /// Batch size of the tail runs.
    #[arg(long, default_value_t = 50)]
    batch: usize,
}

/// The backend `--backend` names when it is not given.
#[cfg(not(feature = "tch"))]
const DEFAULT_BACKEND: &str = "candle-cpu";
/// The backend `--backend` names when it is not given.
#[cfg(feature = "tch")]
const DEFAULT_BACKEND: &str = "tch-cpu";

pub(crate) fn run(args: Args) -> Result<()> {
    super::throughput::open(&args.backend)?.run(Sweep { args: &args })
}

/// [`sweep`] on whichever backend `--backend` names.
struct Sweep<'a> {
    args: &'a Args,
}

impl BackendTask for Sweep<'_> {
    type Output = Result<()>;
    fn run<B: Backend>(self, backend: &B) -> Result<()> {
        sweep(self.args, backend.clone())
    }
}

fn sweep<B: Backend>(args: &Args, be: B) -> Result<()> {
    let mut data = match args.model {
        Model::DeitTiny => SweepData::deit(be, args.images, args.batch)?,
        Model::Minilm => SweepData::minilm(be, args.calibration_pairs, args.pairs, args.batch)?,
    };
    let families: Vec<Family> = if args.codecs.is_empty() {
        Family::SWEEP.to_vec()
    } else {
        args.codecs
            .iter()
            .map(|c| c.parse())
            .collect::<collab_core::Result<_>>()?
    };
    let layers = data.model.num_blocks();
    let blocks: Vec<usize> = if args.blocks.is_empty() {
        (1..=layers).collect()
    } else {
        args.blocks.clone()
    };
    let folder = match &args.tag {
        Some(tag) => format!("{}-{tag}", data.name),
        None => data.name.to_string(),
    };
    let dir = super::results_dir()?.join("svd-accuracy").join(folder);
    std::fs::create_dir_all(&dir)?;
    let items: usize = data.eval.iter().map(|b| b.lens.len()).sum();
    let calib_items: usize = data.calib.iter().map(|b| b.lens.len()).sum();
    println!(
        "{}: {items} evaluation items, {calib_items} calibration items (disjoint), blocks {blocks:?}, rhos {:?}, backend {}",
        data.name,
        args.rhos,
        data.model.backend().name()
    );
    let name = data.name;
    let mut csv = std::fs::File::create(dir.join("cells.csv"))?;
    writeln!(
        csv,
        "model,block,codec,rho_target,rank,rho,bytes,loss,agreement,encode_ms,decode_ms,rel_error"
    )?;
    let plan = SweepPlan {
        blocks: blocks.clone(),
        rhos: args.rhos.clone(),
        families: families.clone(),
    };
    let pb = bar(
        blocks.len() * families.len() * args.rhos.len(),
        "svd-accuracy",
    );
    let mut written: std::io::Result<()> = Ok(());
    let result = collab_bench::sweep::run(&mut data, &plan, &mut |c: &Cell| {
        let (k, family, rho) = (c.block, c.family, c.rho_target);
        pb.set_message(format!("{name} k={k} {family} rho={rho}"));
        let line = match &c.result {
            Some(m) => writeln!(
                csv,
                "{name},{k},{family},{rho},{},{:.4},{:.0},{:.5},{:.5},{:.4},{:.4},{:.5}",
                m.rank, m.rho, m.bytes, m.loss, m.agreement, m.encode_ms, m.decode_ms, m.rel_error
            ),
            None => writeln!(csv, "{name},{k},{family},{rho},,,,,,,,"),
        }
        .and_then(|()| csv.flush());
        if written.is_ok() {
            written = line;
        }
        pb.inc(1);
    });
    pb.finish_and_clear();
    let sweep = result?;
    written?;
    println!(
        "uncompressed {}={:.4}",
        data.metric_name, sweep.baseline.metric
    );
    sweep.table.save(&dir.join("table.json"))?;
    // The bases the calibrated cells were measured with, for a device and a server to share.
    sweep.bases.save(&dir.join("bases.bin"))?;
    print_table(&sweep.cells, &families, &args.rhos);
    figures(&dir, name, &sweep.cells, &families, &blocks, &args.rhos)?;
    println!("wrote {}", dir.display());
    println!("{}", summary(&sweep.cells, &families));
    Ok(())
}

fn print_table(cells: &[Cell], families: &[Family], rhos: &[f64]) {
    println!("accuracy loss (rows: split block; columns: rho), n/a = codec cannot reach rho");
    for family in families {
        println!("{family}:");
        print!("  k  ");
        rhos.iter().for_each(|r| print!(" {r:>7}"));
        println!();
        let mut blocks: Vec<usize> = cells.iter().map(|c| c.block).collect();
        blocks.dedup();
        for k in blocks {
            print!("  {k:>2} ");
            for c in cells.iter().filter(|c| c.block == k && c.family == *family) {
                match c.result {
                    Some(m) => print!(" {:>7.4}", m.loss),
                    None => print!(" {:>7}", "n/a"),
                }
            }
            println!();
        }
    }
}

fn figures(
    dir: &std::path::Path,
    name: &str,
    cells: &[Cell],
    families: &[Family],
    blocks: &[usize],
    rhos: &[f64],
) -> Result<()> {
    let cols: Vec<String> = rhos.iter().map(|r| format!("{r}")).collect();
    let rows: Vec<String> = blocks.iter().map(|k| format!("block {k}")).collect();
    let hi = cells
        .iter()
        .filter_map(|c| c.result.map(|m| m.loss))
        .fold(0.01f64, f64::max)
        .min(0.2);
    for family in families {
        let values: Vec<Vec<Option<f64>>> = blocks
            .iter()
            .map(|&k| {
                rhos.iter()
                    .map(|&r| {
                        cells
                            .iter()
                            .find(|c| c.block == k && c.family == *family && c.rho_target == r)
                            .and_then(|c| c.result.map(|m| m.loss))
                    })
                    .collect()
            })
            .collect();
        heatmap(
            &dir.join(format!("heatmap-{family}.png")),
            &format!("{name} {family}: accuracy loss by split block and rho"),
            (&cols, &rows),
            &values,
            (0.0, hi),
        )?;
    }
    for &k in blocks {
        let series: Vec<Series> = families
            .iter()
            .map(|family| Series {
                label: family.to_string(),
                points: cells
                    .iter()
                    .filter(|c| c.block == k && c.family == *family)
                    .filter_map(|c| c.result.map(|m| (m.bytes / 1024.0, m.loss)))
                    .collect(),
            })
            .collect();
        line_chart(
            &dir.join(format!("frontier-block-{k}.png")),
            &format!("{name}: accuracy loss vs bytes, split after block {k}"),
            ("KiB per request on the wire", "accuracy loss"),
            &series,
        )?;
    }
    Ok(())
}

/// `svd-only rho=0.7 max_loss=.. best rho=0.7 max_loss=.. best rho=0.9 max_loss=.. best-codec=..`
/// with maxima over blocks 1-7 (those present) and minima over codecs.
fn summary(cells: &[Cell], families: &[Family]) -> String {
    let max_loss = |family: Family, rho: f64| -> Option<f64> {
        let picked: Vec<&Cell> = cells
            .iter()
            .filter(|c| {
                c.family == family
                    && (c.rho_target - rho).abs() < 1e-9
                    && (1..=7).contains(&c.block)
            })
            .collect();
        if picked.is_empty() {
            return None;
        }
        picked
            .iter()
            .map(|c| c.result.map(|m| m.loss))
            .try_fold(f64::MIN, |a, l| l.map(|l| a.max(l)))
    };
    let best = |pred: &dyn Fn(Family) -> bool, rho: f64| -> Option<(f64, Family)> {
        families
            .iter()
            .filter(|f| pred(**f))
            .filter_map(|&f| max_loss(f, rho).map(|l| (l, f)))
            .min_by(|a, b| a.0.total_cmp(&b.0))
    };
    let fmt = |v: Option<(f64, Family)>| v.map_or("n/a".to_string(), |(l, _)| format!("{l:.3}"));
    let svd = best(&|f: Family| f.is_pure_svd(), 0.7);
    let b7 = best(&|_| true, 0.7);
    let b9 = best(&|_| true, 0.9);
    format!(
        "svd-only rho=0.7 max_loss={} best rho=0.7 max_loss={} best rho=0.9 max_loss={} best-codec={} (svd-only codec {}, best at 0.7 {})",
        fmt(svd),
        fmt(b7),
        fmt(b9),
        b9.map_or("n/a".to_string(), |(_, f)| f.to_string()),
        svd.map_or("n/a".to_string(), |(_, f)| f.to_string()),
        b7.map_or("n/a".to_string(), |(_, f)| f.to_string()),
    )
}
