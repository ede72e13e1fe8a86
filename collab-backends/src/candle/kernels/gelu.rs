//! GELU with the exact `erf` form, `x Φ(x) = x (1 + erf(x / √2)) / 2`, vectorised.
//!
//! candle evaluates it one element at a time through a scalar `erf` (about 30 ms of a
//! ViT-B/16 block at batch 8 on this project's 2-core machine, `docs/RESULTS.md`). Here
//! `erfc(|z|)`, `z = x / √2`, comes from the Chebyshev fit of Press et al., *Numerical
//! Recipes* §6.2 (`erfcc`: `t exp(-z² + P(t))`, `t = 1 / (1 + z/2)`, fractional error below
//! 1.2e-7 everywhere), with the vectorised `exp` of [`super::simd`]. Using `erfc` directly
//! keeps the relative accuracy on the negative side, where `1 + erf` would cancel:
//! `gelu(x) = x erfc(|z|) / 2` for `x < 0` and `x - x erfc(z) / 2` for `x >= 0`.
//! Beyond `|z| >= 9` the correction is below 1e-36 and is dropped (`gelu(x) = max(x, 0)`);
//! NaN stays NaN. Relative error (tested against f64): below 1e-6 for `x >= 0`; for `x < 0`
//! below `1e-6 + 2.5e-7 z²`, the f32 rounding of `z` amplified by `exp(-z²)` (at most 2e-5,
//! where `|gelu(x)| < 1e-35`).

use rayon::prelude::*;

use super::simd::{BLOCK, Isa, dispatch, exp_nonpositive, madd};

/// Elements per rayon task: below this the work stays on the calling thread.
const CHUNK: usize = 1 << 14;

/// GELU of one block of values.
#[inline(always)]
fn gelu<const FMA: bool>(x: &[f32; BLOCK], out: &mut [f32; BLOCK]) {
    // Numerical Recipes' erfcc coefficients, highest power of t first, as published.
    #[allow(clippy::excessive_precision)]
    const P: [f32; 10] = [
        0.170_872_77,
        -0.822_152_23,
        1.488_515_87,
        -1.135_203_98,
        0.278_868_07,
        -0.186_288_06,
        0.096_784_18,
        0.374_091_96,
        1.000_023_68,
        -1.265_512_23,
    ];
    let mut z = [0f32; BLOCK];
    let mut t = [0f32; BLOCK];
    for i in 0..BLOCK {
        let az = (x[i] * std::f32::consts::FRAC_1_SQRT_2).abs();
        z[i] = if az < 9.0 { az } else { 9.0 };
        t[i] = 1.0 / madd::<FMA>(0.5, z[i], 1.0);
    }
    let mut p = [P[0]; BLOCK];
    for c in &P[1..] {
        for i in 0..BLOCK {
            p[i] = madd::<FMA>(p[i], t[i], *c);
        }
    }
    for i in 0..BLOCK {
        p[i] = madd::<FMA>(-z[i], z[i], p[i]);
    }
    exp_nonpositive::<FMA>(&mut p);
    for i in 0..BLOCK {
        let v = x[i];
        let az = (v * std::f32::consts::FRAC_1_SQRT_2).abs();
        let half = 0.5 * v * (t[i] * p[i]);
        // `!(az >= 9)` keeps NaN on the computed path, where it propagates.
        let half = if az >= 9.0 { 0.0 } else { half };
        out[i] = if v >= 0.0 { v - half } else { half };
    }
}

/// Written out rather than through a closure: a closure's call shim may stay out of line,
/// compiled without the caller's AVX/FMA features (measured: 40x slower).
#[inline(always)]
fn gelu_slice<const FMA: bool>(x: &[f32], out: &mut [f32]) {
    let n = x.len().min(out.len());
    let (xb, xt) = x[..n].as_chunks::<BLOCK>();
    let (ob, ot) = out[..n].as_chunks_mut::<BLOCK>();
    for (x, o) in xb.iter().zip(ob) {
        gelu::<FMA>(x, o);
    }
    if !xt.is_empty() {
        let mut xs = [0f32; BLOCK];
        let mut os = [0f32; BLOCK];
        xs[..xt.len()].copy_from_slice(xt);
        gelu::<FMA>(&xs, &mut os);
        ot.copy_from_slice(&os[..ot.len()]);
    }
}

/// `out[i] = gelu(x[i])` on one thread with the instruction set `isa` (from [`Isa::detect`]
/// or [`Isa::available`]). Only the common length is written.
pub fn gelu_erf_with(isa: Isa, x: &[f32], out: &mut [f32]) {
    dispatch!(isa, gelu_slice(x: &[f32], out: &mut [f32]))
}

