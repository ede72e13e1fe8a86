//! Indexing primitives of the libtorch backend: `index_select`, `gather`, `scatter_add`,
//! `argsort_last` (libtorch's stable sort) and `argmax_last`.
//!
//! Every index is checked against the dimension it indexes before libtorch sees it (from the
//! index's known bound, reading its maximum only when that bound does not decide), so an
//! index out of range is an [`Error::Shape`] on every device, never a CUDA device-side assert.

use collab_core::{Error, Result, shape};
use tch::Tensor;

use super::TchBackend;
use super::tensor::{TchIndex, TchTensor, err};

/// Checks that every index in `idx` is below `bound`.
fn check_indices(op: &'static str, idx: &TchIndex, bound: usize) -> Result<()> {
    if idx.limit() <= bound as u64 || idx.dims().contains(&0) {
        return Ok(());
    }
    let max = idx
        .get()
        .f_max()
        .and_then(|m| m.f_int64_value(&[]))
        .map_err(err(op))?;
    if usize::try_from(max).is_ok_and(|m| m < bound) {
        Ok(())
    } else {
        Err(Error::shape(
            op,
            format!("index {max} out of range for a dimension of size {bound}"),
        ))
    }
}

/// Validates a gather/scatter index against the indexed tensor's dims: the same rank, no
/// larger outside `dim`, every value below `dims[dim]`.
fn check_gather(op: &'static str, dims: &[usize], dim: usize, idx: &TchIndex) -> Result<()> {
    shape::gather_index(op, dims, dim, idx.dims())?;
    check_indices(op, idx, dims[dim])
}

impl TchBackend {
    pub(super) fn index_select_impl(
        &self,
        t: &TchTensor,
        dim: usize,
        idx: &TchIndex,
    ) -> Result<TchTensor> {
        shape::check_dim("index_select", t.dims(), dim)?;
        if idx.dims().len() != 1 {
            return Err(Error::shape(
                "index_select",
                format!("indices must be 1-D, got {:?}", idx.dims()),
            ));
        }
        check_indices("index_select", idx, t.dims()[dim])?;
        let r = t
            .get()
            .f_index_select(dim as i64, &idx.get())
            .map_err(err("index_select"))?;
        Ok(TchTensor::new(r))
    }

    pub(super) fn gather_impl(
        &self,
        t: &TchTensor,
        dim: usize,
        idx: &TchIndex,
    ) -> Result<TchTensor> {
        check_gather("gather", t.dims(), dim, idx)?;
        let r = gather(&t.get(), dim, &idx.get()).map_err(err("gather"))?;
        Ok(TchTensor::new(r))
    }

    pub(super) fn index_gather_impl(
        &self,
        t: &TchIndex,
        dim: usize,
        idx: &TchIndex,
    ) -> Result<TchIndex> {
        check_gather("index_gather", t.dims(), dim, idx)?;
        let r = gather(&t.get(), dim, &idx.get()).map_err(err("index_gather"))?;
        // The values are some of `t`'s, so `t`'s bound holds.
        Ok(TchIndex::new(r, t.limit()))
    }

    pub(super) fn scatter_add_impl(
        &self,
        t: &TchTensor,
        dim: usize,
        idx: &TchIndex,
        src: &TchTensor,
    ) -> Result<TchTensor> {
        let (td, sd) = (t.dims(), src.dims());
        if idx.dims() != sd {
            return Err(Error::shape(
                "scatter_add",
                format!("indices {:?} and source {sd:?} differ", idx.dims()),
            ));
        }
        check_gather("scatter_add", td, dim, idx)?;
        if (0..td.len()).any(|d| d != dim && sd[d] != td[d]) {
            return Err(Error::shape(
                "scatter_add",
                format!("src {sd:?} must equal t {td:?} outside dim {dim}"),
            ));
        }
        let r = t
            .get()
            .f_scatter_add(dim as i64, &idx.get(), &src.get())
            .map_err(err("scatter_add"))?;
        Ok(TchTensor::new(r))
    }

    pub(super) fn argsort_last_impl(&self, t: &TchTensor, descending: bool) -> Result<TchIndex> {
        let n = *t
            .dims()
            .last()
            .ok_or_else(|| Error::shape("argsort_last", "a scalar has no last dim"))?;
        let (_, order) = t
            .get()
            .f_sort_stable(true, -1, descending)
            .map_err(err("argsort_last"))?;
        Ok(TchIndex::new(order, n as u64))
    }

    pub(super) fn argmax_last_impl(&self, t: &TchTensor) -> Result<TchIndex> {
        let n = *t
            .dims()
            .last()
            .ok_or_else(|| Error::shape("argmax_last", "a scalar has no last dim"))?;
        let r = t.get().f_argmax(-1, true).map_err(err("argmax_last"))?;
        Ok(TchIndex::new(r, n as u64))
    }
}

/// libtorch's gather (no sparse gradient).
fn gather(t: &Tensor, dim: usize, idx: &Tensor) -> Result<Tensor, tch::TchError> {
    t.f_gather(dim as i64, idx, false)
}
