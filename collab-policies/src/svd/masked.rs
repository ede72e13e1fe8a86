//! The largest coefficients of the request in the calibrated basis (`mpca`; our addition to
//! SPEC §1's codecs, measured beside them in `cargo xtask exp svd-accuracy`).
//!
//! `cpca` keeps the leading `r` coefficients of `X - M` in the centred PCA basis for every
//! token: the components the calibration set needs most on average. A request's own energy is
//! spread otherwise: a token may be loud on a late component and near zero on an early one.
//! The basis is orthonormal, so the squared error of a reconstruction from a subset of the
//! coefficients is the sum of the squares left out, and the subset of a given size with the
//! least error is the largest coefficients in magnitude. `mpca` sends those, as `f32` values
//! (no quantisation: a truncation in the calibrated basis chosen per request, as the
//! per-request SVD chooses its subspace), and says where they are in a bitmask.
//!
//! **Bytes.** The budget is `cpca`'s at the same rank plus one mode byte,
//! `1 + 25 + 4 n r`. Two kinds of candidates fit it:
//! - dense: every coefficient of the leading `r` columns (exactly `cpca`'s payload);
//! - masked over the leading `m > r` columns: an `n x m` bitmask (`ceil(n m / 8)` bytes) and
//!   the largest coefficients among those columns, as many as the rest of the budget holds.
//!
//! `m` runs over the multiples of 8 and the basis rank `K`; the encoder keeps the candidate with
//! the least squared error. A dense candidate is never worse than a masked one over no more
//! columns, and every masked `m` of a smaller budget is also tried at a larger one with more
//! values, so the error is non-increasing in the rank and never above `cpca`'s.
//!
//! **Layout** after the header (kind masked, rank = `m`): the mode byte (`0` dense, `1`
//! masked); for masked, the bitmask row-major (token by token, bit `t m + j` least-significant
//! first, unused high bits of the last byte zero); the `f32` values in the same order; zeros up
//! to the budget. The length tells the budget's rank, so a decoder built at any rank decodes
//! any rank's payload (a server does not know the device's rank).

use std::sync::Arc;

use collab_core::split::{Activation, ActivationCodec};
use collab_core::{Error, Result};
use faer::Mat;

use super::basis::Basis;
use super::centre::PositionMean;
use super::projected::{ProjectedCodec, centred_fingerprint, project, read_centred, rebuild};
use super::quant::Precision;
use super::request::row_major;
use super::wire::{HEADER_LEN, Header, Kind, check_finite};

/// Mode byte of a payload with every coefficient of the leading columns.
const DENSE: u8 = 0;
/// Mode byte of a payload with a bitmask.
const MASKED: u8 = 1;
/// Masked candidates cover a multiple of this many columns (or the whole basis).
const COLUMN_STEP: usize = 8;

/// The largest coefficients of `X - M` in the centred PCA basis, positions in a bitmask
/// (`mpca`).
#[derive(Clone, Debug)]
pub struct MaskedPcaCodec {
    /// The per-position mean the basis was fitted around.
    pub centre: Arc<PositionMean>,
    /// The PCA basis of centred calibration activations.
    pub basis: Arc<Basis>,
    /// Sets the byte budget: `cpca`'s at this rank (clamped to `1..=` the basis rank) plus one.
    pub rank: usize,
}

/// Which coefficients a payload carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Choice {
    /// All of the leading `m` columns.
    Dense(usize),
    /// The `kept` largest among the leading `m` columns.
    Masked { columns: usize, kept: usize },
}

impl MaskedPcaCodec {
    /// Exact payload bytes for `tokens` rows at `rank` (the family's formula; `rank` is clamped
    /// to the basis rank by the codec, not here).
    pub fn len_for(rank: usize, tokens: usize) -> usize {
        1 + ProjectedCodec::len_for(Precision::F32, rank, tokens)
    }

    /// The budget's rank: `rank` within `1..=K` (a rank of 0 would leave no column to send).
    fn rank(&self) -> usize {
        self.rank.min(self.basis.rank()).max(1)
    }

    /// Values a masked payload over `columns` columns holds within `len` bytes, if any.
    fn masked_capacity(len: usize, tokens: usize, columns: usize) -> Option<usize> {
        let mask = (tokens * columns).div_ceil(8);
        let values = len.checked_sub(HEADER_LEN + 1 + mask)? / 4;
        (values > 0).then_some(values.min(tokens * columns))
    }

    /// The candidate with the least squared error, from the squared coefficients `squares`
    /// (`n x K`, row-major).
    fn choose(&self, squares: &[f64], n: usize, k: usize) -> Choice {
        let r = self.rank();
        let len = Self::len_for(r, n);
        let leading = |m: usize| squares.chunks(k).flat_map(move |row| &row[..m]).copied();
        let total: f64 = squares.iter().sum();
        let mut best = (total - leading(r).sum::<f64>(), Choice::Dense(r));
        let masked = (1..)
            .map(|s| s * COLUMN_STEP)
            .take_while(|&m| m < k)
            .chain(std::iter::once(k))
            .filter(|&m| m > r);
        for columns in masked {
            let Some(kept) = Self::masked_capacity(len, n, columns) else {
                continue;
            };
            let mut sq: Vec<f64> = leading(columns).collect();
            let kept_energy: f64 = if kept < sq.len() {
                sq.select_nth_unstable_by(kept, |a, b| b.total_cmp(a));
                sq[..kept].iter().sum()
            } else {
                sq.iter().sum()
            };
            let err = total - kept_energy;
            if err < best.0 {
                best = (err, Choice::Masked { columns, kept });
            }
        }
        best.1
    }

