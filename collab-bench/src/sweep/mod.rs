//! The codec × split × ratio accuracy sweep of SPEC §1, the measurement the split selector
//! reads: for every split point k, every target ratio rho and every codec family, each
//! evaluation item's activation after block k is encoded, decoded and run through blocks k..L
//! and the head; the cell records the accuracy loss against the uncompressed model, the
//! agreement with it, the bytes on the wire, the encode/decode time and the mean relative
//! reconstruction error `||X - X'||_F / ||X||_F`. A cell whose codec cannot reach rho has no
//! result. Cells with the same (codec, rank) reuse one evaluation (plain codecs have one rank).
//!
//! [`run`] returns the cells, the [`AccuracyTable`] the split selector reads and the
//! [`SplitBases`] the calibrated cells were measured with (for a device and a server to
//! share); `cargo xtask exp svd-accuracy` writes them with its tables and figures.

mod data;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use collab_core::model::Hidden;
use collab_core::split::Activation;
use collab_core::{Backend, Error, Result};
use collab_policies::split::{AccuracyEntry, AccuracyTable};
use collab_policies::svd::{Basis, BasisNeed, Family, Shared, SplitBases, SplitBasis};

pub use data::{Batch, Score, SweepData};

use crate::codec_eval::relative_error;

/// What to sweep.
#[derive(Clone, Debug, PartialEq)]
pub struct SweepPlan {
    /// Split points (1-based blocks, each in `1..=L`).
    pub blocks: Vec<usize>,
    /// Target truncation ratios.
    pub rhos: Vec<f64>,
    /// Codec families.
    pub families: Vec<Family>,
}

/// One (block, codec, target ratio) of the sweep.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Cell {
    /// The split point (1-based block).
    pub block: usize,
    /// The codec family.
    pub family: Family,
    /// The target truncation ratio.
    pub rho_target: f64,
    /// What it measured; `None` when the codec cannot reach the ratio there.
    pub result: Option<Measured>,
}

/// A cell's measurements.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Measured {
    /// The largest rank used over the items.
    pub rank: usize,
    /// Mean encoded bytes per item.
    pub bytes: f64,
    /// The truncation ratio reached, in bytes.
    pub rho: f64,
    /// Metric of the uncompressed model less the metric here.
    pub loss: f64,
    /// Top-1 agreement with the uncompressed model (or mean cosine of the embeddings).
    pub agreement: f64,
    /// Mean milliseconds to encode one item.
    pub encode_ms: f64,
    /// Mean milliseconds to decode one item.
    pub decode_ms: f64,
    /// Mean over items of `||X - X'||_F / ||X||_F`.
    pub rel_error: f64,
}

/// What [`run`] returns.
#[derive(Clone, Debug)]
pub struct Sweep {
    /// The uncompressed model's score.
    pub baseline: Score,
    /// Every cell, in block, family, ratio order.
    pub cells: Vec<Cell>,
    /// The accuracy table of the cells with a result.
    pub table: AccuracyTable,
    /// The calibrated bases of the swept blocks.
    pub bases: SplitBases,
}

/// Sweeps `plan` over `data` (whose batches must not have run any block yet), calling
/// `on_cell` after each cell.
///
/// # Errors
/// [`Error::Config`] for a block outside `1..=L` or an empty plan; codec, fitting and backend
/// errors.
pub fn run<B: Backend>(
    data: &mut SweepData<B>,
    plan: &SweepPlan,
    on_cell: &mut dyn FnMut(&Cell),
) -> Result<Sweep> {
    let layers = data.model.num_blocks();
    if plan.blocks.is_empty() || plan.rhos.is_empty() || plan.families.is_empty() {
        return Err(Error::Config(
            "a sweep needs blocks, ratios and codec families".into(),
        ));
    }
    if let Some(bad) = plan.blocks.iter().find(|&&k| k == 0 || k > layers) {
        return Err(Error::Config(format!(
            "split point {bad} is not a block of {} (1..={layers})",
            data.name
        )));
    }
    let reference = tail(data, 0, None)?;
    let baseline = data.score(&reference, &reference);
    let mut cells = vec![];
    let mut bases = SplitBases::new(data.name);
    let max_block = plan.blocks.iter().copied().max().unwrap_or(0);
    for k in 1..=max_block {
        data.advance(k - 1)?;
        if !plan.blocks.contains(&k) {
            continue;
        }
        let calibrated = SplitBasis::fit(&calibration_items(data)?, &format!("block {k}"))?;
        bases.insert(k, calibrated.clone())?;
        let weight = weight_basis(data, k)?;
        let mut cache: HashMap<(Family, Vec<usize>), Measured> = HashMap::new();
        for &family in &plan.families {
            let shared = match family.basis_need() {
                BasisNeed::Weight => weight.clone().map(Shared::Basis),
                _ => calibrated.shared(family),
            };
            for &rho in &plan.rhos {
                // wsvd after the last block has no shared basis: no linear layer reads it.
                let result = match &shared {
                    None => None,
                    Some(shared) => {
                        let basis = match shared {
                            Shared::Basis(b) | Shared::CentredBasis(b, _) => Some(b.as_ref()),
                            _ => None,
                        };
                        match ranks_for(data, family, rho, basis) {
                            None => None,
                            Some(ranks) => {
                                let key = (family, ranks.clone());
                                match cache.get(&key) {
                                    Some(m) => Some(*m),
                                    None => {
                                        let m = evaluate(
                                            data,
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
                    }
                };
                let cell = Cell {
                    block: k,
                    family,
                    rho_target: rho,
                    result,
                };
                on_cell(&cell);
                cells.push(cell);
            }
        }
    }
    let table = AccuracyTable {
        model: data.name.to_string(),
        metric: data.metric_name.to_string(),
        baseline: baseline.metric,
        tokens: data.eval.first().map_or(0, |b| b.lens[0]),
        features: data.features(),
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
    Ok(Sweep {
        baseline,
        cells,
        table,
        bases,
    })
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
            be.to_vec(&data.model.head(&h)?)
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
