//! The shard blob: a fixed header, then the attention section, then the FFN section.
//!
//! Header (40 bytes, little-endian): magic `STIS`, version `u16` (1), fidelity bits `u8` (2..8
//! or 32), a zero byte, group `u32`, `d`, `hd`, `s` (`u32` each), attention section length and
//! FFN section length (`u64` each). Attention section: `3 hd` f32 biases, the `qkv` matrix
//! `[3 hd, d]`, the output-projection columns `[d, hd]`. FFN section: `s` f32 biases, `fc1`
//! `[s, d]`, `fc2` `[d, s]`. A matrix is raw f32 at full precision, else a
//! [`QuantMatrix`](super::QuantMatrix).

use std::ops::Range;

use collab_core::{Error, Result};

use super::super::layout::{AttentionPart, FfnPart, ShardWeights};
use super::super::{Fidelity, ShardGeometry};
use super::{CODEC, MAX_GROUP, QuantMatrix, QuantOptions, quantize_matrix};

const MAGIC: [u8; 4] = *b"STIS";
const VERSION: u16 = 1;

/// Bytes of a shard blob's header.
pub const HEADER_LEN: usize = 40;

/// The header of a shard blob.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ShardHeader {
    /// How the blob's matrices are stored.
    pub fidelity: Fidelity,
    /// Values per quantisation group.
    pub group: usize,
    /// `d`.
    pub hidden: usize,
    /// `hd`.
    pub head_dim: usize,
    /// `s`, FFN neurons per shard.
    pub ffn_slice: usize,
    /// Bytes of the attention section.
    pub attention_len: u64,
    /// Bytes of the FFN section.
    pub ffn_len: u64,
}

impl ShardHeader {
    fn to_bytes(self) -> Vec<u8> {
        let mut h = Vec::with_capacity(HEADER_LEN);
        h.extend(MAGIC);
        h.extend(VERSION.to_le_bytes());
        h.extend([self.fidelity.bits(), 0]);
        for v in [self.group, self.hidden, self.head_dim, self.ffn_slice] {
            h.extend((v as u32).to_le_bytes());
        }
        h.extend(self.attention_len.to_le_bytes());
        h.extend(self.ffn_len.to_le_bytes());
        h
    }

    /// Bytes of the whole blob the header announces.
    pub fn blob_len(&self) -> u64 {
        (HEADER_LEN as u64)
            .saturating_add(self.attention_len)
            .saturating_add(self.ffn_len)
    }
}

fn err(message: impl Into<String>) -> Error {
    Error::codec(CODEC, message)
}

/// The header at the start of `bytes` (the rest is not looked at).
///
/// # Errors
/// [`Error::Codec`] for fewer than [`HEADER_LEN`] bytes, a wrong magic or version, a fidelity
/// that is not stored, a nonzero reserved byte or a group that is not a multiple of 8 in
/// `8..=MAX_GROUP`.
pub fn shard_header(bytes: &[u8]) -> Result<ShardHeader> {
    let h = bytes.get(..HEADER_LEN).ok_or_else(|| {
        err(format!(
            "{} bytes is too short for a shard header",
            bytes.len()
        ))
    })?;
    if h[..4] != MAGIC {
        return Err(err(format!("bad magic {:02x?}, expected STIS", &h[..4])));
    }
    let version = u16::from_le_bytes([h[4], h[5]]);
    if version != VERSION {
        return Err(err(format!(
            "shard format version {version}, expected {VERSION}"
        )));
    }
    let fidelity =
        Fidelity::from_bits(h[6]).map_err(|_| err(format!("no {}-bit fidelity", h[6])))?;
    if h[7] != 0 {
        return Err(err("reserved header byte is not zero"));
    }
    let u32_at = |i: usize| u32::from_le_bytes([h[i], h[i + 1], h[i + 2], h[i + 3]]) as usize;
    let u64_at = |i: usize| {
        let mut b = [0u8; 8];
        b.copy_from_slice(&h[i..i + 8]);
        u64::from_le_bytes(b)
    };
    let group = u32_at(8);
    if group == 0 || !group.is_multiple_of(8) || group > MAX_GROUP {
        return Err(err(format!(
            "group {group} is not a multiple of 8 in 8..={MAX_GROUP}"
        )));
    }
    Ok(ShardHeader {
        fidelity,
        group,
        hidden: u32_at(12),
        head_dim: u32_at(16),
        ffn_slice: u32_at(20),
        attention_len: u64_at(24),
        ffn_len: u64_at(32),
    })
}

/// The fidelity a blob is stored at, from its header.
///
/// # Errors
/// As [`shard_header`].
pub fn shard_fidelity(bytes: &[u8]) -> Result<Fidelity> {
    Ok(shard_header(bytes)?.fidelity)
}

