//! `cargo xtask exp svd-accuracy --model deit-tiny|minilm`: the accuracy profile of SPEC §1.
//!
//! For every split point k, every target ratio rho and every codec family, each evaluation
//! item's activation after block k is encoded, decoded and run through blocks k..L and the
//! head; the cell records the accuracy loss against the uncompressed model, the agreement with
//! it, the bytes on the wire, the encode/decode time and the mean relative reconstruction error
//! `||X - X'||_F / ||X||_F` of the activation. A cell whose codec cannot reach rho is
//! `n/a`. Cells with the same (codec, rank) reuse one evaluation (plain codecs have one rank).
//!
//! Writes under `results/svd-accuracy/<model>/`: `cells.csv`, `table.json` (the
//! [`AccuracyTable`] the split selector reads), `bases.bin` (the [`SplitBases`] the calibrated
//! cells were measured with, for `collab-server --bases` and `collab-device --bases`), a
//! heatmap PNG per codec, and a loss-vs-bytes frontier PNG per block. Last line: the `svd-only ... best ... best-codec=...` summary over
//! blocks 1-7.

mod data;

use std::collections::HashMap;
use std::io::Write;
use std::sync::Arc;
use std::time::Instant;

use anyhow::Result;
use collab_core::Backend;
use collab_core::model::Hidden;
use collab_core::split::Activation;
use collab_policies::split::{AccuracyEntry, AccuracyTable};
use collab_policies::svd::{Basis, BasisNeed, Family, Shared, SplitBases, SplitBasis};

use collab_backends::any::BackendTask;
use data::{Batch, SweepData};

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

struct Cell {
    block: usize,
    family: Family,
    rho_target: f64,
    result: Option<Measured>,
}

#[derive(Clone, Copy)]
struct Measured {
    rank: usize,
    bytes: f64,
    rho: f64,
    loss: f64,
    agreement: f64,
    encode_ms: f64,
    decode_ms: f64,
    /// Mean over items of `||X - X'||_F / ||X||_F`.
    rel_error: f64,
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
    if let Some(bad) = blocks.iter().find(|&&k| k == 0 || k > layers) {
        anyhow::bail!(
            "split point {bad} is not a block of {} (1..={layers})",
            data.name
        );
    }
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

    let reference = tail(&data, 0, None)?;
    let baseline = data.score(&reference, &reference);
    println!("uncompressed {}={:.4}", data.metric_name, baseline.metric);

    let mut csv = std::fs::File::create(dir.join("cells.csv"))?;
    writeln!(
        csv,
        "model,block,codec,rho_target,rank,rho,bytes,loss,agreement,encode_ms,decode_ms,rel_error"
    )?;
    let total = blocks.len() * families.len() * args.rhos.len();
    let pb = bar(total, "svd-accuracy");
    let mut cells = vec![];
    let mut bases = SplitBases::new(data.name);
    let max_block = blocks.iter().copied().max().unwrap_or(0);
    for k in 1..=max_block {
        data.advance(k - 1)?;
        if !blocks.contains(&k) {
            continue;
        }
        let calibrated = SplitBasis::fit(&calibration_items(&data)?, &format!("block {k}"))?;
        bases.insert(k, calibrated.clone())?;
        let weight = weight_basis(&data, k)?;
        let mut cache: HashMap<(Family, Vec<usize>), Measured> = HashMap::new();
        for &family in &families {
            let shared = match family.basis_need() {
                BasisNeed::Weight => weight.clone().map(Shared::Basis),
                _ => calibrated.shared(family),
            };
            for &rho in &args.rhos {
                pb.set_message(format!("{} k={k} {family} rho={rho}", data.name));
                let result = if let Some(shared) = &shared {
                    let basis = match shared {
                        Shared::Basis(b) | Shared::CentredBasis(b, _) => Some(b.as_ref()),
                        _ => None,
                    };
                    let ranks = ranks_for(&data, family, rho, basis);
                    match ranks {
                        None => None,
                        Some(ranks) => {
                            let key = (family, ranks.clone());
                            match cache.get(&key) {
                                Some(m) => Some(*m),
                                None => {
                                    let m = evaluate(
                                        &data,
                                        k,
                                        family,
                                        &ranks,
                                        shared.clone(),
                                        &reference,
                                        baseline.metric,
                                    )?;
                                    cache.insert(key, m);
                                    Some(m)
                                }
                            }
                        }
                    }
                } else {
                    None // wsvd after the last block: no linear layer reads it
                };
                match &result {
                    Some(m) => writeln!(
                        csv,
                        "{},{k},{family},{rho},{},{:.4},{:.0},{:.5},{:.5},{:.4},{:.4},{:.5}",
                        data.name,
                        m.rank,
                        m.rho,
                        m.bytes,
                        m.loss,
                        m.agreement,
                        m.encode_ms,
                        m.decode_ms,
                        m.rel_error
                    )?,
                    None => writeln!(csv, "{},{k},{family},{rho},,,,,,,,", data.name)?,
                }
                csv.flush()?;
                cells.push(Cell {
                    block: k,
                    family,
                    rho_target: rho,
                    result,
                });
                pb.inc(1);
            }
        }
    }
    pb.finish_and_clear();

