//! Transform coding on the calibrated basis (`tpca`; our addition to SPEC §1's codecs,
//! measured beside them in `cargo xtask exp svd-accuracy`).
//!
//! `cpca-int8` keeps the leading `r` coefficients of `X - M` in the centred PCA basis at 8 bits
//! each, with one scale per token: a coefficient of a late component, far smaller than the
//! token's first, gets few of those 8 bits' levels, and every component past `r` gets none.
//! At high rho, where only a few bits per value remain, the classic answer is transform coding
//! (a KLT followed by bit allocation, as in image and audio codecs): project on **every**
//! component and give each coefficient column its own width of 0 to 16 bits and its own
//! range, choosing the widths per request to minimise the squared error within the byte budget.
//! The basis is orthonormal, so a coefficient's squared error is the activation's.
//!
//! **Allocation.** Greedy on the error per bit: from all widths 0, repeatedly take the move
//! (one column from width `b` to any wider `b'`) with the largest error drop per bit spent,
//! counting a column's range (64 bits) in its first move, and stop at the first move that no
//! longer fits. Moves to any wider width, not only `b + 1`, let a heavy-tailed column skip a
//! 1-bit width that is worse than dropping it. The moves do not depend on the budget, so a
//! larger budget runs the same moves further: the error is non-increasing in the budget.
//!
//! **Quantiser.** A column of width `b` with range `[lo, hi]` is cut into `2^b` equal cells;
//! a value is sent as its cell and rebuilt at the cell's centre. Width 0 rebuilds 0 (the
//! calibration mean, after centring).
//!
//! **Bytes.** The budget is `cpca-int8`'s at the same rank, `25 + n (4 + r)`, so the two
//! compare at equal bytes (and at least `25 + d`, room for the widths). Layout after the
//! header (kind transform, rank = the basis rank `K`): `K` width bytes, `lo` and `hi` (`f32`)
//! of each column of non-zero width, the codes column by column, least-significant bit first,
//! then zeros up to the budget. The length tells the budget's rank, so a decoder built at any
//! rank decodes any rank's payload (a server does not know the device's rank).

use std::sync::Arc;

use collab_core::split::{Activation, ActivationCodec};
use collab_core::{Error, Result};
use faer::Mat;

use super::basis::Basis;
use super::bits::{BitReader, BitWriter};
use super::centre::PositionMean;
use super::projected::{ProjectedCodec, centred_fingerprint, project, read_centred, rebuild};
use super::quant::Precision;
use super::wire::{HEADER_LEN, Header, Kind, check_finite};

/// Widest code of one coefficient.
const MAX_BITS: u32 = 16;
/// Bits of a column's range (`lo`, `hi` as `f32`).
const RANGE_BITS: usize = 64;

/// Every coefficient in the centred PCA basis, each column at its own width (`tpca`).
#[derive(Clone, Debug)]
pub struct TransformCodec {
    /// The per-position mean the basis was fitted around.
    pub centre: Arc<PositionMean>,
    /// The PCA basis of centred calibration activations.
    pub basis: Arc<Basis>,
    /// Sets the byte budget: `cpca-int8`'s at this rank (clamped to the features).
    pub rank: usize,
}

/// One column's quantiser.
#[derive(Clone, Copy, Debug)]
struct Cells {
    lo: f32,
    step: f32,
    top: u32,
}

impl Cells {
    fn new(lo: f32, hi: f32, bits: u32) -> Self {
        Self {
            lo,
            step: (hi - lo) / (1u32 << bits) as f32,
            top: (1u32 << bits) - 1,
        }
    }

    fn code(self, v: f32) -> u32 {
        if self.step > 0.0 {
            (((v - self.lo) / self.step).floor().max(0.0) as u32).min(self.top)
        } else {
            0
        }
    }

    fn value(self, code: u32) -> f32 {
        self.lo + (code as f32 + 0.5) * self.step
    }
}

