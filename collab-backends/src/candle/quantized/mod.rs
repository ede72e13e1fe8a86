//! The device backend for ARM boards and phones (feature `arm`): candle on the CPU with
//! linear-layer weights quantised to 8 or 4 bits.
//!
//! [`QuantizedCandleBackend`] is [`CandleBackend::cpu`] for every primitive, except that
//! [`Backend::linear_weight`] packs each linear-layer weight `[out, in]` into one of candle's
//! block formats ([`WeightBits::Q8`]: Q8_0, 8.5 bits per weight; [`WeightBits::Q4`]: Q4_0,
//! 4.5 bits per weight) and [`Backend::linear`] then runs candle's quantised matmul
//! (`QMatMul`) on it. On aarch64 those kernels use NEON (and `dotprod`/`i8mm` where the CPU
//! has them); on x86_64 AVX2. [`WeightBits::F32`] packs nothing, so the same type also gives
//! an `f32` baseline.
//!
//! # Precision
//!
//! - A weight's value is its block's f16 scale times a small integer: Q8_0 rounds each weight
//!   to 1/127 of its block's largest magnitude, Q4_0 to 1/8 of it.
//! - candle's CPU quantised matmul also quantises the *activations* `x` to Q8_0 (blocks of 32
//!   along `k`) before the integer dot products, so `linear` with a packed weight carries that
//!   rounding too. Everything else (and `linear` with a dense weight) is exact `f32` as in
//!   [`CandleBackend`].
//! - A weight whose input dim is not a multiple of the block size (32) stays dense `f32`
//!   (counted as such in [`WeightMemory`]); so does one with a zero dim.
//!
//! The tolerances the conformance suite holds each precision to are in the crate README and in
//! `collab-backends/tests/conformance.rs`.
//!
//! # Packed weights elsewhere
//!
//! A packed weight is a [`QuantTensor::Packed`] and still behaves as a tensor of its quantised
//! values in every primitive: anywhere other than as the `w` of `linear` it is dequantised on
//! the fly (correct, slower, and the dense copy is dropped after the call).
//!
//! # Memory
//!
//! [`QuantTensor::storage_bytes`] is what one value holds; [`QuantizedCandleBackend::memory`]
//! sums what the backend created from host data (take it right after loading a model). On CPUs
//! where candle's kernels interleave packed weights (aarch64 with `dotprod`/`i8mm`), candle
//! keeps that copy beside the blocks after a weight's first use, which doubles its resident
//! size; [`WeightMemory::interleaved_bytes`] reports it separately.

mod memory;
mod tensor;
#[cfg(test)]
mod tests;

use std::sync::Arc;

use candle_core::quantized::{GgmlDType, QMatMul};
use candle_core::{Device, Module, Tensor};
use collab_core::{Backend, Error, Result};

pub use memory::{WeightMemory, megabytes};
pub use tensor::{PackedWeight, QuantTensor};

use super::CandleBackend;
use memory::Ledger;
use tensor::err;

/// The precision of linear-layer weights.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum WeightBits {
    /// Dense `f32` (nothing packed): the baseline.
    F32,
    /// candle's Q8_0: blocks of 32 `i8` with one f16 scale (8.5 bits per weight).
    Q8,
    /// candle's Q4_0: blocks of 32 4-bit values with one f16 scale (4.5 bits per weight).
    Q4,
}

impl WeightBits {
    /// Every precision, widest first.
    pub const ALL: [Self; 3] = [Self::F32, Self::Q8, Self::Q4];

