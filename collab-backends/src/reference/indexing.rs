//! The indexing primitives: selection, gather and scatter, sorting.

use std::cmp::Ordering;

use collab_core::{Error, Result, shape};
use ndarray::{ArrayD, Axis};

use super::shapes::{array_from_vec, backend_err, row_major};
use super::{RefIndex, RefTensor};

/// Checks that `idx` may index `t` along `dim` in `gather`/`scatter_add`: the same rank, and
/// no larger than `t` in every other dimension.
fn check_gather_shapes(
    op: &'static str,
    t: &[usize],
    dim: usize,
    idx: &[usize],
    what: &str,
) -> Result<()> {
    shape::check_dim(op, t, dim)?;
    if idx.len() != t.len() {
        return Err(Error::shape(
            op,
            format!("{what} of shape {idx:?} must have the rank of the input {t:?} (dim {dim})"),
        ));
    }
    for (d, (&ti, &ii)) in t.iter().zip(idx).enumerate() {
        if d != dim && ii > ti {
            return Err(Error::shape(
                op,
                format!(
                    "{what} of shape {idx:?} is larger than the input {t:?} in dimension {d} \
                     (only dimension {dim} may be larger)"
                ),
            ));
        }
    }
    Ok(())
}

/// Checks that every index value is below `size` (the length of the indexed dimension).
fn check_index_values(op: &'static str, idx: &ArrayD<u32>, size: usize, dim: usize) -> Result<()> {
    match idx.iter().find(|&&i| i as usize >= size) {
        Some(&bad) => Err(backend_err(
            op,
            format!("index {bad} out of range for dimension {dim} of size {size}"),
        )),
        None => Ok(()),
    }
}

/// `out[p] = t[p with p[dim] = idx[p]]` for every position `p` of `idx`.
pub(super) fn gather_array<T: Clone>(
    op: &'static str,
    t: &ArrayD<T>,
    dim: usize,
    idx: &ArrayD<u32>,
) -> Result<ArrayD<T>> {
    check_gather_shapes(op, t.shape(), dim, idx.shape(), "index")?;
    check_index_values(op, idx, t.shape()[dim], dim)?;
    let mut values = Vec::with_capacity(idx.len());
    for (pos, &i) in idx.indexed_iter() {
        let mut src = pos.clone();
        src[dim] = i as usize;
        values.push(t[&src].clone());
    }
    array_from_vec(op, values, idx.shape())
}

/// A total order on `f64` for sorting: numbers by value (`-0 == +0`), NaN above everything.
fn sort_cmp(a: f64, b: f64) -> Ordering {
    match (a.is_nan(), b.is_nan()) {
        (true, true) => Ordering::Equal,
        (true, false) => Ordering::Greater,
        (false, true) => Ordering::Less,
        (false, false) => a.partial_cmp(&b).unwrap_or(Ordering::Equal),
    }
}

/// The slices of `t` along `dim` at the positions in the 1-D `idx`.
pub(super) fn index_select(t: &RefTensor, dim: usize, idx: &RefIndex) -> Result<RefTensor> {
    let op = "index_select";
    shape::check_dim(op, t.0.shape(), dim)?;
    if idx.0.ndim() != 1 {
        return Err(Error::shape(
            op,
            format!("index must be 1-D, got shape {:?}", idx.0.shape()),
        ));
    }
    check_index_values(op, &idx.0, t.0.shape()[dim], dim)?;
    let positions: Vec<usize> = idx.0.iter().map(|&i| i as usize).collect();
    Ok(RefTensor(t.0.select(Axis(dim), &positions)))
}

/// `t` plus, at `p` with `p[dim] = idx[p]`, `src[p]` for every position `p` of `idx`.
pub(super) fn scatter_add(
    t: &RefTensor,
    dim: usize,
    idx: &RefIndex,
    src: &RefTensor,
) -> Result<RefTensor> {
    let op = "scatter_add";
    check_gather_shapes(op, t.0.shape(), dim, idx.0.shape(), "index")?;
    if idx.0.shape() != src.0.shape() {
        return Err(Error::shape(
            op,
            format!(
                "index {:?} and src {:?} must have the same shape",
                idx.0.shape(),
                src.0.shape()
            ),
        ));
    }
    let (ts, ss) = (t.0.shape(), src.0.shape());
    if (0..ts.len()).any(|d| d != dim && ts[d] != ss[d]) {
        return Err(Error::shape(
            op,
            format!("src {ss:?} must equal t {ts:?} outside dim {dim}"),
        ));
    }
    check_index_values(op, &idx.0, t.0.shape()[dim], dim)?;
    let mut out = t.0.clone();
    for (pos, &i) in idx.0.indexed_iter() {
        let mut dst = pos.clone();
        dst[dim] = i as usize;
        out[&dst] += src.0[&pos];
    }
    Ok(RefTensor(out))
}

/// The stable sort order of each row (along the last dimension).
pub(super) fn argsort_last(t: &RefTensor, descending: bool) -> Result<RefIndex> {
    let op = "argsort_last";
    let Some(&n) = t.0.shape().last() else {
        return Err(Error::shape(
            op,
            "needs a tensor of rank >= 1, got a scalar",
        ));
    };
    if u32::try_from(n).is_err() {
        return Err(backend_err(op, format!("last dimension {n} exceeds u32")));
    }
    let data = row_major(&t.0);
    let mut out = Vec::with_capacity(data.len());
    if n > 0 {
        for row in data.chunks(n) {
            let mut order: Vec<usize> = (0..n).collect();
            // `sort_by` is stable: equal values keep their original order either way.
            if descending {
                order.sort_by(|&i, &j| sort_cmp(row[j], row[i]));
            } else {
                order.sort_by(|&i, &j| sort_cmp(row[i], row[j]));
            }
            out.extend(order.into_iter().map(|i| i as u32));
        }
    }
    Ok(RefIndex(array_from_vec(op, out, t.0.shape())?))
}

/// The position of the first maximum of each row, keeping the last dimension with size 1.
pub(super) fn argmax_last(t: &RefTensor) -> Result<RefIndex> {
    let op = "argmax_last";
    let shape = t.0.shape();
    let Some(&n) = shape.last() else {
        return Err(Error::shape(
            op,
            "needs a tensor of rank >= 1, got a scalar",
        ));
    };
    if n == 0 {
        return Err(Error::shape(
            op,
            format!("last dimension of {shape:?} is empty"),
        ));
    }
    if u32::try_from(n).is_err() {
        return Err(backend_err(op, format!("last dimension {n} exceeds u32")));
    }
    let data = row_major(&t.0);
    let out: Vec<u32> = data
        .chunks(n)
        .map(|row| {
            // The first maximum: only a strictly greater value moves it (NaN never does).
            let mut best = 0;
            for (j, &v) in row.iter().enumerate() {
                if v > row[best] {
                    best = j;
                }
            }
            best as u32
        })
        .collect();
    let mut out_shape = shape.to_vec();
    out_shape[shape.len() - 1] = 1;
    Ok(RefIndex(array_from_vec(op, out, &out_shape)?))
}