/// Values in each part of a shard: q/k/v biases, `qkv`, `o`, fc1 biases, `fc1`, `fc2`.
struct Sizes([usize; 6]);

impl Sizes {
    fn of(g: &ShardGeometry) -> Result<Self> {
        let (d, hd, s) = (g.hidden, g.head_dim, g.ffn_slice());
        let mul = |a: usize, b: usize| {
            a.checked_mul(b)
                .filter(|&n| u32::try_from(n).is_ok())
                .ok_or_else(|| err(format!("geometry d={d} hd={hd} s={s} is too large")))
        };
        let three_hd = mul(3, hd)?;
        Ok(Self([
            three_hd,
            mul(three_hd, d)?,
            mul(d, hd)?,
            s,
            mul(s, d)?,
            mul(d, s)?,
        ]))
    }
}

fn matrix_len(len: usize, fidelity: Fidelity, opts: &QuantOptions) -> u64 {
    match fidelity {
        Fidelity::F32 => 4 * len as u64,
        Fidelity::Bits(b) => QuantMatrix::byte_len(len, b, opts.group, opts.outliers(len)) as u64,
    }
}

/// Bytes of [`encode_shard`]'s blob for a shard of `geometry` at `fidelity`, without encoding.
///
/// # Errors
/// [`Error::Config`] for invalid options or a fidelity that is not stored; [`Error::Codec`]
/// for a geometry too large to encode.
pub fn encoded_len(
    geometry: &ShardGeometry,
    fidelity: Fidelity,
    opts: &QuantOptions,
) -> Result<u64> {
    opts.validate()?;
    Fidelity::from_bits(fidelity.bits())?;
    let [qb, qkv, o, fb, fc1, fc2] = Sizes::of(geometry)?.0;
    let m = |n| matrix_len(n, fidelity, opts);
    Ok(HEADER_LEN as u64 + 4 * (qb + fb) as u64 + m(qkv) + m(o) + m(fc1) + m(fc2))
}

fn put_f32s(out: &mut Vec<u8>, v: &[f32]) {
    out.extend(v.iter().flat_map(|x| x.to_le_bytes()));
}

fn put_matrix(out: &mut Vec<u8>, v: &[f32], fidelity: Fidelity, opts: &QuantOptions) -> Result<()> {
    match fidelity {
        Fidelity::F32 => put_f32s(out, v),
        Fidelity::Bits(b) => quantize_matrix(v, b, opts)?.to_bytes(out),
    }
    Ok(())
}

/// One shard at one fidelity as one blob (layout in the module doc).
///
/// # Errors
/// [`Error::Config`] for invalid options or a fidelity that is not stored; [`Error::Shape`]
/// if a part of `w` does not have the size `geometry` implies; [`Error::InvalidInput`] for
/// non-finite weights.
pub fn encode_shard(
    w: &ShardWeights,
    geometry: &ShardGeometry,
    fidelity: Fidelity,
    opts: &QuantOptions,
) -> Result<Vec<u8>> {
    opts.validate()?;
    Fidelity::from_bits(fidelity.bits())?;
    let sizes = Sizes::of(geometry)?.0;
    let (a, f) = (&w.attention, &w.ffn);
    let parts: [(&[f32], &str); 6] = [
        (&a.qkv_bias, "qkv bias"),
        (&a.qkv, "qkv"),
        (&a.o, "output projection"),
        (&f.fc1_bias, "fc1 bias"),
        (&f.fc1, "fc1"),
        (&f.fc2, "fc2"),
    ];
    for ((v, what), n) in parts.iter().zip(sizes) {
        if v.len() != n {
            return Err(Error::shape(
                "encode_shard",
                format!("{what} has {} values, expected {n}", v.len()),
            ));
        }
    }
    let mut attention = Vec::new();
    put_f32s(&mut attention, &a.qkv_bias);
    put_matrix(&mut attention, &a.qkv, fidelity, opts)?;
    put_matrix(&mut attention, &a.o, fidelity, opts)?;
    let mut ffn = Vec::new();
    put_f32s(&mut ffn, &f.fc1_bias);
    put_matrix(&mut ffn, &f.fc1, fidelity, opts)?;
    put_matrix(&mut ffn, &f.fc2, fidelity, opts)?;
    let header = ShardHeader {
        fidelity,
        group: opts.group,
        hidden: geometry.hidden,
        head_dim: geometry.head_dim,
        ffn_slice: geometry.ffn_slice(),
        attention_len: attention.len() as u64,
        ffn_len: ffn.len() as u64,
    };
    let mut blob = header.to_bytes();
    blob.reserve(attention.len() + ffn.len());
    blob.extend(attention);
    blob.extend(ffn);
    Ok(blob)
}