    /// The positions (row-major in the leading `columns`) of the `kept` largest coefficients,
    /// from their squares (`n x K`, row-major).
    fn largest(squares: &[f64], k: usize, columns: usize, kept: usize) -> Vec<bool> {
        let n = squares.len() / k;
        let mut order: Vec<(f64, usize)> = (0..n * columns)
            .map(|p| (squares[p / columns * k + p % columns], p))
            .collect();
        if kept < order.len() {
            // Ties broken by position, so the choice is deterministic.
            order.select_nth_unstable_by(kept, |a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
        }
        let mut mask = vec![false; n * columns];
        order[..kept].iter().for_each(|&(_, p)| mask[p] = true);
        mask
    }

    fn header(&self, tokens: usize, features: usize, columns: usize) -> Header {
        Header {
            kind: Kind::Masked,
            precision: Precision::F32,
            tokens,
            features,
            rank: columns,
            basis: centred_fingerprint(&self.basis, &self.centre),
        }
    }
}

impl ActivationCodec for MaskedPcaCodec {
    fn name(&self) -> String {
        format!("mpca-r{}", self.rank)
    }

    fn encoded_len(&self, tokens: usize, _features: usize) -> usize {
        Self::len_for(self.rank(), tokens)
    }

    fn encode(&self, x: &Activation) -> Result<Vec<u8>> {
        let name = self.name();
        check_finite(&x.values, &name)?;
        self.basis.check_features(x.features, &name)?;
        let (n, d, k) = (x.tokens, x.features, self.basis.rank());
        let coeff = project(&self.basis, Some(&self.centre), x, k, &name)?;
        if (0..n).any(|i| (0..k).any(|j| !coeff[(i, j)].is_finite())) {
            return Err(Error::codec(&name, "coefficients overflow f32"));
        }
        let len = self.encoded_len(n, d);
        let squares: Vec<f64> = (0..n)
            .flat_map(|i| (0..k).map(move |j| (i, j)))
            .map(|(i, j)| f64::from(coeff[(i, j)]).powi(2))
            .collect();
        let mut out;
        match self.choose(&squares, n, k) {
            Choice::Dense(m) => {
                out = self.header(n, d, m).start(&name, len - HEADER_LEN)?;
                out.push(DENSE);
                let values = row_major(coeff.get(.., ..m));
                Precision::F32.write_block(&values, n, m, &mut out);
            }
            Choice::Masked { columns, kept } => {
                out = self.header(n, d, columns).start(&name, len - HEADER_LEN)?;
                out.push(MASKED);
                let mask = Self::largest(&squares, k, columns, kept);
                out.extend(mask.chunks(8).map(|bits| {
                    bits.iter()
                        .rev()
                        .fold(0u8, |b, &on| (b << 1) | u8::from(on))
                }));
                let values: Vec<f32> = (0..n * columns)
                    .filter(|&p| mask[p])
                    .map(|p| coeff[(p / columns, p % columns)])
                    .collect();
                Precision::F32.write_block(&values, values.len(), 1, &mut out);
            }
        }
        debug_assert!(out.len() <= len, "the choice overran the budget");
        out.resize(len, 0);
        Ok(out)
    }

    fn declared_shape(&self, bytes: &[u8]) -> Result<(usize, usize)> {
        Header::shape(bytes, &self.name(), Kind::Masked, Precision::F32)
    }

    fn decode(&self, bytes: &[u8]) -> Result<Activation> {
        let name = self.name();
        let (h, rest) = read_centred(
            bytes,
            &name,
            Kind::Masked,
            (&self.basis, &self.centre),
            |r, n, _| Self::len_for(r, n),
            self.rank(),
        )?;
        let (n, m) = (h.tokens, h.rank);
        if m == 0 || m > self.basis.rank() {
            return Err(Error::codec(
                &name,
                format!(
                    "payload covers {m} columns of a basis of {}",
                    self.basis.rank()
                ),
            ));
        }
        let (&mode, body) = rest
            .split_first()
            .ok_or_else(|| Error::codec(&name, "payload has no mode byte"))?;
        let (positions, body): (Vec<usize>, &[u8]) = match mode {
            DENSE => ((0..n * m).collect(), body),
            MASKED => {
                let (mask, values) = body
                    .split_at_checked((n * m).div_ceil(8))
                    .ok_or_else(|| Error::codec(&name, "payload shorter than its bitmask"))?;
                if !(n * m).is_multiple_of(8) && mask[mask.len() - 1] >> ((n * m) % 8) != 0 {
                    return Err(Error::codec(
                        &name,
                        "bitmask bits past the last coefficient must be zero",
                    ));
                }
                let positions = (0..n * m)
                    .filter(|&p| mask[p / 8] >> (p % 8) & 1 == 1)
                    .collect();
                (positions, values)
            }
            other => {
                return Err(Error::codec(
                    &name,
                    format!("mode {other} (expected {DENSE} dense or {MASKED} masked)"),
                ));
            }
        };
        let (values, padding) = body
            .split_at_checked(4 * positions.len())
            .ok_or_else(|| Error::codec(&name, "payload shorter than its values"))?;
        if padding.iter().any(|&b| b != 0) {
            return Err(Error::codec(
                &name,
                "values must be followed by zero padding only",
            ));
        }
        let mut coeff = Mat::<f32>::zeros(n, m);
        for (&p, v) in positions.iter().zip(values.chunks_exact(4)) {
            let v = f32::from_le_bytes([v[0], v[1], v[2], v[3]]);
            if !v.is_finite() {
                return Err(Error::codec(&name, format!("coefficient {p} is {v}")));
            }
            coeff[(p / m, p % m)] = v;
        }
        rebuild(&self.basis, Some(&self.centre), coeff.as_ref(), &name)
    }
}
