//! The element-wise maps: broadcasting binary operations and unary functions.

use collab_core::{Error, Result, shape};
use ndarray::{IxDyn, Zip};

use super::RefTensor;

/// An element-wise binary operation with NumPy broadcasting.
pub(super) fn binary(
    op: &'static str,
    a: &RefTensor,
    b: &RefTensor,
    f: impl Fn(f64, f64) -> f64,
) -> Result<RefTensor> {
    let out = shape::broadcast(op, a.0.shape(), b.0.shape())?;
    let mismatch = || {
        Error::shape(
            op,
            format!(
                "shapes {:?} and {:?} do not broadcast",
                a.0.shape(),
                b.0.shape()
            ),
        )
    };
    let av = a.0.broadcast(IxDyn(&out)).ok_or_else(mismatch)?;
    let bv = b.0.broadcast(IxDyn(&out)).ok_or_else(mismatch)?;
    Ok(RefTensor(
        Zip::from(&av).and(&bv).map_collect(|&x, &y| f(x, y)),
    ))
}

/// An element-wise unary operation.
pub(super) fn unary(t: &RefTensor, f: impl Fn(f64) -> f64) -> Result<RefTensor> {
    Ok(RefTensor(t.0.mapv(f)))
}
