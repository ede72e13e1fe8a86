//! The f64 reference backend: the oracle every other backend is checked against.
//!
//! [`ReferenceBackend`] implements every primitive of [`Backend`] on [`ndarray`] arrays of
//! `f64`, in the most obviously correct way: inputs are widened from `f32` once
//! ([`Backend::from_vec`]), everything is computed in `f64`, and values are narrowed back only
//! when they leave the backend ([`Backend::to_vec`]). Clarity wins over speed everywhere except
//! in [`Backend::matmul`], which multiplies 2-D views with ndarray's `dot` so that a real model
//! forward (a ViT-Tiny on a batch of 8) takes seconds.
//!
//! Every argument is validated: a shape the operation cannot take is an
//! [`Error::Shape`], an index value out of range is an [`Error::Backend`]; nothing panics.
//!
//! The conformance suite ([`crate::conformance`]) runs each primitive on a backend under test
//! and on this backend, and compares the results.
//!
//! [`Error::Shape`]: collab_core::Error::Shape
//! [`Error::Backend`]: collab_core::Error::Backend

mod elementwise;
pub(crate) mod erf;
mod indexing;
mod layout;
mod matmul;
mod nn;
mod reductions;
mod shapes;

#[cfg(test)]
mod tests;

use collab_core::{Backend, Result};
use ndarray::ArrayD;

use self::elementwise::{binary, unary};
pub use self::erf::{erf, erfc};
use self::shapes::{array_from_vec, element_count, row_major};

/// The name reported by [`ReferenceBackend::name`].
pub const NAME: &str = "reference-f64";

/// The device of the reference backend: the host CPU, computing in `f64`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CpuF64;

/// A dense tensor of the reference backend: an n-dimensional array of `f64`.
#[derive(Clone, Debug, PartialEq)]
pub struct RefTensor(ArrayD<f64>);

impl RefTensor {
    /// Wraps an array.
    pub fn new(array: ArrayD<f64>) -> Self {
        Self(array)
    }

    /// The values, in `f64`.
    pub fn array(&self) -> &ArrayD<f64> {
        &self.0
    }

    /// The array, consuming the tensor.
    pub fn into_array(self) -> ArrayD<f64> {
        self.0
    }
}

/// A dense index tensor of the reference backend: an n-dimensional array of `u32`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RefIndex(ArrayD<u32>);

impl RefIndex {
    /// Wraps an array.
    pub fn new(array: ArrayD<u32>) -> Self {
        Self(array)
    }

    /// The indices.
    pub fn array(&self) -> &ArrayD<u32> {
        &self.0
    }

    /// The array, consuming the index tensor.
    pub fn into_array(self) -> ArrayD<u32> {
        self.0
    }
}

/// The f64 oracle backend (see the [module documentation](self)).
#[derive(Clone, Debug, Default)]
pub struct ReferenceBackend {
    device: CpuF64,
}

impl ReferenceBackend {
    /// A reference backend on the host CPU.
    pub fn new() -> Self {
        Self { device: CpuF64 }
    }
}

impl Backend for ReferenceBackend {
    type Tensor = RefTensor;
    type Index = RefIndex;
    type Device = CpuF64;

    fn name(&self) -> String {
        NAME.to_string()
    }

    fn device(&self) -> &CpuF64 {
        &self.device
    }

    // ----- creation and host transfer -----

    fn from_vec(&self, data: Vec<f32>, shape: &[usize]) -> Result<RefTensor> {
        let data = data.into_iter().map(f64::from).collect();
        Ok(RefTensor(array_from_vec("from_vec", data, shape)?))
    }

    fn zeros(&self, shape: &[usize]) -> Result<RefTensor> {
        let n = element_count("zeros", shape)?;
        Ok(RefTensor(array_from_vec("zeros", vec![0.0; n], shape)?))
    }

    fn to_vec(&self, t: &RefTensor) -> Result<Vec<f32>> {
        // Narrowing to f32 is the point of this conversion.
        #[allow(clippy::cast_possible_truncation)]
        Ok(t.0.iter().map(|&x| x as f32).collect())
    }

    fn dims(&self, t: &RefTensor) -> Vec<usize> {
        t.0.shape().to_vec()
    }

    fn index_from_vec(&self, data: Vec<u32>, shape: &[usize]) -> Result<RefIndex> {
        Ok(RefIndex(array_from_vec("index_from_vec", data, shape)?))
    }

    fn index_to_vec(&self, i: &RefIndex) -> Result<Vec<u32>> {
        Ok(row_major(&i.0))
    }

    fn index_dims(&self, i: &RefIndex) -> Vec<usize> {
        i.0.shape().to_vec()
    }

    // ----- layout -----

    fn reshape(&self, t: &RefTensor, shape: &[usize]) -> Result<RefTensor> {
        Ok(RefTensor(layout::reshape_array("reshape", &t.0, shape)?))
    }

    fn permute(&self, t: &RefTensor, perm: &[usize]) -> Result<RefTensor> {
        layout::permute(t, perm)
    }

    fn narrow(&self, t: &RefTensor, dim: usize, start: usize, len: usize) -> Result<RefTensor> {
        Ok(RefTensor(layout::narrow_array(
            "narrow", &t.0, dim, start, len,
        )?))
    }

