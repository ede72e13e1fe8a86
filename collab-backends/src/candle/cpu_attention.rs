//! Fused scaled-dot-product attention for candle's CPU device.
//!
//! candle's batched matmul runs the `b * h` small per-head products one after another, each
//! split across threads, and materialises the scores three times (product, scale, softmax).
//! Here the work is split into tasks of `(batch, block of query rows)` on rayon's pool; each
//! task, for every head, computes `S = scale Q K^T` for its rows with a single-threaded gemm,
//! adds the bias, takes the softmax in place with the vectorised kernel of
//! [`super::kernels::softmax`], and writes `O = P V` straight into the output.
//!
//! Copies are avoided at both ends. q, k and v are read where they lie, through their strides
//! (the views the model cuts out of the fused qkv projection, `[b, n, 3, h, hd]` permuted),
//! so they are never gathered into contiguous tensors. The output is written as `[b, n, h, e]`
//! and returned as its `[b, h, n, e]` transposed view: the model's next step, permuting back to
//! `[b, n, h, e]` and merging the heads, is then a free reshape of contiguous memory.
//!
//! Checked against the f64 reference by the conformance suite's `nn` family (contiguous and
//! strided inputs) and by this module's tests.

use candle_core::{CpuStorage, Storage, Tensor};
use collab_core::{Error, Result};
use ndarray::{ArrayView2, ArrayViewMut2, ShapeBuilder};
use rayon::prelude::*;

use super::host;
use super::kernels::simd::Isa;
use super::kernels::small_gemm::matmul_into;
use super::kernels::softmax::softmax_rows_with;

fn err(message: impl Into<String>) -> Error {
    Error::Backend {
        backend: "candle-cpu".into(),
        op: "attention",
        message: message.into(),
    }
}

/// `t` as the kernel can read it in place: a last dimension of stride 1 and rows of non-zero
/// stride; anything else (a broadcast, a transposed last dimension) is made contiguous first.
fn readable(t: &Tensor) -> Result<Tensor> {
    let s = t.stride();
    let rank = s.len();
    let in_place = rank == 4 && (t.dims()[3] <= 1 || s[3] == 1) && (t.dims()[2] <= 1 || s[2] > 0);
    if in_place {
        Ok(t.clone())
    } else {
        t.contiguous().map_err(|e| err(e.to_string()))
    }
}

/// The values under a CPU `f32` tensor, its start offset and its strides.
fn raw<'a>(storage: &'a Storage, t: &Tensor) -> Result<(&'a [f32], usize, [usize; 4])> {
    let Storage::Cpu(CpuStorage::F32(values)) = storage else {
        return Err(err("not an f32 tensor on the CPU"));
    };
    let l = t.layout();
    let s = l.stride();
    Ok((values, l.start_offset(), [s[0], s[1], s[2], s[3]]))
}

/// An `rows x cols` view at `offset` with row stride `row` and column stride 1.
fn view(
    values: &[f32],
    offset: usize,
    rows: usize,
    cols: usize,
    row: usize,
) -> Result<ArrayView2<'_, f32>> {
    let data = values.get(offset..).unwrap_or(&[]);
    ArrayView2::from_shape((rows, cols).strides((row.max(1), 1)), data)
        .map_err(|x| err(x.to_string()))
}

/// A broadcast view of the bias: its values and strides over `[b, h, n, m]` (0 where the bias
/// has size 1).
struct BiasView {
    values: Vec<f32>,
    strides: [usize; 4],
}

fn bias_view(bias: &Tensor, shape: [usize; 4]) -> Result<BiasView> {
    let bd = bias.dims();
    if bd.len() > 4 {
        return Err(Error::shape(
            "attention",
            format!("bias {bd:?} has more than 4 dims"),
        ));
    }
    let mut full = [1usize; 4];
    full[4 - bd.len()..].copy_from_slice(bd);
    let mut strides = [0usize; 4];
    let mut acc = 1;
    for i in (0..4).rev() {
        if full[i] != 1 && full[i] != shape[i] {
            return Err(Error::shape(
                "attention",
                format!("bias {bd:?} does not broadcast to scores {shape:?}"),
            ));
        }
        strides[i] = if full[i] == 1 { 0 } else { acc };
        acc *= full[i];
    }
    Ok(BiasView {
        values: host::with_values("attention", bias, <[f32]>::to_vec)?,
        strides,
    })
}

