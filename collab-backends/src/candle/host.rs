//! Reading and writing the host values of candle CPU tensors in place, for the kernels of
//! `kernels/` and the fused attention.
//!
//! Lock discipline: a kernel may hold several read guards on candle storage at once, including
//! two on the same storage (q, k and v are views of one qkv tensor; `add(x, x)`). candle's
//! `parking_lot::RwLock` can deadlock on a recursive read only while a writer waits, and
//! candle takes write locks only for in-place operations (`slice_set`, `scatter_set`,
//! `Var::set`, in-place custom ops), which this backend never applies to the tensors it hands
//! to these kernels.

use candle_core::{CpuStorage, DType, Device, Storage, Tensor};
use collab_core::{Error, Result};

fn err(op: &'static str, message: impl Into<String>) -> Error {
    Error::Backend {
        backend: "candle-cpu".into(),
        op,
        message: message.into(),
    }
}

/// Whether `t` is an `f32` tensor on the CPU (the tensors the host kernels take).
pub(super) fn is_host_f32(t: &Tensor) -> bool {
    t.device().is_cpu() && t.dtype() == DType::F32
}

/// Runs `f` on the values of a CPU `f32` tensor, in row-major order, without copying when `t`
/// is contiguous (else after one copy into a contiguous tensor).
pub(super) fn with_values<R>(
    op: &'static str,
    t: &Tensor,
    f: impl FnOnce(&[f32]) -> R,
) -> Result<R> {
    let owned;
    let t = if t.is_contiguous() {
        t
    } else {
        owned = t.contiguous().map_err(|e| err(op, e.to_string()))?;
        &owned
    };
    let (storage, layout) = t.storage_and_layout();
    let Storage::Cpu(CpuStorage::F32(values)) = &*storage else {
        return Err(err(op, "not an f32 tensor on the CPU"));
    };
    let (start, end) = layout
        .contiguous_offsets()
        .ok_or_else(|| err(op, "contiguous tensor without contiguous offsets"))?;
    Ok(f(&values[start..end]))
}

/// [`with_values`] for an optional tensor: `f(None)` when there is none.
pub(super) fn with_optional_values<R>(
    op: &'static str,
    t: Option<&Tensor>,
    f: impl FnOnce(Option<&[f32]>) -> R,
) -> Result<R> {
    match t {
        Some(t) => with_values(op, t, |v| f(Some(v))),
        None => Ok(f(None)),
    }
}

/// A new CPU tensor of `shape` from `values` (moved, not copied).
pub(super) fn tensor(op: &'static str, values: Vec<f32>, shape: &[usize]) -> Result<Tensor> {
    Tensor::from_vec(values, shape, &Device::Cpu).map_err(|e| err(op, e.to_string()))
}

/// `f(values, out)` into a new tensor of `t`'s shape: an element-wise or row-wise host kernel.
pub(super) fn map(
    op: &'static str,
    t: &Tensor,
    f: impl FnOnce(&[f32], &mut [f32]),
) -> Result<Tensor> {
    let mut out = vec![0f32; t.elem_count()];
    with_values(op, t, |x| f(x, &mut out))?;
    tensor(op, out, t.dims())
}