impl TransformCodec {
    /// Exact payload bytes for `tokens x features` at `rank` (the family's formula).
    pub fn len_for(rank: usize, tokens: usize, features: usize) -> usize {
        ProjectedCodec::len_for(Precision::Int8, rank.min(features), tokens)
            .max(HEADER_LEN + features)
    }

    /// The coefficients of `x` on every component, column-major (`K` columns of `n`).
    fn coefficients(&self, x: &Activation, name: &str) -> Result<Vec<Vec<f32>>> {
        let (n, k) = (x.tokens, self.basis.rank());
        let coeff = project(&self.basis, Some(&self.centre), x, k, name)?;
        let columns: Vec<Vec<f32>> = (0..k)
            .map(|j| (0..n).map(|i| coeff[(i, j)]).collect())
            .collect();
        if columns.iter().flatten().any(|v| !v.is_finite()) {
            return Err(Error::codec(name, "coefficients overflow f32"));
        }
        Ok(columns)
    }
}

/// The squared error of `column` at each width `0..=MAX_BITS` (width 0 rebuilds 0).
fn errors_by_width(column: &[f32], lo: f32, hi: f32) -> Vec<f64> {
    let mut errs = vec![column.iter().map(|&v| f64::from(v).powi(2)).sum()];
    errs.extend((1..=MAX_BITS).map(|b| {
        let cells = Cells::new(lo, hi, b);
        column
            .iter()
            .map(|&v| f64::from(v - cells.value(cells.code(v))).powi(2))
            .sum::<f64>()
    }));
    errs
}

/// The best move of one column from `width`: (error drop per bit, new width, bits), if any
/// move lowers its error.
fn best_move(errs: &[f64], width: u32, tokens: usize) -> Option<(f64, u32, usize)> {
    let fixed = if width == 0 { RANGE_BITS } else { 0 };
    ((width + 1)..=MAX_BITS)
        .filter_map(|b| {
            let gain = errs[width as usize] - errs[b as usize];
            let bits = fixed + tokens * (b - width) as usize;
            (gain > 0.0).then_some((gain / bits as f64, b, bits))
        })
        .fold(None, |best: Option<(f64, u32, usize)>, m| match best {
            Some(b) if b.0 >= m.0 => Some(b),
            _ => Some(m),
        })
}

/// Widths per column within `budget_bits` by greedy error drop per bit (module docs).
fn allocate(errors: &[Vec<f64>], tokens: usize, budget_bits: usize) -> Vec<u32> {
    let mut widths = vec![0u32; errors.len()];
    let mut moves: Vec<_> = errors.iter().map(|e| best_move(e, 0, tokens)).collect();
    let mut left = budget_bits;
    loop {
        let best = moves
            .iter()
            .enumerate()
            .filter_map(|(j, m)| m.map(|m| (j, m)))
            .fold(
                None,
                |best: Option<(usize, (f64, u32, usize))>, c| match best {
                    Some(b) if b.1.0 >= c.1.0 => Some(b),
                    _ => Some(c),
                },
            );
        let Some((j, (_, width, bits))) = best else {
            break;
        };
        if bits > left {
            break;
        }
        left -= bits;
        widths[j] = width;
        moves[j] = best_move(&errors[j], width, tokens);
    }
    widths
}

impl ActivationCodec for TransformCodec {
    fn name(&self) -> String {
        format!("tpca-r{}", self.rank)
    }

    fn encoded_len(&self, tokens: usize, features: usize) -> usize {
        Self::len_for(self.rank, tokens, features)
    }