/// `out[i] = gelu(x[i])`, split across rayon's pool for large inputs, with the best
/// instruction set of this CPU. Only the common length is written.
pub fn gelu_erf(x: &[f32], out: &mut [f32]) {
    let isa = Isa::detect();
    let n = x.len().min(out.len());
    if n <= CHUNK {
        gelu_erf_with(isa, x, out);
    } else {
        out[..n]
            .par_chunks_mut(CHUNK)
            .zip(x[..n].par_chunks(CHUNK))
            .for_each(|(o, x)| gelu_erf_with(isa, x, o));
    }
}

#[inline(always)]
fn gelu_in_place<const FMA: bool>(x: &mut [f32]) {
    let (xb, xt) = x.as_chunks_mut::<BLOCK>();
    for b in xb {
        let input = *b;
        gelu::<FMA>(&input, b);
    }
    if !xt.is_empty() {
        let mut xs = [0f32; BLOCK];
        let mut os = [0f32; BLOCK];
        xs[..xt.len()].copy_from_slice(xt);
        gelu::<FMA>(&xs, &mut os);
        let n = xt.len();
        xt.copy_from_slice(&os[..n]);
    }
}

/// [`gelu_erf_with`] in place: `x[i] = gelu(x[i])`.
pub fn gelu_erf_in_place_with(isa: Isa, x: &mut [f32]) {
    dispatch!(isa, gelu_in_place(x: &mut [f32]))
}

/// [`gelu_erf`] in place, split across rayon's pool for large inputs.
pub fn gelu_erf_in_place(x: &mut [f32]) {
    let isa = Isa::detect();
    if x.len() <= CHUNK {
        gelu_erf_in_place_with(isa, x);
    } else {
        x.par_chunks_mut(CHUNK)
            .for_each(|c| gelu_erf_in_place_with(isa, c));
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn exact(x: f32) -> f64 {
        crate::reference::erf::gelu(f64::from(x))
    }

    #[test]
    fn matches_the_f64_formula_on_every_path() {
        let x: Vec<f32> = (0..=400_000).map(|i| -20.0 + i as f32 * 1e-4).collect();
        for isa in Isa::available() {
            let mut out = vec![0f32; x.len()];
            gelu_erf_with(isa, &x, &mut out);
            for (v, got) in x.iter().zip(&out) {
                let want = exact(*v);
                let err = (f64::from(*got) - want).abs();
                // 1e-6 relative, widened on the negative tail by the rounding of z = x/√2 in
                // f32 (relative 6e-8), which exp(-z²) amplifies by 2z²; 1e-12 absolute where
                // the result underflows toward 0.
                let z2 = f64::from(*v).powi(2) / 2.0;
                assert!(
                    err <= (1e-6 + 2.5e-7 * z2) * want.abs() + 1e-12,
                    "{isa:?} gelu({v}) = {got}, want {want}"
                );
            }
        }
    }

    #[test]
    fn the_threaded_entry_point_equals_the_single_thread_one() {
        let x: Vec<f32> = (0..3 * CHUNK + 17)
            .map(|i| (i as f32 * 0.013).sin() * 6.0)
            .collect();
        let mut threaded = vec![0f32; x.len()];
        gelu_erf(&x, &mut threaded);
        let mut single = vec![0f32; x.len()];
        gelu_erf_with(Isa::detect(), &x, &mut single);
        assert_eq!(threaded, single);
    }

    #[test]
    fn in_place_equals_out_of_place() {
        let x: Vec<f32> = (0..2 * CHUNK + 77)
            .map(|i| (i as f32 * 0.029).sin() * 8.0)
            .collect();
        let mut out = vec![0f32; x.len()];
        gelu_erf(&x, &mut out);
        let mut y = x.clone();
        gelu_erf_in_place(&mut y);
        assert_eq!(y, out);
        for isa in Isa::available() {
            let mut y = x[..100].to_vec();
            gelu_erf_in_place_with(isa, &mut y);
            let mut want = vec![0f32; 100];
            gelu_erf_with(isa, &x[..100], &mut want);
            assert_eq!(y, want, "{isa:?}");
        }
    }

    #[test]
    fn special_values() {
        for isa in Isa::available() {
            let x = [
                f32::NAN,
                f32::INFINITY,
                f32::NEG_INFINITY,
                0.0,
                -0.0,
                1e30,
                -1e30,
            ];
            let mut out = [7f32; 7];
            gelu_erf_with(isa, &x, &mut out);
            assert!(out[0].is_nan(), "{isa:?}");
            assert_eq!(out[1], f32::INFINITY, "{isa:?}");
            assert_eq!(out[2], 0.0, "{isa:?}");
            assert_eq!(out[3], 0.0, "{isa:?}");
            assert_eq!(out[4], 0.0, "{isa:?}");
            assert_eq!(out[5], 1e30, "{isa:?}");
            assert_eq!(out[6], 0.0, "{isa:?}");
        }
    }
}
