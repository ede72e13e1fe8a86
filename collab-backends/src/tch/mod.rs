//! The libtorch backend (feature `tch`): collab's primitives on libtorch 2.11 through tch 0.24,
//! on the CPU or a CUDA device.
//!
//! - Tensors are [`TchTensor`]s of libtorch kind `Float` (f32); indices are [`TchIndex`]es,
//!   `u32` at the API and `int64` inside (libtorch indexes with `int64`), converted at the host
//!   boundaries (`index_from_vec`, `index_to_vec`).
//! - Every shape an operation cannot take is rejected before libtorch runs, as an
//!   [`Error::Shape`] (the same checks as the candle backend); any other libtorch failure is an
//!   [`Error::Backend`] with `backend: "tch"`, the primitive's name and libtorch's message.
//!   Only fallible (`f_*`) tch calls are used, so nothing panics on bad input.
//! - No autograd graph is ever recorded (see [`TchTensor`]).
//! - `linear` is libtorch's fused `linear`, `attention` its `scaled_dot_product_attention`,
//!   `argsort_last` its stable sort; the rest maps one-to-one onto ATen operators.
//! - Threads: libtorch's intra-op pool (`OMP_NUM_THREADS`, else the physical cores).
//!
//! Building needs libtorch 2.11.0: `cargo xtask setup-libtorch` installs it and prints the
//! `LIBTORCH` and `LD_LIBRARY_PATH` a build and its test binaries need.

mod indexing;
mod layout;
mod math;
mod nn;
mod tensor;

#[cfg(test)]
mod tests;

use collab_core::{Backend, Error, Result};
use tch::{Cuda, Device, Tensor};

pub use tensor::{TchIndex, TchTensor};

/// Backend on libtorch tensors, on one device.
#[derive(Clone, Debug)]
pub struct TchBackend {
    device: Device,
}

impl TchBackend {
    /// The CPU backend.
    pub fn cpu() -> Self {
        Self {
            device: Device::Cpu,
        }
    }

    /// The backend on CUDA device `ordinal`.
    ///
    /// # Errors
    /// [`Error::Backend`] (op `cuda`) when libtorch has no CUDA support here (a CPU-only
    /// libtorch, no driver or no GPU) or when `ordinal` is not below the number of devices.
    pub fn cuda(ordinal: usize) -> Result<Self> {
        let unavailable = |message: String| Error::Backend {
            backend: tensor::BACKEND.into(),
            op: "cuda",
            message,
        };
        if !Cuda::is_available() {
            return Err(unavailable(
                "CUDA is not available to libtorch (no GPU or driver, or libtorch_cuda is not loaded)"
                    .into(),
            ));
        }
        let count = Cuda::device_count();
        if i64::try_from(ordinal).is_ok_and(|o| o < count) {
            Ok(Self {
                device: Device::Cuda(ordinal),
            })
        } else {
            Err(unavailable(format!(
                "no CUDA device {ordinal}: libtorch sees {count}"
            )))
        }
    }

    /// CUDA device 0 when libtorch can use it, else the CPU.
    pub fn cuda_if_available() -> Self {
        Self::cuda(0).unwrap_or_else(|_| Self::cpu())
    }

    /// The number of threads libtorch's CPU operations use (its intra-op pool).
    pub fn num_threads() -> usize {
        usize::try_from(tch::get_num_threads()).unwrap_or(1)
    }

    /// Whether this backend computes on a CUDA device.
    pub fn is_cuda(&self) -> bool {
        self.device.is_cuda()
    }
}

impl Default for TchBackend {
    fn default() -> Self {
        Self::cpu()
    }
}

impl Backend for TchBackend {
    type Tensor = TchTensor;
    type Index = TchIndex;
    type Device = Device;

    fn name(&self) -> String {
        match self.device {
            Device::Cuda(i) => format!("tch-cuda:{i}"),
            Device::Cpu => "tch-cpu".into(),
            other => format!("tch-{other:?}").to_lowercase(),
        }
    }

    fn device(&self) -> &Device {
        &self.device
    }

    fn synchronize(&self) -> Result<()> {
        if let Device::Cuda(i) = self.device {
            tch::Cuda::synchronize(i64::try_from(i).unwrap_or(i64::MAX));
        }
        Ok(())
    }

    fn from_vec(&self, data: Vec<f32>, shape: &[usize]) -> Result<TchTensor> {
        self.tensor_from_vec(&data, shape)
    }

    fn zeros(&self, shape: &[usize]) -> Result<TchTensor> {
        self.zeros_impl(shape)
    }

    fn to_vec(&self, t: &TchTensor) -> Result<Vec<f32>> {
        self.to_vec_impl(t)
    }

    fn dims(&self, t: &TchTensor) -> Vec<usize> {
        t.dims().to_vec()
    }

    fn index_from_vec(&self, data: Vec<u32>, shape: &[usize]) -> Result<TchIndex> {
        self.index_from_vec_impl(&data, shape)
    }

    fn index_to_vec(&self, i: &TchIndex) -> Result<Vec<u32>> {
        self.index_to_vec_impl(i)
    }

    fn index_dims(&self, i: &TchIndex) -> Vec<usize> {
        i.dims().to_vec()
    }

