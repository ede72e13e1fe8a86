//! Layer norm over the last dimension, one row per task, vectorised.
//!
//! `y = (x - mean) / sqrt(var + eps) * gamma + beta` with the biased variance, computed in two
//! passes over the row (mean, then squared deviations: no cancellation for rows with a large
//! mean), each in 8 lanes. Rows are split across rayon's pool when the tensor is large.

use rayon::prelude::*;

use super::simd::{Isa, dispatch, madd, sum, sum_squared_deviations};

/// Elements per rayon task (whole rows), below which the work stays on the calling thread.
const CHUNK: usize = 1 << 16;

#[inline(always)]
fn rows<const FMA: bool>(x: &[f32], gamma: &[f32], beta: &[f32], eps: f32, out: &mut [f32]) {
    let d = gamma.len();
    for (xr, yr) in x.chunks_exact(d).zip(out.chunks_exact_mut(d)) {
        let mean = sum(xr) / d as f32;
        let var = sum_squared_deviations::<FMA>(xr, mean) / d as f32;
        let rstd = 1.0 / (var + eps).sqrt();
        for (((y, v), g), b) in yr.iter_mut().zip(xr).zip(gamma).zip(beta) {
            *y = madd::<FMA>((v - mean) * rstd, *g, *b);
        }
    }
}

fn check(x: &[f32], gamma: &[f32], beta: &[f32], out: &[f32]) {
    assert!(
        !gamma.is_empty()
            && gamma.len() == beta.len()
            && x.len().is_multiple_of(gamma.len())
            && out.len() == x.len(),
        "layer_norm: x {} / out {} values are not rows of gamma {} = beta {}",
        x.len(),
        out.len(),
        gamma.len(),
        beta.len()
    );
}

/// Layer norm of each row of `x` (rows of `gamma.len()` values) into `out` on one thread with
/// the instruction set `isa` (from [`Isa::detect`] or [`Isa::available`]).
///
/// # Panics
/// If `gamma` is empty, `gamma` and `beta` differ in length, `x` is not whole rows, or `out`
/// differs from `x` in length (the backend validates shapes before calling).
pub fn layer_norm_with(
    isa: Isa,
    x: &[f32],
    gamma: &[f32],
    beta: &[f32],
    eps: f32,
    out: &mut [f32],
) {
    check(x, gamma, beta, out);
    dispatch!(
        isa,
        rows(x: &[f32], gamma: &[f32], beta: &[f32], eps: f32, out: &mut [f32])
    )
}

/// [`layer_norm_with`] with the best instruction set of this CPU, rows split across rayon's
/// pool for large inputs.
///
/// # Panics
/// As [`layer_norm_with`].
pub fn layer_norm(x: &[f32], gamma: &[f32], beta: &[f32], eps: f32, out: &mut [f32]) {
    check(x, gamma, beta, out);
    let isa = Isa::detect();
    let d = gamma.len();
    let per_task = (CHUNK / d).max(1) * d;
    if x.len() <= per_task {
        layer_norm_with(isa, x, gamma, beta, eps, out);
    } else {
        out.par_chunks_mut(per_task)
            .zip(x.par_chunks(per_task))
            .for_each(|(o, x)| layer_norm_with(isa, x, gamma, beta, eps, o));
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn exact(x: &[f32], gamma: &[f32], beta: &[f32], eps: f32) -> Vec<f64> {
        let d = gamma.len();
        x.chunks(d)
            .flat_map(|r| {
                let mean = r.iter().map(|v| f64::from(*v)).sum::<f64>() / d as f64;
                let var = r
                    .iter()
                    .map(|v| (f64::from(*v) - mean).powi(2))
                    .sum::<f64>()
                    / d as f64;
                let rstd = 1.0 / (var + f64::from(eps)).sqrt();
                r.iter()
                    .zip(gamma)
                    .zip(beta)
                    .map(move |((v, g), b)| {
                        (f64::from(*v) - mean) * rstd * f64::from(*g) + f64::from(*b)
                    })
                    .collect::<Vec<_>>()
            })
            .collect()
    }

    #[test]
    fn matches_f64_on_every_path_width_and_offset() {
        for d in [1, 3, 8, 13, 192, 768] {
            let rows = 5;
            // A large common offset: the two-pass variance must not cancel.
            let x: Vec<f32> = (0..rows * d)
                .map(|i| 100.0 + (i as f32 * 0.71).sin() * 3.0)
                .collect();
            let gamma: Vec<f32> = (0..d).map(|i| 0.5 + (i as f32 * 0.3).cos()).collect();
            let beta: Vec<f32> = (0..d).map(|i| (i as f32 * 0.2).sin()).collect();
            let want = exact(&x, &gamma, &beta, 1e-6);
            for isa in Isa::available() {
                let mut out = vec![0f32; x.len()];
                layer_norm_with(isa, &x, &gamma, &beta, 1e-6, &mut out);
                for (got, want) in out.iter().zip(&want) {
                    assert!(
                        (f64::from(*got) - want).abs() < 2e-5 * (1.0 + want.abs()),
                        "{isa:?} d={d}: {got} vs {want}"
                    );
                }
            }
        }
    }

    #[test]
    fn the_threaded_entry_point_equals_the_single_thread_one() {
        let d = 192;
        let x: Vec<f32> = (0..200 * d).map(|i| (i as f32 * 0.013).sin()).collect();
        let gamma = vec![1.5; d];
        let beta = vec![-0.25; d];
        let mut threaded = vec![0f32; x.len()];
        layer_norm(&x, &gamma, &beta, 1e-6, &mut threaded);
        let mut single = vec![0f32; x.len()];
        layer_norm_with(Isa::detect(), &x, &gamma, &beta, 1e-6, &mut single);
        assert_eq!(threaded, single);
    }
}