    fn encode(&self, x: &Activation) -> Result<Vec<u8>> {
        let name = self.name();
        check_finite(&x.values, &name)?;
        self.basis.check_features(x.features, &name)?;
        let (n, d, k) = (x.tokens, x.features, self.basis.rank());
        let columns = self.coefficients(x, &name)?;
        let ranges: Vec<(f32, f32)> = columns
            .iter()
            .map(|c| {
                c.iter()
                    .fold((f32::INFINITY, f32::NEG_INFINITY), |(lo, hi), &v| {
                        (lo.min(v), hi.max(v))
                    })
            })
            .collect();
        if ranges.iter().any(|(lo, hi)| !(hi - lo).is_finite()) {
            return Err(Error::codec(&name, "coefficient range overflows f32"));
        }
        let errors: Vec<Vec<f64>> = columns
            .iter()
            .zip(&ranges)
            .map(|(c, &(lo, hi))| errors_by_width(c, lo, hi))
            .collect();
        let len = self.encoded_len(n, d);
        let widths = allocate(&errors, n, 8 * (len - HEADER_LEN - k));
        let header = Header {
            kind: Kind::Transform,
            precision: Precision::F32,
            tokens: n,
            features: d,
            rank: k,
            basis: centred_fingerprint(&self.basis, &self.centre),
        };
        let mut out = header.start(&name, len - HEADER_LEN)?;
        out.extend(widths.iter().map(|&b| b as u8));
        for (&(lo, hi), _) in ranges.iter().zip(&widths).filter(|(_, b)| **b > 0) {
            out.extend_from_slice(&lo.to_le_bytes());
            out.extend_from_slice(&hi.to_le_bytes());
        }
        let mut bits = BitWriter::new(&mut out);
        for ((column, &(lo, hi)), &b) in columns.iter().zip(&ranges).zip(&widths) {
            if b > 0 {
                let cells = Cells::new(lo, hi, b);
                column.iter().for_each(|&v| bits.put(cells.code(v), b));
            }
        }
        bits.finish();
        debug_assert!(out.len() <= len, "allocation overran the budget");
        out.resize(len, 0);
        Ok(out)
    }

    fn declared_shape(&self, bytes: &[u8]) -> Result<(usize, usize)> {
        Header::shape(bytes, &self.name(), Kind::Transform, Precision::F32)
    }

    fn decode(&self, bytes: &[u8]) -> Result<Activation> {
        let name = self.name();
        let (h, rest) = read_centred(
            bytes,
            &name,
            Kind::Transform,
            (&self.basis, &self.centre),
            Self::len_for,
            self.rank,
        )?;
        let (n, k) = (h.tokens, self.basis.rank());
        if h.rank != k {
            return Err(Error::codec(
                &name,
                format!("payload has {} components, the basis {k}", h.rank),
            ));
        }
        let (widths, rest) = rest.split_at(k);
        if let Some(&b) = widths.iter().find(|&&b| u32::from(b) > MAX_BITS) {
            return Err(Error::codec(
                &name,
                format!("a column of {b} bits (at most {MAX_BITS})"),
            ));
        }
        let active = widths.iter().filter(|&&b| b > 0).count();
        let (ranges, codes) = rest
            .split_at_checked(8 * active)
            .ok_or_else(|| Error::codec(&name, "payload shorter than its column ranges"))?;
        let mut reader = BitReader::new(codes);
        let mut coeff = Mat::<f32>::zeros(n, k);
        let sent = widths.iter().enumerate().filter(|(_, b)| **b > 0);
        for ((j, &b), range) in sent.zip(ranges.chunks_exact(8)) {
            let lo = f32::from_le_bytes([range[0], range[1], range[2], range[3]]);
            let hi = f32::from_le_bytes([range[4], range[5], range[6], range[7]]);
            if !(lo <= hi && (hi - lo).is_finite()) {
                return Err(Error::codec(
                    &name,
                    format!("column {j} has range [{lo}, {hi}]"),
                ));
            }
            let cells = Cells::new(lo, hi, u32::from(b));
            for i in 0..n {
                let code = reader
                    .take(u32::from(b))
                    .ok_or_else(|| Error::codec(&name, "payload shorter than its codes"))?;
                coeff[(i, j)] = cells.value(code);
            }
        }
        if codes[reader.bytes_used()..].iter().any(|&b| b != 0) {
            return Err(Error::codec(
                &name,
                "codes must be followed by zero padding only",
            ));
        }
        rebuild(&self.basis, Some(&self.centre), coeff.as_ref(), &name)
    }
}
