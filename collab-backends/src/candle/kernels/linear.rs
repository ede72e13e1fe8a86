//! A linear layer, `y = x W^T + b`, as one gemm with the bias folded in.
//!
//! candle computes `x W^T` and then adds the bias in a second pass over the output, broadcast
//! one element at a time. Here the output rows are first filled with the bias and the gemm
//! (the `gemm` crate, the one candle itself uses, with its run-time AVX/FMA/AVX-512 kernels)
//! accumulates `x W^T` onto them, so the output is written once. The weight may be stored as
//! PyTorch keeps it, `[n, k]` ([`WeightLayout::OutIn`]), or transposed, `[k, n]`
//! ([`WeightLayout::InOut`]), which gemm reads row by row.

use ndarray::{ArrayView2, ArrayViewMut2, ShapeBuilder};
use rayon::prelude::*;

use super::small_gemm::matmul_into;

/// How the weight of a linear layer lies in memory.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WeightLayout {
    /// `[n, k]` row-major: one row per output feature (PyTorch's and safetensors' layout).
    OutIn,
    /// `[k, n]` row-major: one row per input feature.
    InOut,
}

/// Work (multiply-adds) below which the gemm runs on the calling thread.
const SERIAL_BELOW: usize = 1 << 16;

/// Output values per task at most (about 1 MiB, one core's L2 here), so that a task's
/// activation runs on output its gemm has just written, still in cache.
const TASK_OUTPUT: usize = 1 << 18;

/// What runs on the output after the product.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Activation {
    /// Nothing: `y = x W^T + b`.
    Identity,
    /// GELU, exact `erf` form ([`super::gelu`]): `y = gelu(x W^T + b)`.
    GeluErf,
}

/// `out = act(x W^T (+ bias))` for `x` of `rows x k` values, `w` of `n x k` values in
/// `layout`, `bias` of `n` values and `out` of `rows x n` values, all row-major.
///
/// Large products are split by rows into tasks on rayon's pool, each a single-threaded gemm
/// (which packs W itself) followed by the activation on the rows it has just written, and each
/// first-touching its own part of a fresh output. Against gemm's own rayon split (the `linear`
/// group of `benches/kernels.rs`, run with each strategy during issue 30's session) the row
/// split was equal or 3-10% faster at DeiT-Tiny's and ViT-B's shapes on 2 threads.
///
/// # Panics
/// If a slice's length does not match `rows`, `k` and `n` (the backend checks shapes before
/// calling).
#[allow(clippy::too_many_arguments)] // the shape of a gemm
pub fn linear(
    x: &[f32],
    rows: usize,
    k: usize,
    w: &[f32],
    layout: WeightLayout,
    n: usize,
    bias: Option<&[f32]>,
    activation: Activation,
    out: &mut [f32],
) {
    assert!(
        rows.checked_mul(k) == Some(x.len())
            && n.checked_mul(k) == Some(w.len())
            && rows.checked_mul(n) == Some(out.len())
            && bias.is_none_or(|b| b.len() == n),
        "linear: x {} ({rows}x{k}), w {} ({n}x{k}), bias {:?}, out {} do not match",
        x.len(),
        w.len(),
        bias.map(<[f32]>::len),
        out.len()
    );
    if rows == 0 || n == 0 {
        return;
    }
    // Element (i, j) of W^T is w[j * k + i] for [n, k], w[i * n + j] for [k, n].
    let (rhs_cs, rhs_rs) = match layout {
        WeightLayout::OutIn => (k, 1),
        WeightLayout::InOut => (1, n),
    };
    let part = |x: &[f32], out: &mut [f32]| {
        let rows = out.len() / n;
        if let Some(b) = bias {
            for row in out.chunks_exact_mut(n) {
                row.copy_from_slice(b);
            }
        }
        if k == 0 {
            if bias.is_none() {
                out.fill(0.0);
            }
        } else {
            gemm_rows(x, rows, k, w, (rhs_cs, rhs_rs), n, bias.is_some(), out);
        }
        if activation == Activation::GeluErf {
            super::gelu::gelu_erf_in_place_with(super::simd::Isa::detect(), out);
        }
    };
    let threads = rayon::current_num_threads();
    // (`k > 0`: with no inputs `x` is empty and has no rows to split.)
    if threads > 1 && k > 0 && rows * n * k >= SERIAL_BELOW && rows >= 2 {
        let per = rows.div_ceil(threads).min((TASK_OUTPUT / n).max(16)).max(1);
        out.par_chunks_mut(per * n)
            .zip(x.par_chunks(per * k))
            .for_each(|(o, xr)| part(xr, o));
    } else {
        part(x, out);
    }
}