    /// `f32`, `q8` or `q4`.
    pub fn label(self) -> &'static str {
        match self {
            Self::F32 => "f32",
            Self::Q8 => "q8",
            Self::Q4 => "q4",
        }
    }

    /// The candle block format, `None` for `f32`.
    pub fn ggml_dtype(self) -> Option<GgmlDType> {
        match self {
            Self::F32 => None,
            Self::Q8 => Some(GgmlDType::Q8_0),
            Self::Q4 => Some(GgmlDType::Q4_0),
        }
    }

    /// Parses a [`WeightBits::label`].
    ///
    /// # Errors
    /// [`Error::Config`] naming the accepted labels.
    pub fn parse(s: &str) -> Result<Self> {
        Self::ALL
            .into_iter()
            .find(|b| b.label() == s)
            .ok_or_else(|| Error::Config(format!("unknown weight precision `{s}` (f32, q8, q4)")))
    }
}

/// candle CPU with quantised linear-layer weights (see the [module docs](self)).
///
/// Clones share the weight-memory ledger.
#[derive(Clone, Debug)]
pub struct QuantizedCandleBackend {
    inner: CandleBackend,
    bits: WeightBits,
    ledger: Arc<Ledger>,
}

impl QuantizedCandleBackend {
    /// The backend packing linear weights at `bits`; named `arm-f32`, `arm-q8` or `arm-q4`.
    pub fn new(bits: WeightBits) -> Self {
        Self {
            inner: CandleBackend::cpu(),
            bits,
            ledger: Arc::default(),
        }
    }

    /// The precision of linear-layer weights.
    pub fn bits(&self) -> WeightBits {
        self.bits
    }

    /// The dense backend every primitive other than a packed `linear` runs on.
    pub fn dense_backend(&self) -> &CandleBackend {
        &self.inner
    }

    /// Bytes held by the tensors this backend (and its clones) created with `from_vec` and
    /// `linear_weight` since it was made or last [reset](Self::reset_memory). Taken right
    /// after loading a model (before any input is built) it is the model's weight memory.
    pub fn memory(&self) -> WeightMemory {
        self.ledger.snapshot()
    }

    /// Sets the counts of [`QuantizedCandleBackend::memory`] back to zero.
    pub fn reset_memory(&self) {
        self.ledger.reset();
    }

    fn map1(
        &self,
        t: &QuantTensor,
        f: impl FnOnce(&CandleBackend, &Tensor) -> Result<Tensor>,
    ) -> Result<QuantTensor> {
        let t = t.dense()?;
        f(&self.inner, &t).map(QuantTensor::Dense)
    }

    fn map2(
        &self,
        a: &QuantTensor,
        b: &QuantTensor,
        f: impl FnOnce(&CandleBackend, &Tensor, &Tensor) -> Result<Tensor>,
    ) -> Result<QuantTensor> {
        let (a, b) = (a.dense()?, b.dense()?);
        f(&self.inner, &a, &b).map(QuantTensor::Dense)
    }

    /// `x w^T (+ bias)` on candle's quantised matmul.
    fn packed_linear(&self, x: &Tensor, w: &PackedWeight, bias: Option<&Tensor>) -> Result<Tensor> {
        let [out, inp] = w.dims();
        let xd = x.dims();
        let fits =
            xd.len() >= 2 && xd[xd.len() - 1] == inp && bias.is_none_or(|b| b.dims() == [out]);
        if !fits {
            return Err(Error::shape(
                "linear",
                format!(
                    "x {xd:?}, w [{out}, {inp}], bias {:?} are not [.., k], [n, k], [n]",
                    bias.map(Tensor::dims)
                ),
            ));
        }
        let x = x.contiguous().map_err(err("linear"))?;
        // The variant directly, not `QMatMul::from_arc`, which dequantises everything when
        // CANDLE_DEQUANTIZE_ALL is set.
        let y = QMatMul::QTensor(Arc::clone(w.qtensor()))
            .forward(&x)
            .map_err(err("linear"))?;
        match bias {
            Some(b) => self.inner.add(&y, b),
            None => Ok(y),
        }
    }
}

macro_rules! unary {
    ($($name:ident),* $(,)?) => {
        $(
            fn $name(&self, t: &QuantTensor) -> Result<QuantTensor> {
                self.map1(t, |b, t| b.$name(t))
            }
        )*
    };
}

