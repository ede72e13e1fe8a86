//! A linear layer, `y = x W^T + b`, as one gemm with the bias folded in.
//!
//! candle computes `x W^T` and then adds the bias in a second pass over the output, broadcast
//! one element at a time. Here the output rows are first filled with the bias and the gemm
//! (the `gemm` crate, the one candle itself uses, with its run-time AVX/FMA/AVX-512 kernels)
//! accumulates `x W^T` onto them, so the output is written once. The weight may be stored as
//! PyTorch keeps it, `[n, k]` ([`WeightLayout::OutIn`]), or transposed, `[k, n]`
//! ([`WeightLayout::InOut`]), which gemm reads row by row.

use gemm::Parallelism;
use rayon::prelude::*;

/// How the weight of a linear layer lies in memory.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WeightLayout {
    /// `[n, k]` row-major: one row per output feature (PyTorch's and safetensors' layout).
    OutIn,
    /// `[k, n]` row-major: one row per input feature.
    InOut,
}

/// Output values per task of the parallel bias fill.
const FILL_CHUNK: usize = 1 << 16;

/// Work (multiply-adds) below which the gemm runs on the calling thread.
const SERIAL_BELOW: usize = 1 << 16;

/// `out = x W^T (+ bias)` for `x` of `rows x k` values, `w` of `n x k` values in `layout`,
/// `bias` of `n` values and `out` of `rows x n` values, all row-major; large products are
/// split across rayon's pool.
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
    out: &mut [f32],
) {
    assert!(
        x.len() == rows * k
            && w.len() == n * k
            && out.len() == rows * n
            && bias.is_none_or(|b| b.len() == n),
        "linear: x {} ({rows}x{k}), w {} ({n}x{k}), bias {:?}, out {} do not match",
        x.len(),
        w.len(),
        bias.map(<[f32]>::len),
        out.len()
    );
    if let Some(b) = bias {
        // In parallel when large: a fresh output's pages are first touched here, and page
        // faults taken on one thread cost more than the fill (measured in the forward profile
        // of `collab-backends/README.md`).
        let fill = |rows: &mut [f32]| {
            for row in rows.chunks_exact_mut(n.max(1)) {
                row.copy_from_slice(b);
            }
        };
        if out.len() >= FILL_CHUNK {
            out.par_chunks_mut((FILL_CHUNK / n.max(1)).max(1) * n.max(1))
                .for_each(fill);
        } else {
            fill(out);
        }
    }
    if rows == 0 || n == 0 {
        return;
    }
    if k == 0 {
        if bias.is_none() {
            out.fill(0.0);
        }
        return;
    }
    // Element (i, j) of W^T is w[j * k + i] for [n, k], w[i * n + j] for [k, n].
    let (rhs_cs, rhs_rs) = match layout {
        WeightLayout::OutIn => (k as isize, 1),
        WeightLayout::InOut => (1, n as isize),
    };
    let threads = rayon::current_num_threads();
    let parallelism = if threads > 1 && rows * n * k >= SERIAL_BELOW {
        Parallelism::Rayon(threads)
    } else {
        Parallelism::None
    };
    #[allow(unsafe_code)]
    // SAFETY: gemm reads `rows x k` values of `x` at (i, j) -> i * k + j, `k x n` values of W^T
    // at the strides above (within `w`'s `n * k` values for either layout), and writes `rows x
    // n` values of `out` at (i, j) -> i * n + j: the assert above checked each slice's length,
    // and `out` is borrowed mutably, so it aliases neither input. `read_dst` is set only when
    // `out` was filled with the bias above; otherwise gemm's `alpha = 0` ignores its contents.
    unsafe {
        gemm::gemm(
            rows,
            n,
            k,
            out.as_mut_ptr(),
            1,
            n as isize,
            bias.is_some(),
            x.as_ptr(),
            1,
            k as isize,
            w.as_ptr(),
            rhs_cs,
            rhs_rs,
            if bias.is_some() { 1.0 } else { 0.0 },
            1.0,
            false,
            false,
            false,
            parallelism,
        );
    }
}

#[cfg(test)]
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
                    linear(&x, rows, k, weights, layout, n, bias, &mut out);
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
            &mut out,
        );
    }
}
