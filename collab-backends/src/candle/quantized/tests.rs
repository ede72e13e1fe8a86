//! Unit tests of the quantised backend: packing rules, the error bounds of each format, packed
//! weights in other primitives, memory accounting and shape errors.

use collab_core::{Backend, Error};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::{QuantTensor, QuantizedCandleBackend, WeightBits};

fn values(n: usize, seed: u64) -> Vec<f32> {
    let mut rng = StdRng::seed_from_u64(seed);
    (0..n).map(|_| rng.random_range(-1.0..1.0)).collect()
}

fn q(bits: WeightBits) -> QuantizedCandleBackend {
    QuantizedCandleBackend::new(bits)
}

#[test]
fn names_and_labels() {
    let names: Vec<String> = WeightBits::ALL.iter().map(|&b| q(b).name()).collect();
    assert_eq!(names, ["arm-f32", "arm-q8", "arm-q4"]);
    assert_eq!(WeightBits::parse("q4").ok(), Some(WeightBits::Q4));
    assert!(matches!(WeightBits::parse("q3"), Err(Error::Config(_))));
}

#[test]
fn packs_only_whole_blocks_and_only_when_quantising() -> collab_core::Result<()> {
    let b8 = q(WeightBits::Q8);
    assert!(b8.linear_weight(values(4 * 64, 1), &[4, 64])?.is_packed());
    assert!(!b8.linear_weight(values(4 * 48, 1), &[4, 48])?.is_packed());
    assert!(
        !q(WeightBits::F32)
            .linear_weight(values(4 * 64, 1), &[4, 64])?
            .is_packed()
    );
    Ok(())
}

/// The largest |dequantised - original| over each block of 32, divided by that block's largest
/// magnitude.
fn worst_relative_block_error(orig: &[f32], got: &[f32]) -> f32 {
    orig.chunks(32)
        .zip(got.chunks(32))
        .map(|(o, g)| {
            let amax = o.iter().fold(0f32, |m, v| m.max(v.abs()));
            let e = o.iter().zip(g).fold(0f32, |m, (a, b)| m.max((a - b).abs()));
            e / amax
        })
        .fold(0.0, f32::max)
}

#[test]
fn q8_rounds_to_half_a_step_of_amax_over_127() -> collab_core::Result<()> {
    let b = q(WeightBits::Q8);
    let w = values(16 * 128, 2);
    let t = b.linear_weight(w.clone(), &[16, 128])?;
    let got = b.to_vec(&t)?;
    let e = worst_relative_block_error(&w, &got);
    // Half a step (0.5/127) plus the f16 rounding of the scale.
    assert!(e <= 0.5 / 127.0 + 2e-3, "q8 worst block error {e}");
    assert!(e > 0.0, "q8 must round something");
    Ok(())
}

#[test]
fn q4_rounds_within_one_step_of_amax_over_8() -> collab_core::Result<()> {
    let b = q(WeightBits::Q4);
    let w = values(16 * 128, 3);
    let t = b.linear_weight(w.clone(), &[16, 128])?;
    let got = b.to_vec(&t)?;
    let e = worst_relative_block_error(&w, &got);
    // Q4_0 maps the signed extreme to -8 and clips the other side at +7: up to one step.
    assert!(e <= 1.0 / 8.0 + 2e-3, "q4 worst block error {e}");
    assert!(e > 0.5 / 127.0, "q4 must be coarser than q8 ({e})");
    Ok(())
}

