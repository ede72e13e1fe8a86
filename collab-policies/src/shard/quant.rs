//! Shard fidelities: per-group asymmetric quantisation with dense-and-sparse outliers.
//!
//! A weight matrix, flattened row-major, is quantised in groups of `group` consecutive values
//! (default 64, a multiple of 8; the last group may be partial). Each group stores its minimum
//! and its step as f16 and one `b`-bit code per value (`b` in 2, 3, 4, 5, 6, 8), packed
//! LSB-first into one bit stream; a value comes back as `min + code * scale`. The minimum is
//! rounded down and the step up to f16, so the grid covers the group's range and the error of
//! every value is at most half a step. Before the group ranges are taken, the `outlier_frac`
//! (default 1/256) largest-magnitude values of the matrix are taken out and stored sparse as
//! (u32 index, f32 value) pairs; dequantisation puts them back exactly.
//!
//! Why this scheme rather than candle's k-quants: those quantise rows in super-blocks of 256
//! values, and MiniLM's shard slices are 384, 128 and 32 values wide (d, the FFN slice, the
//! head size), with no 5-bit form for short rows. Per-group scales with sparse outliers are
//! the dense-and-sparse decomposition of SpQR and SqueezeLLM: the few large weights that
//! would stretch a group's range are kept exactly, which bounds every group's range by the
//! bulk of the distribution, and any row length works.
//!
//! One shard at one fidelity is one blob ([`encode_shard`]): a 40-byte header (magic `STIS`,
//! version, fidelity bits, group, `d`, `hd`, `s`, byte length of each section), then the
//! attention section (q/k/v biases, the `qkv` matrix, the output-projection columns), then
//! the FFN section (fc1 biases, fc1 rows, fc2 columns). Each section decodes on its own.
//! Biases are always f32; at [`F32`](super::Fidelity::F32) the matrices are raw little-endian f32.

use half::f16;
use serde::{Deserialize, Serialize};

use collab_core::{Error, Result};

use super::QUANT_BITS;

#[path = "quant_format.rs"]
mod format;
#[path = "quant_pack.rs"]
mod pack;

pub use format::{
    HEADER_LEN, ShardHeader, decode_attention, decode_ffn, decode_shard, encode_shard, encoded_len,
    shard_fidelity, shard_header,
};
pub use pack::{pack_codes, packed_len, unpack_codes};

/// The codec name in [`Error::Codec`] errors.
pub const CODEC: &str = "sti-shard";

/// The largest group accepted.
pub const MAX_GROUP: usize = 1 << 16;

/// How matrices are quantised.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct QuantOptions {
    /// Values per group: a multiple of 8 in `8..=`[`MAX_GROUP`].
    pub group: usize,
    /// Fraction of a matrix's values (largest magnitude first) kept exactly as sparse
    /// outliers, in `[0, 1)`.
    pub outlier_frac: f64,
}

impl Default for QuantOptions {
    fn default() -> Self {
        Self {
            group: 64,
            outlier_frac: 1.0 / 256.0,
        }
    }
}

impl QuantOptions {
    /// Checks the options.
    ///
    /// # Errors
    /// [`Error::Config`] for a group that is not a multiple of 8 in `8..=MAX_GROUP`, or an
    /// outlier fraction outside `[0, 1)`.
    pub fn validate(&self) -> Result<()> {
        if self.group == 0 || !self.group.is_multiple_of(8) || self.group > MAX_GROUP {
            return Err(Error::Config(format!(
                "quantisation group {} must be a multiple of 8 in 8..={MAX_GROUP}",
                self.group
            )));
        }
        if !(0.0..1.0).contains(&self.outlier_frac) {
            return Err(Error::Config(format!(
                "outlier fraction {} must be in [0, 1)",
                self.outlier_frac
            )));
        }
        Ok(())
    }

    /// Outliers kept in a matrix of `len` values: `floor(len outlier_frac)`.
    pub fn outliers(&self, len: usize) -> usize {
        ((len as f64 * self.outlier_frac).floor() as usize).min(len)
    }
}

/// One matrix quantised to `bits` bits per value with per-group f16 minimum and step and
/// sparse exact outliers. Built by [`quantize_matrix`] or [`QuantMatrix::from_bytes`], which
/// both guarantee consistent sizes.
#[derive(Clone, Debug, PartialEq)]
pub struct QuantMatrix {
    bits: u8,
    group: usize,
    len: usize,
    mins: Vec<f16>,
    scales: Vec<f16>,
    codes: Vec<u8>,
    outlier_idx: Vec<u32>,
    outlier_val: Vec<f32>,
}

/// The nearest f16 at or below `x`.
fn f16_down(x: f32) -> f16 {
    let h = f16::from_f32(x);
    if h.to_f32() <= x || h.is_nan() {
        return h;
    }
    let bits = h.to_bits();
    f16::from_bits(match bits {
        0x0000 | 0x8000 => 0x8001,
        b if b & 0x8000 == 0 => b - 1,
        b => b + 1,
    })
}

