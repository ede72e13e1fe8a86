//! `C (+)= alpha A B` on ndarray views, on the calling thread, by the `gemm` crate: the one
//! place this backend calls gemm itself.
//!
//! The fused attention multiplies many small per-head matrices, each on one rayon task, and
//! each task of the fused linear layer multiplies its rows. ndarray
//! validates the views (every element of a view lies inside its slice; a mutable view does not
//! alias itself), and gemm, whose kernels are chosen at run time (AVX/FMA here), computes the
//! product. Against ndarray's `general_mat_mul` (the `matrixmultiply` crate) in the same place,
//! DeiT-Tiny's attention at batch 1 on one thread went from 5.7 to 4.6 ms per forward (issue
//! 30's session, `exp forward-throughput --per-op`).

use ndarray::{ArrayView2, ArrayViewMut2};

/// `c = alpha a b`, or `c += alpha a b` with `accumulate`, single-threaded.
///
/// # Panics
/// If the shapes are not `a [m, k]`, `b [k, n]`, `c [m, n]`.
pub fn matmul_into(
    alpha: f32,
    a: &ArrayView2<'_, f32>,
    b: &ArrayView2<'_, f32>,
    c: &mut ArrayViewMut2<'_, f32>,
    accumulate: bool,
) {
    let (m, k) = a.dim();
    let (k2, n) = b.dim();
    assert!(
        k == k2 && c.dim() == (m, n),
        "matmul_into: a {:?}, b {:?}, c {:?} do not chain",
        a.dim(),
        b.dim(),
        c.dim()
    );
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        if !accumulate {
            c.fill(0.0);
        }
        return;
    }
    let (ars, acs) = (a.strides()[0], a.strides()[1]);
    let (brs, bcs) = (b.strides()[0], b.strides()[1]);
    let (crs, ccs) = (c.strides()[0], c.strides()[1]);
    #[allow(unsafe_code)]
    // SAFETY: each pointer is its view's first element and each stride pair its view's, so
    // every (i, j) gemm touches, i < rows and j < cols of that view, is an element ndarray has
    // checked to lie inside the view's slice; the dimensions chain (asserted above). Strides
    // may be negative (an inverted axis) or zero (a broadcast `a` or `b`): gemm 0.19 takes
    // them as signed offsets from the first element, the same addressing as ndarray's. `c` is a
    // mutable view: borrowck keeps it disjoint from `a` and `b`, and ndarray rejects mutable
    // views whose elements overlap. gemm reads `c` only with `accumulate` (`read_dst`).
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            c.as_mut_ptr(),
            ccs,
            crs,
            accumulate,
            a.as_ptr(),
            acs,
            ars,
            b.as_ptr(),
            bcs,
            brs,
            if accumulate { 1.0 } else { 0.0 },
            alpha,
            false,
            false,
            false,
            gemm::Parallelism::None,
        );
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use ndarray::{Array2, ShapeBuilder};

    #[test]
    fn matches_ndarray_on_strided_and_transposed_views() {
        let (m, k, n) = (13, 9, 11);
        let a = Array2::from_shape_fn((m, k), |(i, j)| (i * k + j) as f32 * 0.1 - 3.0);
        let b = Array2::from_shape_fn((n, k), |(i, j)| ((i + 2 * j) % 7) as f32 - 2.5);
        // A view with a row stride wider than its row, as q is inside the qkv projection.
        let wide = Array2::from_shape_fn(
            (m, 3 * k),
            |(i, j)| if j < k { a[(i, j)] } else { f32::NAN },
        );
        let a_strided = wide.slice(ndarray::s![.., ..k]);
        let want = a.dot(&b.t()) * 0.5;
        let mut out = vec![f32::NAN; m * 2 * n];
        let mut c = ArrayViewMut2::from_shape((m, n).strides((2 * n, 1)), &mut out).unwrap();
        matmul_into(0.5, &a_strided, &b.t(), &mut c, false);
        for i in 0..m {
            for j in 0..n {
                assert!((c[(i, j)] - want[(i, j)]).abs() < 1e-4, "({i}, {j})");
            }
        }
        // The columns between c's rows are untouched.
        assert!(out[n..2 * n].iter().all(|v| v.is_nan()));
        // Negative strides (rows of `a` reversed) and a zero stride (a broadcast row of `b`).
        let a_rev = a.slice(ndarray::s![..;-1, ..]);
        let row = Array2::from_shape_fn((1, n), |(_, j)| j as f32 - 4.0);
        let b_bcast = row.broadcast((k, n)).unwrap();
        let want = a_rev.dot(&b_bcast);
        let mut out = vec![f32::NAN; m * n];
        let mut c = ArrayViewMut2::from_shape((m, n), &mut out).unwrap();
        matmul_into(1.0, &a_rev, &b_bcast, &mut c, false);
        for i in 0..m {
            for j in 0..n {
                assert!((c[(i, j)] - want[(i, j)]).abs() < 1e-3, "({i}, {j})");
            }
        }
    }
}