macro_rules! binary {
    ($($name:ident),* $(,)?) => {
        $(
            fn $name(&self, a: &QuantTensor, c: &QuantTensor) -> Result<QuantTensor> {
                self.map2(a, c, |b, a, c| b.$name(a, c))
            }
        )*
    };
}

macro_rules! keepdim {
    ($($name:ident),* $(,)?) => {
        $(
            fn $name(&self, t: &QuantTensor, dim: usize) -> Result<QuantTensor> {
                self.map1(t, |b, t| b.$name(t, dim))
            }
        )*
    };
}

impl Backend for QuantizedCandleBackend {
    type Tensor = QuantTensor;
    type Index = Tensor;
    type Device = Device;

    fn name(&self) -> String {
        format!("arm-{}", self.bits.label())
    }

    fn device(&self) -> &Device {
        self.inner.device()
    }

    fn synchronize(&self) -> Result<()> {
        self.inner.synchronize()
    }

    fn from_vec(&self, data: Vec<f32>, shape: &[usize]) -> Result<QuantTensor> {
        let t = self.inner.from_vec(data, shape)?;
        self.ledger.other(t.elem_count() * 4);
        Ok(QuantTensor::Dense(t))
    }

    fn zeros(&self, shape: &[usize]) -> Result<QuantTensor> {
        self.inner.zeros(shape).map(QuantTensor::Dense)
    }

    fn to_vec(&self, t: &QuantTensor) -> Result<Vec<f32>> {
        self.inner.to_vec(&*t.dense()?)
    }

    fn dims(&self, t: &QuantTensor) -> Vec<usize> {
        t.dims()
    }

    fn index_from_vec(&self, data: Vec<u32>, shape: &[usize]) -> Result<Tensor> {
        self.inner.index_from_vec(data, shape)
    }

    fn index_to_vec(&self, i: &Tensor) -> Result<Vec<u32>> {
        self.inner.index_to_vec(i)
    }

    fn index_dims(&self, i: &Tensor) -> Vec<usize> {
        self.inner.index_dims(i)
    }

    fn reshape(&self, t: &QuantTensor, shape: &[usize]) -> Result<QuantTensor> {
        self.map1(t, |b, t| b.reshape(t, shape))
    }

    fn permute(&self, t: &QuantTensor, perm: &[usize]) -> Result<QuantTensor> {
        self.map1(t, |b, t| b.permute(t, perm))
    }

    fn narrow(&self, t: &QuantTensor, dim: usize, start: usize, len: usize) -> Result<QuantTensor> {
        self.map1(t, |b, t| b.narrow(t, dim, start, len))
    }

    fn cat(&self, ts: &[&QuantTensor], dim: usize) -> Result<QuantTensor> {
        let dense = ts.iter().map(|t| t.dense()).collect::<Result<Vec<_>>>()?;
        let refs: Vec<&Tensor> = dense.iter().map(|t| t.as_ref()).collect();
        self.inner.cat(&refs, dim).map(QuantTensor::Dense)
    }

    fn index_narrow(&self, i: &Tensor, dim: usize, start: usize, len: usize) -> Result<Tensor> {
        self.inner.index_narrow(i, dim, start, len)
    }

    binary!(add, sub, mul, div, matmul);

    fn affine(&self, t: &QuantTensor, mul: f32, add: f32) -> Result<QuantTensor> {
        self.map1(t, |b, t| b.affine(t, mul, add))
    }

    unary!(exp, log, sqrt, tanh, gelu_erf, silu);

    keepdim!(sum_keepdim, mean_keepdim, max_keepdim);

    fn linear(
        &self,
        x: &QuantTensor,
        w: &QuantTensor,
        bias: Option<&QuantTensor>,
    ) -> Result<QuantTensor> {
        let x = x.dense()?;
        let bias = bias.map(QuantTensor::dense).transpose()?;
        let y = match w {
            QuantTensor::Dense(w) => self.inner.linear(&x, w, bias.as_deref())?,
            QuantTensor::Packed(p) => self.packed_linear(&x, p, bias.as_deref())?,
        };
        Ok(QuantTensor::Dense(y))
    }