    let d = data.features();
    let table = AccuracyTable {
        model: data.name.to_string(),
        metric: data.metric_name.to_string(),
        baseline: baseline.metric,
        tokens: data.eval.first().map_or(0, |b| b.lens[0]),
        features: d,
        layers,
        entries: cells
            .iter()
            .filter_map(|c| {
                c.result.map(|m| AccuracyEntry {
                    split: c.block,
                    codec: c.family.to_string(),
                    rank: m.rank,
                    bytes: m.bytes,
                    rho: m.rho,
                    loss: m.loss,
                    agreement: m.agreement,
                    encode_s: m.encode_ms / 1e3,
                    decode_s: m.decode_ms / 1e3,
                })
            })
            .collect(),
    };
    table.save(&dir.join("table.json"))?;
    // The bases the calibrated cells were measured with, for a device and a server to share.
    bases.save(&dir.join("bases.bin"))?;
    print_table(&cells, &families, &args.rhos);
    figures(&dir, data.name, &cells, &families, &blocks, &args.rhos)?;
    println!("wrote {}", dir.display());
    println!("{}", summary(&cells, &families));
    Ok(())
}

/// Runs blocks `k..L` and the head on every evaluation batch (with `replace` standing in for
/// the batches' hidden states when given). With `k = 0` before any block has run, this is the
/// uncompressed reference.
fn tail<B: Backend>(
    data: &SweepData<B>,
    k: usize,
    replace: Option<Vec<Hidden<B>>>,
) -> Result<Vec<Vec<f32>>> {
    let be = data.model.backend();
    let layers = data.model.num_blocks();
    let hidden: Vec<Hidden<B>> = match replace {
        Some(h) => h,
        None => data.eval.iter().map(|b| b.hidden.clone()).collect(),
    };
    hidden
        .into_iter()
        .map(|h| {
            let h = data.model.run_blocks(h, k..layers)?;
            Ok(be.to_vec(&data.model.head(&h)?)?)
        })
        .collect()
}

/// Every calibration item's activation at the current block (its real tokens).
fn calibration_items<B: Backend>(data: &SweepData<B>) -> Result<Vec<Activation>> {
    let be = data.model.backend();
    let d = data.features();
    let mut items = vec![];
    for b in &data.calib {
        let x = be.to_vec(&b.hidden.x)?;
        let n = b.hidden.dims3(be)?.1;
        for (i, &len) in b.lens.iter().enumerate() {
            items.push(Activation::new(
                len,
                d,
                x[i * n * d..(i * n + len) * d].to_vec(),
            )?);
        }
    }
    Ok(items)
}