/// Reads the parts of one section in order.
struct Cursor<'a> {
    bytes: &'a [u8],
    section: &'static str,
    fidelity: Fidelity,
    group: usize,
}

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize, what: &str) -> Result<&'a [u8]> {
        if n > self.bytes.len() {
            return Err(err(format!(
                "{} section cut off in {what}: {n} bytes needed, {} left",
                self.section,
                self.bytes.len()
            )));
        }
        let (head, rest) = self.bytes.split_at(n);
        self.bytes = rest;
        Ok(head)
    }

    fn f32s(&mut self, n: usize, what: &str) -> Result<Vec<f32>> {
        let b = self.take(4 * n, what)?;
        Ok(b.chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect())
    }

    fn matrix(&mut self, n: usize, what: &str) -> Result<Vec<f32>> {
        match self.fidelity {
            Fidelity::F32 => self.f32s(n, what),
            Fidelity::Bits(b) => {
                let len = QuantMatrix::stored_len(self.bytes, n, b, self.group)
                    .map_err(|e| err(format!("{} section, {what}: {e}", self.section)))?;
                let bytes = self.take(len, what)?;
                Ok(QuantMatrix::from_bytes(bytes, n, b, self.group)
                    .map_err(|e| err(format!("{} section, {what}: {e}", self.section)))?
                    .dequantize())
            }
        }
    }

    fn finish(self) -> Result<()> {
        if self.bytes.is_empty() {
            Ok(())
        } else {
            Err(err(format!(
                "{} section has {} bytes left over",
                self.section,
                self.bytes.len()
            )))
        }
    }
}

/// The header of a blob checked against `geometry` and its own length, and the byte ranges
/// of its two sections.
fn checked(bytes: &[u8], g: &ShardGeometry) -> Result<(ShardHeader, Range<usize>, Range<usize>)> {
    let h = shard_header(bytes)?;
    if (h.hidden, h.head_dim, h.ffn_slice) != (g.hidden, g.head_dim, g.ffn_slice()) {
        return Err(err(format!(
            "shard of d={} hd={} s={}, the model has d={} hd={} s={}",
            h.hidden,
            h.head_dim,
            h.ffn_slice,
            g.hidden,
            g.head_dim,
            g.ffn_slice()
        )));
    }
    if h.blob_len() != bytes.len() as u64 {
        return Err(err(format!(
            "blob is {} bytes, its header announces {}",
            bytes.len(),
            h.blob_len()
        )));
    }
    let mid = HEADER_LEN + h.attention_len as usize;
    Ok((h, HEADER_LEN..mid, mid..bytes.len()))
}

fn cursor<'a>(bytes: &'a [u8], h: &ShardHeader, section: &'static str) -> Cursor<'a> {
    Cursor {
        bytes,
        section,
        fidelity: h.fidelity,
        group: h.group,
    }
}

/// The attention part of a blob, decoded without touching its FFN section.
///
/// # Errors
/// [`Error::Codec`] naming what is wrong: header (see [`shard_header`]), sizes that disagree
/// with `geometry`, a blob of another length than its header announces, a section cut off or
/// with bytes left over, a bad matrix.
pub fn decode_attention(bytes: &[u8], geometry: &ShardGeometry) -> Result<AttentionPart> {
    let (h, range, _) = checked(bytes, geometry)?;
    let [qb, qkv, o, ..] = Sizes::of(geometry)?.0;
    let mut c = cursor(&bytes[range], &h, "attention");
    let part = AttentionPart {
        qkv_bias: c.f32s(qb, "qkv bias")?,
        qkv: c.matrix(qkv, "qkv")?,
        o: c.matrix(o, "output projection")?,
    };
    c.finish()?;
    Ok(part)
}

/// The FFN part of a blob, decoded without touching its attention section.
///
/// # Errors
/// As [`decode_attention`].
pub fn decode_ffn(bytes: &[u8], geometry: &ShardGeometry) -> Result<FfnPart> {
    let (h, _, range) = checked(bytes, geometry)?;
    let [.., fb, fc1, fc2] = Sizes::of(geometry)?.0;
    let mut c = cursor(&bytes[range], &h, "ffn");
    let part = FfnPart {
        fc1_bias: c.f32s(fb, "fc1 bias")?,
        fc1: c.matrix(fc1, "fc1")?,
        fc2: c.matrix(fc2, "fc2")?,
    };
    c.finish()?;
    Ok(part)
}

/// The whole shard of a blob.
///
/// # Errors
/// As [`decode_attention`].
pub fn decode_shard(bytes: &[u8], geometry: &ShardGeometry) -> Result<ShardWeights> {
    Ok(ShardWeights {
        attention: decode_attention(bytes, geometry)?,
        ffn: decode_ffn(bytes, geometry)?,
    })
}