    /// Packs `[out, in]` at this backend's precision when `in` is a multiple of 32 (and no dim
    /// is zero); otherwise, and in `f32` mode, a dense tensor.
    fn linear_weight(&self, data: Vec<f32>, shape: &[usize]) -> Result<QuantTensor> {
        let &[out, inp] = shape else {
            return Err(Error::shape(
                "linear_weight",
                format!("a linear weight must be [out, in], got {shape:?}"),
            ));
        };
        let dense = self.inner.from_vec(data, shape)?;
        let packable = |dt: GgmlDType| out > 0 && inp > 0 && inp.is_multiple_of(dt.block_size());
        let t = match self.bits.ggml_dtype() {
            Some(dt) if packable(dt) => QuantTensor::Packed(PackedWeight::quantize(&dense, dt)?),
            _ => QuantTensor::Dense(dense),
        };
        let interleaved = match &t {
            QuantTensor::Packed(p) => p.interleaved_copy_bytes(),
            QuantTensor::Dense(_) => 0,
        };
        self.ledger
            .linear(out * inp, t.storage_bytes(), interleaved, t.is_packed());
        Ok(t)
    }

    fn softmax_last(&self, x: &QuantTensor, bias: Option<&QuantTensor>) -> Result<QuantTensor> {
        let x = x.dense()?;
        let bias = bias.map(QuantTensor::dense).transpose()?;
        self.inner
            .softmax_last(&x, bias.as_deref())
            .map(QuantTensor::Dense)
    }

    fn layer_norm(
        &self,
        x: &QuantTensor,
        gamma: &QuantTensor,
        beta: &QuantTensor,
        eps: f32,
    ) -> Result<QuantTensor> {
        let (x, g, b) = (x.dense()?, gamma.dense()?, beta.dense()?);
        self.inner
            .layer_norm(&x, &g, &b, eps)
            .map(QuantTensor::Dense)
    }

    fn rms_norm(&self, x: &QuantTensor, gamma: &QuantTensor, eps: f32) -> Result<QuantTensor> {
        self.map2(x, gamma, |b, x, g| b.rms_norm(x, g, eps))
    }

    fn attention(
        &self,
        q: &QuantTensor,
        k: &QuantTensor,
        v: &QuantTensor,
        scale: f32,
        bias: Option<&QuantTensor>,
    ) -> Result<QuantTensor> {
        let (q, k, v) = (q.dense()?, k.dense()?, v.dense()?);
        let bias = bias.map(QuantTensor::dense).transpose()?;
        self.inner
            .attention(&q, &k, &v, scale, bias.as_deref())
            .map(QuantTensor::Dense)
    }

    fn index_select(&self, t: &QuantTensor, dim: usize, idx: &Tensor) -> Result<QuantTensor> {
        self.map1(t, |b, t| b.index_select(t, dim, idx))
    }

    fn gather(&self, t: &QuantTensor, dim: usize, idx: &Tensor) -> Result<QuantTensor> {
        self.map1(t, |b, t| b.gather(t, dim, idx))
    }

    fn index_gather(&self, t: &Tensor, dim: usize, idx: &Tensor) -> Result<Tensor> {
        self.inner.index_gather(t, dim, idx)
    }

    fn scatter_add(
        &self,
        t: &QuantTensor,
        dim: usize,
        idx: &Tensor,
        src: &QuantTensor,
    ) -> Result<QuantTensor> {
        self.map2(t, src, |b, t, s| b.scatter_add(t, dim, idx, s))
    }

    fn argsort_last(&self, t: &QuantTensor, descending: bool) -> Result<Tensor> {
        self.inner.argsort_last(&*t.dense()?, descending)
    }

    fn argmax_last(&self, t: &QuantTensor) -> Result<Tensor> {
        self.inner.argmax_last(&*t.dense()?)
    }
}