    fn cat(&self, ts: &[&RefTensor], dim: usize) -> Result<RefTensor> {
        layout::cat(ts, dim)
    }

    fn index_narrow(&self, i: &RefIndex, dim: usize, start: usize, len: usize) -> Result<RefIndex> {
        Ok(RefIndex(layout::narrow_array(
            "index_narrow",
            &i.0,
            dim,
            start,
            len,
        )?))
    }

    // ----- element-wise arithmetic -----

    fn add(&self, a: &RefTensor, b: &RefTensor) -> Result<RefTensor> {
        binary("add", a, b, |x, y| x + y)
    }

    fn sub(&self, a: &RefTensor, b: &RefTensor) -> Result<RefTensor> {
        binary("sub", a, b, |x, y| x - y)
    }

    fn mul(&self, a: &RefTensor, b: &RefTensor) -> Result<RefTensor> {
        binary("mul", a, b, |x, y| x * y)
    }

    fn div(&self, a: &RefTensor, b: &RefTensor) -> Result<RefTensor> {
        binary("div", a, b, |x, y| x / y)
    }

    fn affine(&self, t: &RefTensor, mul: f32, add: f32) -> Result<RefTensor> {
        let (m, a) = (f64::from(mul), f64::from(add));
        unary(t, |x| x * m + a)
    }

    fn exp(&self, t: &RefTensor) -> Result<RefTensor> {
        unary(t, f64::exp)
    }

    fn log(&self, t: &RefTensor) -> Result<RefTensor> {
        unary(t, f64::ln)
    }

    fn sqrt(&self, t: &RefTensor) -> Result<RefTensor> {
        unary(t, f64::sqrt)
    }

    fn tanh(&self, t: &RefTensor) -> Result<RefTensor> {
        unary(t, f64::tanh)
    }

    fn gelu_erf(&self, t: &RefTensor) -> Result<RefTensor> {
        unary(t, erf::gelu)
    }

    fn silu(&self, t: &RefTensor) -> Result<RefTensor> {
        unary(t, |x| x / (1.0 + (-x).exp()))
    }

    // ----- reductions -----

    fn sum_keepdim(&self, t: &RefTensor, dim: usize) -> Result<RefTensor> {
        reductions::reduce("sum_keepdim", t, dim, |v| v.iter().sum())
    }

    fn mean_keepdim(&self, t: &RefTensor, dim: usize) -> Result<RefTensor> {
        reductions::reduce("mean_keepdim", t, dim, |v| {
            v.iter().sum::<f64>() / v.len() as f64
        })
    }

    fn max_keepdim(&self, t: &RefTensor, dim: usize) -> Result<RefTensor> {
        reductions::max_keepdim(t, dim)
    }

    // ----- linear algebra -----

    fn matmul(&self, a: &RefTensor, b: &RefTensor) -> Result<RefTensor> {
        matmul::matmul(a, b)
    }

    // ----- neural-network primitives -----

    fn softmax_last(&self, x: &RefTensor, bias: Option<&RefTensor>) -> Result<RefTensor> {
        nn::softmax_last(self, x, bias)
    }

    fn layer_norm(
        &self,
        x: &RefTensor,
        gamma: &RefTensor,
        beta: &RefTensor,
        eps: f32,
    ) -> Result<RefTensor> {
        nn::layer_norm(x, gamma, beta, eps)
    }

    fn rms_norm(&self, x: &RefTensor, gamma: &RefTensor, eps: f32) -> Result<RefTensor> {
        nn::rms_norm(x, gamma, eps)
    }

    fn attention(
        &self,
        q: &RefTensor,
        k: &RefTensor,
        v: &RefTensor,
        scale: f32,
        bias: Option<&RefTensor>,
    ) -> Result<RefTensor> {
        nn::attention(self, q, k, v, scale, bias)
    }

    // ----- indexing -----

    fn index_select(&self, t: &RefTensor, dim: usize, idx: &RefIndex) -> Result<RefTensor> {
        indexing::index_select(t, dim, idx)
    }

    fn gather(&self, t: &RefTensor, dim: usize, idx: &RefIndex) -> Result<RefTensor> {
        Ok(RefTensor(indexing::gather_array(
            "gather", &t.0, dim, &idx.0,
        )?))
    }

    fn index_gather(&self, t: &RefIndex, dim: usize, idx: &RefIndex) -> Result<RefIndex> {
        Ok(RefIndex(indexing::gather_array(
            "index_gather",
            &t.0,
            dim,
            &idx.0,
        )?))
    }

    fn scatter_add(
        &self,
        t: &RefTensor,
        dim: usize,
        idx: &RefIndex,
        src: &RefTensor,
    ) -> Result<RefTensor> {
        indexing::scatter_add(t, dim, idx, src)
    }

    fn argsort_last(&self, t: &RefTensor, descending: bool) -> Result<RefIndex> {
        indexing::argsort_last(t, descending)
    }

    fn argmax_last(&self, t: &RefTensor) -> Result<RefIndex> {
        indexing::argmax_last(t)
    }
}
