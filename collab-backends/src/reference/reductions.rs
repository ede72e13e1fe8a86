//! The keepdim reductions.

use collab_core::{Error, Result, shape};
use ndarray::Axis;

use super::RefTensor;

/// A reduction over `dim`, keeping it with size 1.
pub(super) fn reduce(
    op: &'static str,
    t: &RefTensor,
    dim: usize,
    f: impl Fn(&[f64]) -> f64,
) -> Result<RefTensor> {
    shape::check_dim(op, t.0.shape(), dim)?;
    let out = t.0.map_axis(Axis(dim), |lane| f(&lane.to_vec()));
    Ok(RefTensor(out.insert_axis(Axis(dim))))
}

/// The maximum over `dim`, keeping it with size 1; NaN propagates.
pub(super) fn max_keepdim(t: &RefTensor, dim: usize) -> Result<RefTensor> {
    let op = "max_keepdim";
    shape::check_dim(op, t.0.shape(), dim)?;
    if t.0.shape()[dim] == 0 {
        return Err(Error::shape(
            op,
            format!("dimension {dim} of {:?} is empty", t.0.shape()),
        ));
    }
    // NaN propagates: the maximum of a lane holding NaN is NaN.
    reduce(op, t, dim, |v| {
        v.iter().copied().fold(f64::NEG_INFINITY, |m, x| {
            if x.is_nan() || m.is_nan() {
                f64::NAN
            } else {
                m.max(x)
            }
        })
    })
}