/// The nearest f16 at or above `x`.
fn f16_up(x: f32) -> f16 {
    let h = f16::from_f32(x);
    if h.to_f32() >= x || h.is_nan() {
        return h;
    }
    let bits = h.to_bits();
    f16::from_bits(match bits {
        0x0000 | 0x8000 => 0x0001,
        b if b & 0x8000 == 0 => b + 1,
        b => b - 1,
    })
}

/// Quantises `values` (row-major, any length up to `u32::MAX`) to `bits` bits.
///
/// # Errors
/// [`Error::Config`] for a width not in [`QUANT_BITS`] or invalid options;
/// [`Error::InvalidInput`] for a non-finite value or a group whose range does not fit f16.
pub fn quantize_matrix(values: &[f32], bits: u8, opts: &QuantOptions) -> Result<QuantMatrix> {
    opts.validate()?;
    if !QUANT_BITS.contains(&bits) {
        return Err(Error::Config(format!("no {bits}-bit quantisation")));
    }
    let len = values.len();
    if u32::try_from(len).is_err() {
        return Err(Error::InvalidInput(format!(
            "matrix of {len} values is too large"
        )));
    }
    if let Some(i) = values.iter().position(|v| !v.is_finite()) {
        return Err(Error::InvalidInput(format!("value {i} is {}", values[i])));
    }
    let k = opts.outliers(len);
    let mut outlier_idx: Vec<u32> = (0..len as u32).collect();
    if k > 0 && k < len {
        let mag = |i: u32| values[i as usize].abs();
        outlier_idx
            .select_nth_unstable_by(k - 1, |&a, &b| mag(b).total_cmp(&mag(a)).then(a.cmp(&b)));
    }
    outlier_idx.truncate(k);
    outlier_idx.sort_unstable();
    let mut is_outlier = vec![false; len];
    for &i in &outlier_idx {
        is_outlier[i as usize] = true;
    }
    let outlier_val = outlier_idx.iter().map(|&i| values[i as usize]).collect();
    let levels = f32::from((1u16 << bits) - 1);
    let groups = len.div_ceil(opts.group);
    let (mut mins, mut scales) = (Vec::with_capacity(groups), Vec::with_capacity(groups));
    let mut codes = Vec::with_capacity(len);
    for (g, (chunk, out)) in values
        .chunks(opts.group)
        .zip(is_outlier.chunks(opts.group))
        .enumerate()
    {
        let (lo, hi) = chunk
            .iter()
            .zip(out)
            .filter(|(_, o)| !**o)
            .fold((f32::INFINITY, f32::NEG_INFINITY), |(lo, hi), (&v, _)| {
                (lo.min(v), hi.max(v))
            });
        let (lo, hi) = if lo > hi { (0.0, 0.0) } else { (lo, hi) };
        let min = f16_down(lo);
        let span = hi - min.to_f32();
        let scale = if span > 0.0 {
            f16_up(span / levels)
        } else {
            f16::ZERO
        };
        if !min.is_finite() || !scale.is_finite() {
            return Err(Error::InvalidInput(format!(
                "group {g} spans [{lo}, {hi}], beyond f16 range"
            )));
        }
        let (m, s) = (min.to_f32(), scale.to_f32());
        codes.extend(chunk.iter().zip(out).map(|(&v, &o)| {
            if o || s == 0.0 {
                0
            } else {
                ((v - m) / s).round().clamp(0.0, levels) as u8
            }
        }));
        mins.push(min);
        scales.push(scale);
    }
    Ok(QuantMatrix {
        bits,
        group: opts.group,
        len,
        mins,
        scales,
        codes: pack_codes(&codes, bits),
        outlier_idx,
        outlier_val,
    })
}

