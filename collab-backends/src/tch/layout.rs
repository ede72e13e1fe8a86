//! Creation, host transfer and layout primitives of the libtorch backend.
//!
//! Layout results (`reshape` of a contiguous tensor, `permute`, `narrow`) are libtorch views of
//! their input's storage; since no primitive writes in place, callers never observe the
//! sharing.

use collab_core::{Error, Result, shape};
use tch::{Kind, Tensor};

use super::TchBackend;
use super::tensor::{TchIndex, TchTensor, err, i64_dims};

impl TchBackend {
    /// A tensor of `shape` from row-major host values, on this backend's device.
    pub(super) fn tensor_from_vec(&self, data: &[f32], shape: &[usize]) -> Result<TchTensor> {
        shape::elements("from_vec", data.len(), shape, "values")?;
        let t = Tensor::f_from_slice(data)
            .and_then(|t| t.f_reshape(i64_dims(shape)))
            .and_then(|t| self.to_device(t))
            .map_err(err("from_vec"))?;
        Ok(TchTensor::new(t))
    }

    pub(super) fn zeros_impl(&self, shape: &[usize]) -> Result<TchTensor> {
        let t =
            Tensor::f_zeros(i64_dims(shape), (Kind::Float, self.device)).map_err(err("zeros"))?;
        Ok(TchTensor::new(t))
    }

    /// Moves a freshly built CPU tensor to this backend's device (no copy on the CPU).
    fn to_device(&self, t: Tensor) -> Result<Tensor, tch::TchError> {
        if self.device == tch::Device::Cpu {
            Ok(t)
        } else {
            t.f_to_device(self.device)
        }
    }

    pub(super) fn to_vec_impl(&self, t: &TchTensor) -> Result<Vec<f32>> {
        let n: usize = t.dims().iter().product();
        let mut out = vec![0f32; n];
        if n > 0 {
            t.get().f_copy_data(&mut out, n).map_err(err("to_vec"))?;
        }
        Ok(out)
    }

    pub(super) fn index_from_vec_impl(&self, data: &[u32], shape: &[usize]) -> Result<TchIndex> {
        shape::elements("index_from_vec", data.len(), shape, "indices")?;
        let limit = data.iter().max().map_or(0, |&m| u64::from(m) + 1);
        let wide: Vec<i64> = data.iter().map(|&i| i64::from(i)).collect();
        let t = Tensor::f_from_slice(&wide)
            .and_then(|t| t.f_reshape(i64_dims(shape)))
            .and_then(|t| self.to_device(t))
            .map_err(err("index_from_vec"))?;
        Ok(TchIndex::new(t, limit))
    }

    pub(super) fn index_to_vec_impl(&self, i: &TchIndex) -> Result<Vec<u32>> {
        let n: usize = i.dims().iter().product();
        let mut wide = vec![0i64; n];
        if n > 0 {
            i.get()
                .f_copy_data(&mut wide, n)
                .map_err(err("index_to_vec"))?;
        }
        // Every index is a u32 by construction (built from u32 values, or a position along
        // a dimension no longer than the ones built from them); check rather than truncate.
        wide.into_iter()
            .map(|v| {
                u32::try_from(v).map_err(|_| Error::Backend {
                    backend: super::tensor::BACKEND.into(),
                    op: "index_to_vec",
                    message: format!("index {v} is not a u32"),
                })
            })
            .collect()
    }

    pub(super) fn reshape_impl(&self, t: &TchTensor, shape: &[usize]) -> Result<TchTensor> {
        shape::reshape(t.dims(), shape)?;
        let r = t.get().f_reshape(i64_dims(shape)).map_err(err("reshape"))?;
        Ok(TchTensor::new(r))
    }

    pub(super) fn permute_impl(&self, t: &TchTensor, perm: &[usize]) -> Result<TchTensor> {
        shape::permute(t.dims(), perm)?;
        let r = t.get().f_permute(i64_dims(perm)).map_err(err("permute"))?;
        Ok(TchTensor::new(r))
    }

    pub(super) fn narrow_impl(
        &self,
        t: &TchTensor,
        dim: usize,
        start: usize,
        len: usize,
    ) -> Result<TchTensor> {
        shape::narrow("narrow", t.dims(), dim, start, len)?;
        let r = t
            .get()
            .f_narrow(dim as i64, start as i64, len as i64)
            .map_err(err("narrow"))?;
        Ok(TchTensor::new(r))
    }

    pub(super) fn index_narrow_impl(
        &self,
        i: &TchIndex,
        dim: usize,
        start: usize,
        len: usize,
    ) -> Result<TchIndex> {
        shape::narrow("index_narrow", i.dims(), dim, start, len)?;
        let r = i
            .get()
            .f_narrow(dim as i64, start as i64, len as i64)
            .map_err(err("index_narrow"))?;
        Ok(TchIndex::new(r, i.limit()))
    }

    pub(super) fn cat_impl(&self, ts: &[&TchTensor], dim: usize) -> Result<TchTensor> {
        shape::cat(ts.iter().map(|t| t.dims()), dim)?;
        let parts: Vec<Tensor> = ts.iter().map(|t| t.get()).collect();
        let r = Tensor::f_cat(&parts, dim as i64).map_err(err("cat"))?;
        Ok(TchTensor::new(r))
    }
}