/// `out (+)= x W^T` for `rows` rows on the calling thread, W^T read at the strides
/// `(column, row)`, through [`super::small_gemm::matmul_into`] on views ndarray validates.
#[allow(clippy::too_many_arguments)] // the shape of a gemm
fn gemm_rows(
    x: &[f32],
    rows: usize,
    k: usize,
    w: &[f32],
    (rhs_cs, rhs_rs): (usize, usize),
    n: usize,
    accumulate: bool,
    out: &mut [f32],
) {
    let a = ArrayView2::from_shape((rows, k), x);
    let b = ArrayView2::from_shape((k, n).strides((rhs_rs, rhs_cs)), w);
    let c = ArrayViewMut2::from_shape((rows, n), out);
    // `linear` checked every length, so the views always fit.
    let (Ok(a), Ok(b), Ok(mut c)) = (a, b, c) else {
        unreachable!("linear: views of checked lengths")
    };
    matmul_into(1.0, &a, &b, &mut c, accumulate);
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn exact(
        x: &[f32],
        rows: usize,
        k: usize,
        w: &[f32],
        n: usize,
        bias: Option<&[f32]>,
    ) -> Vec<f64> {
        let mut y = vec![0f64; rows * n];
        for i in 0..rows {
            for j in 0..n {
                let mut acc = bias.map_or(0.0, |b| f64::from(b[j]));
                for t in 0..k {
                    acc += f64::from(x[i * k + t]) * f64::from(w[j * k + t]);
                }
                y[i * n + j] = acc;
            }
        }
        y
    }

    fn transposed(w: &[f32], n: usize, k: usize) -> Vec<f32> {
        let mut t = vec![0f32; n * k];
        for j in 0..n {
            for i in 0..k {
                t[i * n + j] = w[j * k + i];
            }
        }
        t
    }

    #[test]
    fn matches_f64_in_both_layouts_with_and_without_bias() {
        for (rows, k, n) in [
            (1, 1, 1),
            (3, 5, 7),
            (197, 192, 576),
            (64, 768, 33),
            (5, 0, 4),
            (300, 0, 300),
            (0, 4, 3),
        ] {
            let x: Vec<f32> = (0..rows * k).map(|i| (i as f32 * 0.37).sin()).collect();
            let w: Vec<f32> = (0..n * k).map(|i| (i as f32 * 0.11).cos()).collect();
            let b: Vec<f32> = (0..n).map(|i| i as f32 * 0.5 - 1.0).collect();
            let wt = transposed(&w, n, k);
            for bias in [None, Some(&b[..])] {
                let want = exact(&x, rows, k, &w, n, bias);
                for (layout, weights) in [(WeightLayout::OutIn, &w), (WeightLayout::InOut, &wt)] {
                    let mut out = vec![f32::NAN; rows * n];
                    linear(
                        &x,
                        rows,
                        k,
                        weights,
                        layout,
                        n,
                        bias,
                        Activation::Identity,
                        &mut out,
                    );
                    for (got, want) in out.iter().zip(&want) {
                        let tol = 1e-5 * (k as f64).sqrt().max(1.0) * (1.0 + want.abs());
                        assert!(
                            (f64::from(*got) - want).abs() < tol,
                            "{rows}x{k}x{n} {layout:?} bias {}: {got} vs {want}",
                            bias.is_some()
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn the_activation_is_gelu_of_the_product_at_every_split() {
        for (rows, k, n) in [(3, 5, 7), (197, 192, 768), (700, 64, 40)] {
            let x: Vec<f32> = (0..rows * k).map(|i| (i as f32 * 0.37).sin()).collect();
            let w: Vec<f32> = (0..n * k).map(|i| (i as f32 * 0.11).cos() * 0.3).collect();
            let b: Vec<f32> = (0..n).map(|i| i as f32 * 0.01 - 0.2).collect();
            let run = |act: Activation, fill: f32| {
                let mut out = vec![fill; rows * n];
                linear(
                    &x,
                    rows,
                    k,
                    &w,
                    WeightLayout::OutIn,
                    n,
                    Some(&b),
                    act,
                    &mut out,
                );
                out
            };
            let plain = run(Activation::Identity, 0.0);
            let mut want = vec![0f32; rows * n];
            crate::candle::kernels::gelu::gelu_erf(&plain, &mut want);
            let got = run(Activation::GeluErf, f32::NAN);
            assert_eq!(got, want, "{rows}x{k}x{n}");
        }
    }

    #[test]
    #[should_panic(expected = "do not match")]
    fn mismatched_lengths_panic_before_any_read() {
        let mut out = vec![0f32; 4];
        linear(
            &[1.0; 3],
            2,
            2,
            &[1.0; 4],
            WeightLayout::OutIn,
            2,
            None,
            Activation::Identity,
            &mut out,
        );
    }
}