#[test]
fn packed_linear_matches_dense_linear_of_the_dequantised_weight() -> collab_core::Result<()> {
    for bits in [WeightBits::Q8, WeightBits::Q4] {
        let b = q(bits);
        let (m, k, n) = (5, 96, 12);
        let w = b.linear_weight(values(n * k, 4), &[n, k])?;
        let wd = b.from_vec(b.to_vec(&w)?, &[n, k])?;
        let x = b.from_vec(values(2 * m * k, 5), &[2, m, k])?;
        let bias = b.from_vec(values(n, 6), &[n])?;
        let y = b.to_vec(&b.linear(&x, &w, Some(&bias))?)?;
        let yd = b.to_vec(&b.linear(&x, &wd, Some(&bias))?)?;
        assert_eq!(b.dims(&b.linear(&x, &w, None)?), [2, m, n]);
        // Only the activations' Q8_0 rounding separates the two: |x| < 1, |w| < 1, so each
        // product is off by at most 0.5/127, and sqrt(k) of them add up in a random walk.
        let worst = y
            .iter()
            .zip(&yd)
            .fold(0f32, |a, (p, d)| a.max((p - d).abs()));
        assert!(
            worst < 0.5 / 127.0 * (k as f32).sqrt() * 3.0,
            "{bits:?}: {worst}"
        );
    }
    Ok(())
}

#[test]
fn a_packed_weight_works_in_other_primitives() -> collab_core::Result<()> {
    let b = q(WeightBits::Q4);
    let w = b.linear_weight(values(8 * 32, 7), &[8, 32])?;
    let deq = b.to_vec(&w)?;
    let wt = b.permute(&w, &[1, 0])?;
    assert!(!wt.is_packed());
    assert_eq!(b.dims(&wt), [32, 8]);
    let row = b.to_vec(&b.narrow(&w, 0, 3, 1)?)?;
    assert_eq!(row, deq[3 * 32..4 * 32]);
    let doubled = b.to_vec(&b.add(&w, &w)?)?;
    assert!(doubled.iter().zip(&deq).all(|(d, v)| *d == 2.0 * v));
    Ok(())
}

#[test]
fn memory_counts_packed_blocks_and_dense_tensors() -> collab_core::Result<()> {
    let (out, inp) = (64, 256);
    let mut bytes = Vec::new();
    for bits in WeightBits::ALL {
        let b = q(bits);
        let w = b.linear_weight(values(out * inp, 8), &[out, inp])?;
        let _odd = b.linear_weight(values(4 * 20, 15), &[4, 20])?;
        let _bias = b.from_vec(values(out, 9), &[out])?;
        let m = b.memory();
        assert_eq!(m.linear_weights, 2);
        assert_eq!(m.packed_weights, u64::from(bits != WeightBits::F32));
        assert_eq!(m.linear_elements, (out * inp + 80) as u64);
        assert_eq!(m.linear_bytes, (w.storage_bytes() + 80 * 4) as u64);
        assert_eq!(m.other_bytes, (out * 4) as u64);
        bytes.push(w.storage_bytes());
        b.clone().reset_memory();
        assert_eq!(b.memory().total_bytes(), 0, "clones share the ledger");
    }
    let blocks = out * inp / 32;
    assert_eq!(bytes, [out * inp * 4, blocks * 34, blocks * 18]);
    Ok(())
}

#[test]
fn bad_shapes_are_shape_errors() -> collab_core::Result<()> {
    let b = q(WeightBits::Q8);
    let is_shape = |r: collab_core::Result<QuantTensor>| matches!(r, Err(Error::Shape { .. }));
    assert!(is_shape(b.linear_weight(values(64, 16), &[2, 32, 1])));
    assert!(is_shape(b.linear_weight(values(63, 17), &[2, 32])));
    let w = b.linear_weight(values(4 * 32, 10), &[4, 32])?;
    let x = b.from_vec(values(2 * 64, 11), &[2, 64])?;
    assert!(is_shape(b.linear(&x, &w, None)));
    let x = b.from_vec(values(32, 12), &[32])?;
    assert!(is_shape(b.linear(&x, &w, None)));
    let x = b.from_vec(values(2 * 32, 13), &[2, 32])?;
    let bias = b.from_vec(values(5, 14), &[5])?;
    assert!(is_shape(b.linear(&x, &w, Some(&bias))));
    Ok(())
}