/// Query rows per task: blocks of up to 64 rows, smaller when there are too few to give every
/// thread about four tasks.
fn rows_per_task(b: usize, n: usize) -> usize {
    let wanted = 4 * rayon::current_num_threads();
    let per_batch = wanted.div_ceil(b.max(1)).max(1);
    n.div_ceil(per_batch).clamp(16, 64)
}

/// `softmax(q k^T * scale + bias) v` for `[b, h, n, d]`, `[b, h, m, d]`, `[b, h, m, e]` CPU
/// `f32` tensors (any strides). Shapes are validated by the caller. Returns a `[b, h, n, e]`
/// view of a contiguous `[b, n, h, e]` tensor.
pub(super) fn attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    scale: f32,
    bias: Option<&Tensor>,
) -> Result<Tensor> {
    let (qd, kd, vd) = (q.dims(), k.dims(), v.dims());
    let (b, h, n, d) = (qd[0], qd[1], qd[2], qd[3]);
    let (m, e) = (kd[2], vd[3]);
    let bias = match bias {
        Some(t) => Some(bias_view(t, [b, h, n, m])?),
        None => None,
    };
    let (q, k, v) = (readable(q)?, readable(k)?, readable(v)?);
    let total = [n, h, e]
        .iter()
        .try_fold(b, |acc, &d| acc.checked_mul(d))
        .ok_or_else(|| {
            Error::shape(
                "attention",
                format!("output [{b}, {n}, {h}, {e}] overflows"),
            )
        })?;
    let mut out = vec![0f32; total];
    if !out.is_empty() {
        let (qs, _) = q.storage_and_layout();
        let (ks, _) = k.storage_and_layout();
        let (vs, _) = v.storage_and_layout();
        let (qv, q0, qst) = raw(&qs, &q)?;
        let (kv, k0, kst) = raw(&ks, &k)?;
        let (vv, v0, vst) = raw(&vs, &v)?;
        let isa = Isa::detect();
        let block = rows_per_task(b, n);
        let row_len = h * e;
        out.par_chunks_mut(n * row_len)
            .enumerate()
            .flat_map(|(bi, ob)| {
                ob.par_chunks_mut(block * row_len)
                    .enumerate()
                    .map(move |(ci, oc)| (bi, ci * block, oc))
            })
            .try_for_each(|(bi, r0, oc)| -> Result<()> {
                let rows = oc.len() / row_len;
                let mut s = vec![0f32; rows * m];
                for hi in 0..h {
                    let qb = q0 + bi * qst[0] + hi * qst[1] + r0 * qst[2];
                    let kb = k0 + bi * kst[0] + hi * kst[1];
                    let vb = v0 + bi * vst[0] + hi * vst[1];
                    let qm = view(qv, qb, rows, d, qst[2])?;
                    let km = view(kv, kb, m, d, kst[2])?;
                    let vm = view(vv, vb, m, e, vst[2])?;
                    let mut sm = ArrayViewMut2::from_shape((rows, m), &mut s[..])
                        .map_err(|x| err(x.to_string()))?;
                    matmul_into(scale, &qm, &km.t(), &mut sm, false);
                    if let Some(bv) = &bias {
                        for (ri, row) in s.chunks_exact_mut(m.max(1)).enumerate() {
                            let base =
                                bi * bv.strides[0] + hi * bv.strides[1] + (r0 + ri) * bv.strides[2];
                            for (mi, x) in row.iter_mut().enumerate() {
                                *x += bv.values[base + mi * bv.strides[3]];
                            }
                        }
                    }
                    softmax_rows_with(isa, &mut s, m);
                    let pm = view(&s, 0, rows, m, m)?;
                    let mut om = ArrayViewMut2::from_shape(
                        (rows, e).strides((row_len, 1)),
                        &mut oc[hi * e..],
                    )
                    .map_err(|x| err(x.to_string()))?;
                    matmul_into(1.0, &pm, &vm, &mut om, false);
                }
                Ok(())
            })?;
    }
    host::tensor("attention", out, &[b, n, h, e])?
        .transpose(1, 2)
        .map_err(|x| err(x.to_string()))
}

/// Whether the fused kernel applies: CPU tensors of dtype f32.
pub(super) fn applies(q: &Tensor, k: &Tensor, v: &Tensor) -> bool {
    [q, k, v].iter().all(|t| host::is_host_f32(t))
}