/// Reads a little-endian `u32` at `at` (the caller checked the length).
fn u32_at(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

impl QuantMatrix {
    /// Values in the matrix.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the matrix has no values.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Bits per code.
    pub fn bits(&self) -> u8 {
        self.bits
    }

    /// Values per group.
    pub fn group(&self) -> usize {
        self.group
    }

    /// Per-group minimum and step, as stored.
    pub fn group_params(&self) -> impl Iterator<Item = (f32, f32)> + '_ {
        self.mins
            .iter()
            .zip(&self.scales)
            .map(|(m, s)| (m.to_f32(), s.to_f32()))
    }

    /// The exact outliers as (index, value), indices increasing.
    pub fn outliers(&self) -> impl Iterator<Item = (u32, f32)> + '_ {
        self.outlier_idx
            .iter()
            .copied()
            .zip(self.outlier_val.iter().copied())
    }

    /// The packed codes (outliers' codes are 0).
    pub fn codes(&self) -> &[u8] {
        &self.codes
    }

    /// The values: `min + code * scale` per group, then the outliers put back exactly.
    pub fn dequantize(&self) -> Vec<f32> {
        let mut out = vec![0f32; self.len];
        self.fill(&mut out);
        out
    }

    /// [`QuantMatrix::dequantize`] into `out`, which must hold exactly `len()` values.
    ///
    /// # Errors
    /// [`Error::Shape`] for another length.
    pub fn dequantize_into(&self, out: &mut [f32]) -> Result<()> {
        if out.len() != self.len {
            return Err(Error::shape(
                "dequantize_into",
                format!("{} values for a matrix of {}", out.len(), self.len),
            ));
        }
        self.fill(out);
        Ok(())
    }

    fn fill(&self, out: &mut [f32]) {
        let mins: Vec<f32> = self.mins.iter().map(|m| m.to_f32()).collect();
        let scales: Vec<f32> = self.scales.iter().map(|s| s.to_f32()).collect();
        pack::dequantize_dense(self.bits, &self.codes, self.group, &mins, &scales, out);
        for (&i, &v) in self.outlier_idx.iter().zip(&self.outlier_val) {
            out[i as usize] = v;
        }
    }

    /// Bytes of [`QuantMatrix::to_bytes`] for `len` values at `bits` with `k` outliers.
    pub fn byte_len(len: usize, bits: u8, group: usize, k: usize) -> usize {
        4 + 4 * len.div_ceil(group.max(1)) + packed_len(len, bits) + 8 * k
    }

    /// Appends the matrix: outlier count `k` (u32), the groups' minima then steps (f16), the
    /// packed codes, the outlier indices (u32) then values (f32), all little-endian.
    pub fn to_bytes(&self, out: &mut Vec<u8>) {
        out.extend((self.outlier_idx.len() as u32).to_le_bytes());
        out.extend(self.mins.iter().flat_map(|m| m.to_le_bytes()));
        out.extend(self.scales.iter().flat_map(|s| s.to_le_bytes()));
        out.extend_from_slice(&self.codes);
        out.extend(self.outlier_idx.iter().flat_map(|i| i.to_le_bytes()));
        out.extend(self.outlier_val.iter().flat_map(|v| v.to_le_bytes()));
    }

    /// Bytes at the start of `bytes` that one matrix of `len` values occupies, read from its
    /// outlier count.
    ///
    /// # Errors
    /// [`Error::Codec`] if the count is missing or larger than `len`.
    pub fn stored_len(bytes: &[u8], len: usize, bits: u8, group: usize) -> Result<usize> {
        let k = u32_at(bytes, 0)
            .ok_or_else(|| Error::codec(CODEC, "matrix cut off before its outlier count"))?;
        let k = k as usize;
        if k > len {
            return Err(Error::codec(
                CODEC,
                format!("{k} outliers in a matrix of {len} values"),
            ));
        }
        Ok(Self::byte_len(len, bits, group, k))
    }

    /// Parses a matrix of `len` values written by [`QuantMatrix::to_bytes`]; `bytes` must be
    /// exactly its length.
    ///
    /// # Errors
    /// [`Error::Codec`] for a width not in [`QUANT_BITS`], a bad group, a length that
    /// disagrees with the outlier count, or outlier indices out of range or not increasing.
    pub fn from_bytes(bytes: &[u8], len: usize, bits: u8, group: usize) -> Result<Self> {
        if !QUANT_BITS.contains(&bits) || group == 0 || !group.is_multiple_of(8) {
            return Err(Error::codec(
                CODEC,
                format!("bad width {bits} or group {group}"),
            ));
        }
        let expected = Self::stored_len(bytes, len, bits, group)?;
        if bytes.len() != expected {
            return Err(Error::codec(
                CODEC,
                format!("matrix is {} bytes, expected {expected}", bytes.len()),
            ));
        }
        let k = (bytes.len() - Self::byte_len(len, bits, group, 0)) / 8;
        let groups = len.div_ceil(group);
        let (mins, rest) = bytes[4..].split_at(2 * groups);
        let (scales, rest) = rest.split_at(2 * groups);
        let (codes, rest) = rest.split_at(packed_len(len, bits));
        let (idx, vals) = rest.split_at(4 * k);
        let half = |b: &[u8]| -> Vec<f16> {
            b.chunks_exact(2)
                .map(|c| f16::from_le_bytes([c[0], c[1]]))
                .collect()
        };
        let outlier_idx: Vec<u32> = idx
            .chunks_exact(4)
            .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        if outlier_idx.windows(2).any(|w| w[0] >= w[1])
            || outlier_idx.last().is_some_and(|&i| i as usize >= len)
        {
            return Err(Error::codec(
                CODEC,
                format!("outlier indices not increasing below {len}"),
            ));
        }
        Ok(Self {
            bits,
            group,
            len,
            mins: half(mins),
            scales: half(scales),
            codes: codes.to_vec(),
            outlier_idx,
            outlier_val: vals
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect(),
        })
    }
}

#[cfg(test)]
#[path = "quant_tests.rs"]
mod tests;