/// The basis of the linear layer that reads the activation after block `k` (1-based): the
/// fused qkv of block k+1. `None` after the last block (the head reads one normalised token,
/// or pools without a weight), so `wsvd` is `n/a` there.
fn weight_basis<B: Backend>(data: &SweepData<B>, k: usize) -> Result<Option<Arc<Basis>>> {
    let be = data.model.backend();
    let d = data.features();
    let (w, origin) = match data.model.blocks().get(k) {
        Some(block) => (&block.attn.qkv.w, format!("qkv of block {}", k + 1)),
        None => return Ok(None),
    };
    let values = be.to_vec(w)?;
    let out = values.len() / d;
    Ok(Some(Arc::new(Basis::from_weight(
        &values, out, d, &origin,
    )?)))
}

/// The rank of every evaluation item for target `rho` (items differ in tokens for text), or
/// `None` if some item cannot reach it.
fn ranks_for<B: Backend>(
    data: &SweepData<B>,
    family: Family,
    rho: f64,
    basis: Option<&Basis>,
) -> Option<Vec<usize>> {
    let d = data.features();
    data.eval
        .iter()
        .flat_map(|b| b.lens.iter())
        .map(|&n| {
            let max_rank = match family {
                Family::Svd(_)
                | Family::CentredSvd(_)
                | Family::AdaptiveSvd(_)
                | Family::HybridSvd(_)
                | Family::LayerNormSvd(_) => n.min(d),
                Family::Plain(_) => d,
                _ => basis.map_or(d, Basis::rank),
            };
            family.rank_for_ratio(rho, n, d, max_rank)
        })
        .collect()
}

/// Encodes and decodes every evaluation item, runs the tail, scores.
fn evaluate<B: Backend>(
    data: &SweepData<B>,
    k: usize,
    family: Family,
    ranks: &[usize],
    shared: Shared,
    reference: &[Vec<f32>],
    baseline: f64,
) -> Result<Measured> {
    let be = data.model.backend();
    let d = data.features();
    let (mut bytes, mut f32_bytes, mut enc, mut dec) = (0usize, 0usize, 0f64, 0f64);
    let mut rel_error = 0f64;
    let mut codecs: HashMap<usize, Box<dyn collab_core::split::ActivationCodec>> = HashMap::new();
    let mut rebuilt = Vec::with_capacity(data.eval.len());
    let mut item = 0;
    for Batch { hidden, lens } in &data.eval {
        let (b, n, _) = hidden.dims3(be)?;
        let x = be.to_vec(&hidden.x)?;
        let mut out = vec![0f32; b * n * d];
        for (i, &len) in lens.iter().enumerate() {
            let rank = ranks[item];
            item += 1;
            let codec = match codecs.entry(rank) {
                std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
                std::collections::hash_map::Entry::Vacant(e) => {
                    e.insert(family.build_with(rank, shared.clone())?)
                }
            };
            let act = Activation::new(len, d, x[i * n * d..(i * n + len) * d].to_vec())?;
            let t = Instant::now();
            let wire = codec.encode(&act)?;
            enc += t.elapsed().as_secs_f64();
            let t = Instant::now();
            let back = codec.decode(&wire)?;
            dec += t.elapsed().as_secs_f64();
            bytes += wire.len();
            f32_bytes += act.f32_bytes();
            rel_error += relative_error(&act.values, &back.values);
            out[i * n * d..(i * n + len) * d].copy_from_slice(&back.values);
        }
        let mut h = hidden.clone();
        h.x = be.from_vec(out, &[b, n, d])?;
        rebuilt.push(h);
    }
    let outputs = tail(data, k, Some(rebuilt))?;
    let score = data.score(&outputs, reference);
    let items = ranks.len().max(1) as f64;
    Ok(Measured {
        rank: ranks.iter().copied().max().unwrap_or(0),
        bytes: bytes as f64 / items,
        rho: 1.0 - bytes as f64 / f32_bytes.max(1) as f64,
        loss: baseline - score.metric,
        agreement: score.agreement,
        encode_ms: enc / items * 1e3,
        decode_ms: dec / items * 1e3,
        rel_error: rel_error / items,
    })
}

/// `||x - y|| / ||x||` (0 for a zero `x` rebuilt exactly).
fn relative_error(x: &[f32], y: &[f32]) -> f64 {
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
