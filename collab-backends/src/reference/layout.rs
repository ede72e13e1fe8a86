//! The layout primitives: reshape, permute, narrow and cat.

use collab_core::{Error, Result, shape};
use ndarray::{ArrayD, Axis, IxDyn, Slice};

use super::RefTensor;
use super::shapes::{array_from_vec, element_count, row_major};

/// `a` under another shape with the same number of elements (row-major order).
pub(super) fn reshape_array<T: Clone>(
    op: &'static str,
    a: &ArrayD<T>,
    shape: &[usize],
) -> Result<ArrayD<T>> {
    let n = element_count(op, shape)?;
    if n != a.len() {
        return Err(Error::shape(
            op,
            format!(
                "cannot reshape {:?} ({} elements) to {shape:?} ({n} elements)",
                a.shape(),
                a.len()
            ),
        ));
    }
    array_from_vec(op, row_major(a), shape)
}

/// The slice `start..start + len` of dimension `dim` of `a`, as a new array.
pub(super) fn narrow_array<T: Clone>(
    op: &'static str,
    a: &ArrayD<T>,
    dim: usize,
    start: usize,
    len: usize,
) -> Result<ArrayD<T>> {
    shape::check_dim(op, a.shape(), dim)?;
    let size = a.shape()[dim];
    match start.checked_add(len) {
        Some(end) if end <= size => Ok(a.slice_axis(Axis(dim), Slice::from(start..end)).to_owned()),
        _ => Err(Error::shape(
            op,
            format!(
                "slice {start}..{start}+{len} out of range for dimension {dim} of shape {:?}",
                a.shape()
            ),
        )),
    }
}

/// `t` with its dimensions reordered by `perm`, as a new (row-major) array.
pub(super) fn permute(t: &RefTensor, perm: &[usize]) -> Result<RefTensor> {
    let rank = t.0.ndim();
    let mut seen = vec![false; rank];
    let valid = perm.len() == rank
        && perm
            .iter()
            .all(|&p| p < rank && !std::mem::replace(&mut seen[p], true));
    if !valid {
        return Err(Error::shape(
            "permute",
            format!(
                "{perm:?} is not a permutation of the {rank} dimensions of {:?}",
                t.0.shape()
            ),
        ));
    }
    let permuted = t.0.clone().permuted_axes(IxDyn(perm));
    Ok(RefTensor(permuted.as_standard_layout().into_owned()))
}

/// The tensors `ts` joined along `dim`; they must agree in every other dimension.
pub(super) fn cat(ts: &[&RefTensor], dim: usize) -> Result<RefTensor> {
    let op = "cat";
    let Some(first) = ts.first() else {
        return Err(Error::shape(op, "needs at least one tensor"));
    };
    let s0 = first.0.shape();
    shape::check_dim(op, s0, dim)?;
    for t in ts {
        let s = t.0.shape();
        let agree = s.len() == s0.len()
            && s.iter()
                .zip(s0)
                .enumerate()
                .all(|(d, (a, b))| d == dim || a == b);
        if !agree {
            let shapes: Vec<_> = ts.iter().map(|t| t.0.shape().to_vec()).collect();
            return Err(Error::shape(
                op,
                format!("shapes {shapes:?} differ outside dimension {dim}"),
            ));
        }
    }
    let views: Vec<_> = ts.iter().map(|t| t.0.view()).collect();
    ndarray::concatenate(Axis(dim), &views)
        .map(RefTensor)
        .map_err(|e| Error::shape(op, e.to_string()))
}