    fn reshape(&self, t: &TchTensor, shape: &[usize]) -> Result<TchTensor> {
        self.reshape_impl(t, shape)
    }

    fn permute(&self, t: &TchTensor, perm: &[usize]) -> Result<TchTensor> {
        self.permute_impl(t, perm)
    }

    fn narrow(&self, t: &TchTensor, dim: usize, start: usize, len: usize) -> Result<TchTensor> {
        self.narrow_impl(t, dim, start, len)
    }

    fn cat(&self, ts: &[&TchTensor], dim: usize) -> Result<TchTensor> {
        self.cat_impl(ts, dim)
    }

    fn index_narrow(&self, i: &TchIndex, dim: usize, start: usize, len: usize) -> Result<TchIndex> {
        self.index_narrow_impl(i, dim, start, len)
    }

    fn add(&self, a: &TchTensor, b: &TchTensor) -> Result<TchTensor> {
        self.binary("add", a, b, Tensor::f_add)
    }

    fn sub(&self, a: &TchTensor, b: &TchTensor) -> Result<TchTensor> {
        self.binary("sub", a, b, Tensor::f_sub)
    }

    fn mul(&self, a: &TchTensor, b: &TchTensor) -> Result<TchTensor> {
        self.binary("mul", a, b, Tensor::f_mul)
    }

    fn div(&self, a: &TchTensor, b: &TchTensor) -> Result<TchTensor> {
        self.binary("div", a, b, Tensor::f_div)
    }

    fn affine(&self, t: &TchTensor, mul: f32, add: f32) -> Result<TchTensor> {
        self.affine_impl(t, mul, add)
    }

    fn exp(&self, t: &TchTensor) -> Result<TchTensor> {
        self.unary("exp", t, Tensor::f_exp)
    }

    fn log(&self, t: &TchTensor) -> Result<TchTensor> {
        self.unary("log", t, Tensor::f_log)
    }

    fn sqrt(&self, t: &TchTensor) -> Result<TchTensor> {
        self.unary("sqrt", t, Tensor::f_sqrt)
    }

    fn tanh(&self, t: &TchTensor) -> Result<TchTensor> {
        self.unary("tanh", t, Tensor::f_tanh)
    }

    fn gelu_erf(&self, t: &TchTensor) -> Result<TchTensor> {
        self.unary("gelu_erf", t, math::gelu_erf)
    }

    fn silu(&self, t: &TchTensor) -> Result<TchTensor> {
        self.unary("silu", t, Tensor::f_silu)
    }

    fn sum_keepdim(&self, t: &TchTensor, dim: usize) -> Result<TchTensor> {
        self.reduce("sum_keepdim", t, dim, math::sum)
    }

    fn mean_keepdim(&self, t: &TchTensor, dim: usize) -> Result<TchTensor> {
        self.reduce("mean_keepdim", t, dim, math::mean)
    }

    fn max_keepdim(&self, t: &TchTensor, dim: usize) -> Result<TchTensor> {
        self.reduce("max_keepdim", t, dim, math::max)
    }

    fn matmul(&self, a: &TchTensor, b: &TchTensor) -> Result<TchTensor> {
        self.matmul_impl(a, b)
    }

    fn linear(&self, x: &TchTensor, w: &TchTensor, bias: Option<&TchTensor>) -> Result<TchTensor> {
        self.linear_impl(x, w, bias)
    }

    fn softmax_last(&self, x: &TchTensor, bias: Option<&TchTensor>) -> Result<TchTensor> {
        self.softmax_last_impl(x, bias)
    }

    fn layer_norm(
        &self,
        x: &TchTensor,
        gamma: &TchTensor,
        beta: &TchTensor,
        eps: f32,
    ) -> Result<TchTensor> {
        self.layer_norm_impl(x, gamma, beta, eps)
    }

    fn rms_norm(&self, x: &TchTensor, gamma: &TchTensor, eps: f32) -> Result<TchTensor> {
        self.rms_norm_impl(x, gamma, eps)
    }

    fn attention(
        &self,
        q: &TchTensor,
        k: &TchTensor,
        v: &TchTensor,
        scale: f32,
        bias: Option<&TchTensor>,
    ) -> Result<TchTensor> {
        self.attention_impl(q, k, v, scale, bias)
    }

    fn index_select(&self, t: &TchTensor, dim: usize, idx: &TchIndex) -> Result<TchTensor> {
        self.index_select_impl(t, dim, idx)
    }

    fn gather(&self, t: &TchTensor, dim: usize, idx: &TchIndex) -> Result<TchTensor> {
        self.gather_impl(t, dim, idx)
    }

    fn index_gather(&self, t: &TchIndex, dim: usize, idx: &TchIndex) -> Result<TchIndex> {
        self.index_gather_impl(t, dim, idx)
    }

    fn scatter_add(
        &self,
        t: &TchTensor,
        dim: usize,
        idx: &TchIndex,
        src: &TchTensor,
    ) -> Result<TchTensor> {
        self.scatter_add_impl(t, dim, idx, src)
    }

    fn argsort_last(&self, t: &TchTensor, descending: bool) -> Result<TchIndex> {
        self.argsort_last_impl(t, descending)
    }

    fn argmax_last(&self, t: &TchTensor) -> Result<TchIndex> {
        self.argmax_last_impl(t)
    }
}
