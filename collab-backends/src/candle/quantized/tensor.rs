//! The tensor of the quantised backend: a dense candle tensor, or a linear-layer weight packed
//! into one of candle's quantised block formats.

use std::borrow::Cow;
use std::sync::Arc;

use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{Device, Tensor};
use collab_core::{Error, Result};

/// A value of [`QuantizedCandleBackend`](super::QuantizedCandleBackend): either a dense `f32`
/// candle tensor, or a linear-layer weight packed by
/// [`Backend::linear_weight`](collab_core::Backend::linear_weight).
///
/// Every primitive accepts both; a packed weight used anywhere other than as the weight of
/// `linear` is dequantised on the fly (correct, just slower). Results of primitives are dense.
#[derive(Clone, Debug)]
pub enum QuantTensor {
    /// A dense `f32` tensor, exactly as in [`CandleBackend`](crate::candle::CandleBackend).
    Dense(Tensor),
    /// A linear-layer weight `[out, in]` in a quantised block format.
    Packed(PackedWeight),
}

/// A linear-layer weight of logical shape `[out, in]`, stored row by row in blocks of 32
/// input values (`in` is a multiple of 32): Q8_0 (one f16 scale and 32 `i8`, 34 bytes per
/// block, 8.5 bits per weight) or Q4_0 (one f16 scale and 32 4-bit values, 18 bytes per block,
/// 4.5 bits per weight). Cheap to clone (the blocks are shared).
#[derive(Clone, Debug)]
pub struct PackedWeight {
    q: Arc<QTensor>,
    out: usize,
    inp: usize,
}

/// Maps a candle error into collab's, naming the backend and the primitive.
pub(super) fn err(op: &'static str) -> impl FnOnce(candle_core::Error) -> Error {
    move |e| Error::Backend {
        backend: "candle-quantized".into(),
        op,
        message: e.to_string(),
    }
}

impl PackedWeight {
    /// Quantises the dense `[out, in]` tensor `w` to `dtype`.
    ///
    /// # Errors
    /// `w` is not 2-D, or `in` is not a multiple of `dtype`'s block size.
    pub(super) fn quantize(w: &Tensor, dtype: GgmlDType) -> Result<Self> {
        let &[out, inp] = w.dims() else {
            return Err(Error::shape(
                "linear_weight",
                format!("a linear weight must be [out, in], got {:?}", w.dims()),
            ));
        };
        if !inp.is_multiple_of(dtype.block_size()) {
            return Err(Error::shape(
                "linear_weight",
                format!(
                    "input dim {inp} is not a multiple of the block size {}",
                    dtype.block_size()
                ),
            ));
        }
        let q = QTensor::quantize(w, dtype).map_err(err("linear_weight"))?;
        Ok(Self {
            q: Arc::new(q),
            out,
            inp,
        })
    }

    /// The logical shape `[out, in]`.
    pub fn dims(&self) -> [usize; 2] {
        [self.out, self.inp]
    }

    /// The block format.
    pub fn dtype(&self) -> GgmlDType {
        self.q.dtype()
    }

    /// The quantised blocks.
    pub(super) fn qtensor(&self) -> &Arc<QTensor> {
        &self.q
    }

    /// Bytes of the packed blocks (what this weight holds; see
    /// [`PackedWeight::interleaved_copy_bytes`] for candle's extra kernel copy).
    pub fn storage_bytes(&self) -> usize {
        self.q.storage_size_in_bytes()
    }

    /// Bytes of the interleaved copy that candle 0.11's CPU kernels build from this weight at
    /// its first `linear` and keep beside it, on the CPU running this code: on aarch64 with the
    /// `dotprod` or `i8mm` extension when `out` is a multiple of 4 (both formats), and on
    /// x86_64 with AVX-VNNI or AVX512-VNNI for Q8_0 when `out` is a multiple of 16 and `in` of
    /// 256. The copy has the size of the blocks. 0 where no copy is made (x86_64 with AVX2
    /// only, as on this project's CI machine). Mirrors candle 0.11.1's kernel choice; a later
    /// candle may differ.
    pub fn interleaved_copy_bytes(&self) -> usize {
        if repacks(self.dtype(), self.out, self.inp) {
            self.storage_bytes()
        } else {
            0
        }
    }

    /// The weight as a dense `f32` tensor `[out, in]` (the quantised values).
    ///
    /// # Errors
    /// A candle failure (none expected on CPU).
    pub fn dequantize(&self) -> Result<Tensor> {
        self.q.dequantize(&Device::Cpu).map_err(err("dequantize"))
    }
}

#[cfg(target_arch = "aarch64")]
fn repacks(dtype: GgmlDType, out: usize, _inp: usize) -> bool {
    let fast = std::arch::is_aarch64_feature_detected!("dotprod")
        || std::arch::is_aarch64_feature_detected!("i8mm");
    fast && out.is_multiple_of(4) && matches!(dtype, GgmlDType::Q8_0 | GgmlDType::Q4_0)
}

#[cfg(target_arch = "x86_64")]
fn repacks(dtype: GgmlDType, out: usize, inp: usize) -> bool {
    let vnni = (std::arch::is_x86_feature_detected!("avx512f")
        && std::arch::is_x86_feature_detected!("avx512vnni"))
        || std::arch::is_x86_feature_detected!("avxvnni");
    vnni && dtype == GgmlDType::Q8_0 && out.is_multiple_of(16) && inp.is_multiple_of(256)
}

#[cfg(not(any(target_arch = "aarch64", target_arch = "x86_64")))]
fn repacks(_dtype: GgmlDType, _out: usize, _inp: usize) -> bool {
    false
}

impl QuantTensor {
    /// The shape (the logical `[out, in]` of a packed weight).
    pub fn dims(&self) -> Vec<usize> {
        match self {
            Self::Dense(t) => t.dims().to_vec(),
            Self::Packed(p) => p.dims().to_vec(),
        }
    }

    /// Whether this is a packed (quantised) weight.
    pub fn is_packed(&self) -> bool {
        matches!(self, Self::Packed(_))
    }

    /// Bytes this value holds: 4 per element for a dense tensor, the packed blocks for a packed
    /// weight (not counting candle's interleaved kernel copy, see
    /// [`PackedWeight::interleaved_copy_bytes`]).
    pub fn storage_bytes(&self) -> usize {
        match self {
            Self::Dense(t) => t.elem_count() * std::mem::size_of::<f32>(),
            Self::Packed(p) => p.storage_bytes(),
        }
    }

    /// The value as a dense candle tensor: borrowed when dense, dequantised when packed.
    ///
    /// # Errors
    /// A candle failure while dequantising (none expected on CPU).
    pub fn dense(&self) -> Result<Cow<'_, Tensor>> {
        match self {
            Self::Dense(t) => Ok(Cow::Borrowed(t)),
            Self::Packed(p) => p.dequantize().map(Cow::Owned),
        }
    }
}

impl From<Tensor> for QuantTensor {
    fn from(t: Tensor) -> Self {
        Self::Dense(t)
    }
}
