//! Shared helpers: backend errors, element counts, and arrays from and to row-major data.

use collab_core::{Error, Result};
use ndarray::{ArrayD, IxDyn};

use super::NAME;

/// A backend error (not a shape error) for `op`.
pub(super) fn backend_err(op: &'static str, message: impl Into<String>) -> Error {
    Error::Backend {
        backend: NAME.to_string(),
        op,
        message: message.into(),
    }
}

/// The number of elements of `shape`, or a shape error if it overflows `usize`.
pub(super) fn element_count(op: &'static str, shape: &[usize]) -> Result<usize> {
    shape
        .iter()
        .try_fold(1usize, |acc, &d| acc.checked_mul(d))
        .ok_or_else(|| Error::shape(op, format!("shape {shape:?} has too many elements")))
}

/// An array of `shape` from row-major `data`, checking the element count.
pub(super) fn array_from_vec<T>(
    op: &'static str,
    data: Vec<T>,
    shape: &[usize],
) -> Result<ArrayD<T>> {
    let n = element_count(op, shape)?;
    if data.len() != n {
        return Err(Error::shape(
            op,
            format!(
                "{} values cannot fill shape {shape:?} ({n} elements)",
                data.len()
            ),
        ));
    }
    ArrayD::from_shape_vec(IxDyn(shape), data)
        .map_err(|e| Error::shape(op, format!("shape {shape:?}: {e}")))
}

/// The values of `a` in row-major (logical) order.
pub(super) fn row_major<T: Clone>(a: &ArrayD<T>) -> Vec<T> {
    a.iter().cloned().collect()
}
