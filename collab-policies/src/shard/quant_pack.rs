//! Bit packing of quantisation codes and the one-pass dequantisation kernel.
//!
//! Codes of `b` bits are packed LSB-first into one contiguous bit stream: code `i` occupies
//! bits `i b..(i + 1) b` of the stream, bit `j` of the stream being bit `j % 8` of byte
//! `j / 8`. Eight codes therefore fill exactly `b` bytes, which is what the kernel exploits: it
//! loads `b` bytes into a `u64` and shifts eight codes out of it, with `b` a const generic so
//! that every width compiles to straight-line code. Groups are multiples of 8 values long, so
//! every group starts on a byte boundary. Measured on this project's 2-core machine (1M weights,
//! `quant::tests::dequantization_speed`): 0.4-0.6 ns per weight in release builds, 0.6-1.3 in
//! the workspace's dev profile, for every width.

use collab_core::{Error, Result};

use super::CODEC;

/// Bytes of `n` codes of `bits` bits packed: `ceil(n bits / 8)`.
pub fn packed_len(n: usize, bits: u8) -> usize {
    (n * usize::from(bits)).div_ceil(8)
}

/// Packs `codes` (each below `2^bits`; higher bits are dropped) LSB-first, `bits` in 1..=8.
pub fn pack_codes(codes: &[u8], bits: u8) -> Vec<u8> {
    let b = u32::from(bits.clamp(1, 8));
    let mask = (1u64 << b) - 1;
    let mut out = Vec::with_capacity(packed_len(codes.len(), b as u8));
    let (mut acc, mut filled) = (0u64, 0u32);
    for &c in codes {
        acc |= (u64::from(c) & mask) << filled;
        filled += b;
        while filled >= 8 {
            out.push(acc as u8);
            acc >>= 8;
            filled -= 8;
        }
    }
    if filled > 0 {
        out.push(acc as u8);
    }
    out
}

/// The first `B` bytes (`B` at most 8, `src` at least that long) little-endian into a `u64`.
///
/// Assembled byte by byte rather than with `copy_from_slice`: in builds with debug assertions
/// (this workspace's dev profile) the copy's precondition check made 2/3/5/6-bit
/// dequantisation 3-4x slower; the shifts compile to one load either way.
#[inline(always)]
fn load_exact<const B: usize>(src: &[u8]) -> u64 {
    src[..B]
        .iter()
        .enumerate()
        .fold(0u64, |v, (i, &b)| v | (u64::from(b) << (8 * i)))
}

/// Up to 8 bytes little-endian into a `u64`, missing bytes zero.
#[inline(always)]
fn load(src: &[u8]) -> u64 {
    src.iter()
        .take(8)
        .enumerate()
        .fold(0u64, |v, (i, &b)| v | (u64::from(b) << (8 * i)))
}

/// Calls `f(j, code)` for the `n` codes of `B` bits packed at the start of `src`, in order.
/// `src` must hold at least `packed_len(n, B)` bytes.
#[inline(always)]
fn unpack_run<const B: usize>(src: &[u8], n: usize, mut f: impl FnMut(usize, u64)) {
    let mask = (1u64 << B) - 1;
    let full = n / 8;
    for (c, s) in src.chunks_exact(B).take(full).enumerate() {
        let v = load_exact::<B>(s);
        for j in 0..8 {
            f(8 * c + j, (v >> (B * j)) & mask);
        }
    }
    let rest = n - 8 * full;
    if rest > 0 {
        let v = load(src.get(full * B..).unwrap_or(&[]));
        for j in 0..rest {
            f(8 * full + j, (v >> (B * j)) & mask);
        }
    }
}

/// Dequantises `out.len()` codes of `B` bits at the start of `src` as `min + code * scale`.
#[inline(always)]
fn dequant_run<const B: usize>(src: &[u8], min: f32, scale: f32, out: &mut [f32]) {
    let mask = (1u64 << B) - 1;
    let full = out.len() / 8;
    let (head, tail) = out.split_at_mut(8 * full);
    for (o, s) in head.chunks_exact_mut(8).zip(src.chunks_exact(B)) {
        let mut v = load_exact::<B>(s);
        for y in o {
            *y = min + ((v & mask) as i32) as f32 * scale;
            v >>= B;
        }
    }
    let mut v = load(src.get(full * B..).unwrap_or(&[]));
    for y in tail {
        *y = min + ((v & mask) as i32) as f32 * scale;
        v >>= B;
    }
}

/// The `n` codes packed in `packed` (`bits` in 1..=8).
///
/// # Errors
/// [`Error::Codec`] if `packed` is not exactly `packed_len(n, bits)` bytes or `bits` is out of
/// range.
pub fn unpack_codes(packed: &[u8], bits: u8, n: usize) -> Result<Vec<u8>> {
    if !(1..=8).contains(&bits) {
        return Err(Error::codec(
            CODEC,
            format!("cannot unpack {bits}-bit codes"),
        ));
    }
    if packed.len() != packed_len(n, bits) {
        return Err(Error::codec(
            CODEC,
            format!(
                "{} packed bytes for {n} codes of {bits} bits, expected {}",
                packed.len(),
                packed_len(n, bits)
            ),
        ));
    }
    let mut out = vec![0u8; n];
    let put = |j: usize, c: u64| out[j] = c as u8;
    match bits {
        1 => unpack_run::<1>(packed, n, put),
        2 => unpack_run::<2>(packed, n, put),
        3 => unpack_run::<3>(packed, n, put),
        4 => unpack_run::<4>(packed, n, put),
        5 => unpack_run::<5>(packed, n, put),
        6 => unpack_run::<6>(packed, n, put),
        7 => unpack_run::<7>(packed, n, put),
        _ => unpack_run::<8>(packed, n, put),
    }
    Ok(out)
}

/// Dense dequantisation of a whole matrix in one pass over its codes: group `g` covers
/// `out[g group..]` (the last group may be partial), its codes start at byte
/// `g group B / 8` of `codes`, and its values are `mins[g] + code * scales[g]`.
#[inline(always)]
fn dequant_groups<const B: usize>(
    codes: &[u8],
    group: usize,
    mins: &[f32],
    scales: &[f32],
    out: &mut [f32],
) {
    let group_bytes = group * B / 8;
    for (g, o) in out.chunks_mut(group).enumerate() {
        let src = codes.get(g * group_bytes..).unwrap_or(&[]);
        dequant_run::<B>(src, mins[g], scales[g], o);
    }
}

/// Dense dequantisation of `out.len()` values in groups of `group` (a multiple of 8) from
/// `bits`-bit codes; `mins` and `scales` hold one entry per group. The caller has checked the
/// sizes: `codes` is `packed_len(out.len(), bits)` bytes and there are `ceil(len / group)`
/// groups; `bits` is one of 2, 3, 4, 5, 6, 8.
pub(super) fn dequantize_dense(
    bits: u8,
    codes: &[u8],
    group: usize,
    mins: &[f32],
    scales: &[f32],
    out: &mut [f32],
) {
    match bits {
        2 => dequant_groups::<2>(codes, group, mins, scales, out),
        3 => dequant_groups::<3>(codes, group, mins, scales, out),
        4 => dequant_groups::<4>(codes, group, mins, scales, out),
        5 => dequant_groups::<5>(codes, group, mins, scales, out),
        6 => dequant_groups::<6>(codes, group, mins, scales, out),
        _ => dequant_groups::<8>(codes, group, mins, scales, out),
    }
}
