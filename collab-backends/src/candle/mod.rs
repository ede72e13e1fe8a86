//! The candle backend: collab's default, on CPU (its `cuda` feature arrives with the backends
//! issue).
//!
//! Tensors are `candle_core::Tensor` of dtype `F32`, indices of dtype `U32`. Layout operations
//! (`permute`, `narrow`) are lazy views; [`Backend::matmul`] makes an operand contiguous only
//! when gemm cannot read its strides, so transposed operands (`k^T` in attention, `w^T` in a
//! linear layer) cost no copy.
//!
//! [`CandleBackend::differentiable`] is the same backend with every primitive composed of
//! candle operations that support backpropagation (see `autograd.rs`), for prompt learning
//! (SPEC §4): the default CPU paths (fused attention, and the host kernels of [`kernels`]:
//! GELU, softmax, layer norm, the fused linear layer) have no backward pass.

mod autograd;
mod cpu_attention;
mod host;
pub mod kernels;
#[cfg(feature = "arm")]
pub mod quantized;

use candle_core::{D, DType, Device, Tensor};
use collab_core::{Backend, Error, Result, shape};

/// Backend on candle tensors.
#[derive(Clone, Debug)]
pub struct CandleBackend {
    device: Device,
    differentiable: bool,
}

impl CandleBackend {
    /// The CPU backend. Its thread count follows candle (`RAYON_NUM_THREADS`, else all cores).
    pub fn cpu() -> Self {
        Self::on(Device::Cpu)
    }

    /// A backend on an explicit candle device.
    pub fn on(device: Device) -> Self {
        Self {
            device,
            differentiable: false,
        }
    }

    /// The CPU backend whose every primitive supports candle's autograd (see `autograd.rs`):
    /// layer norm and RMS norm are composed of differentiable candle operations, softmax has an
    /// explicit backward pass, attention always takes the composed path (never the fused host
    /// kernel, which would cut the graph), and a linear layer whose weights are plain tensors
    /// (not `Var`s, nor computed from them) skips their gradient, and `scatter_add` (ToMe's
    /// merge) has a backward pass of its own (candle 0.11.1's fails; see `autograd.rs`). Same
    /// values as [`CandleBackend::cpu`] up to f32 rounding; slower. Used to train prompts
    /// (SPEC §4), students (SPEC §6) and warmed models (SPEC §5).
    pub fn differentiable() -> Self {
        Self {
            device: Device::Cpu,
            differentiable: true,
        }
    }

    /// Whether gradients flow through every primitive (see [`CandleBackend::differentiable`]).
    pub fn is_differentiable(&self) -> bool {
        self.differentiable
    }
}

impl Default for CandleBackend {
    fn default() -> Self {
        Self::cpu()
    }
}

/// Maps a candle error into collab's, naming the primitive.
fn err(op: &'static str) -> impl FnOnce(candle_core::Error) -> Error {
    move |e| Error::Backend {
        backend: "candle".into(),
        op,
        message: e.to_string(),
    }
}

/// Whether gemm can consume `t` as laid out: contiguous, or contiguous with its last two
/// dimensions swapped (a transposed view).
fn gemm_ready(t: &Tensor) -> bool {
    if t.is_contiguous() {
        return true;
    }
    let rank = t.rank();
    rank >= 2
        && t.transpose(rank - 2, rank - 1)
            .is_ok_and(|u| u.is_contiguous())
}

fn gemm_operand(t: &Tensor) -> Result<Tensor> {
    if gemm_ready(t) {
        Ok(t.clone())
    } else {
        t.contiguous().map_err(err("matmul"))
    }
}

impl CandleBackend {
    fn binary(
        &self,
        op: &'static str,
        a: &Tensor,
        b: &Tensor,
        f: impl Fn(&Tensor, &Tensor) -> candle_core::Result<Tensor>,
    ) -> Result<Tensor> {
        let out = shape::broadcast(op, a.dims(), b.dims())?;
        if a.dims() == out.as_slice() && b.dims() == out.as_slice() {
            return f(a, b).map_err(err(op));
        }
        let a = a.broadcast_as(out.as_slice()).map_err(err(op))?;
        let b = b.broadcast_as(out.as_slice()).map_err(err(op))?;
        f(&a, &b).map_err(err(op))
    }

    /// Whether the host kernels of `kernels/` apply: the plain CPU backend (not the
    /// differentiable one, whose graph they would cut) and CPU `f32` tensors.
    fn host_kernels(&self, ts: &[&Tensor]) -> bool {
        !self.differentiable && ts.iter().all(|t| host::is_host_f32(t))
    }

    /// Whether the fused linear kernel applies: host tensors, `x [.., k]` of rank 2 or more,
    /// `w [n, k]` and a bias of exactly `[n]` (any other shape takes the composed path, which
    /// validates and broadcasts as the trait's default does).
    fn host_linear_applies(&self, x: &Tensor, w: &Tensor, bias: Option<&Tensor>) -> bool {
        let (xd, wd) = (x.dims(), w.dims());
        self.host_kernels(&[x, w])
            && xd.len() >= 2
            && wd.len() == 2
            && xd[xd.len() - 1] == wd[1]
            && bias.is_none_or(|b| host::is_host_f32(b) && b.dims() == [wd[0]])
    }

    fn dim_ok(&self, op: &'static str, t: &Tensor, dim: usize) -> Result<()> {
        shape::check_dim(op, t.dims(), dim)
    }
}

impl Backend for CandleBackend {
    type Tensor = Tensor;
    type Index = Tensor;
    type Device = Device;

    fn name(&self) -> String {
        match self.device {
            Device::Cpu if self.differentiable => "candle-cpu-autograd".into(),
            Device::Cpu => "candle-cpu".into(),
            _ => format!("candle-{:?}", self.device.location()),
        }
    }

    fn device(&self) -> &Device {
        &self.device
    }

    fn synchronize(&self) -> Result<()> {
        self.device.synchronize().map_err(err("synchronize"))
    }

    fn from_vec(&self, data: Vec<f32>, shape: &[usize]) -> Result<Tensor> {
        shape::elements("from_vec", data.len(), shape, "values")?;
        Tensor::from_vec(data, shape, &self.device).map_err(err("from_vec"))
    }

    fn zeros(&self, shape: &[usize]) -> Result<Tensor> {
        Tensor::zeros(shape, DType::F32, &self.device).map_err(err("zeros"))
    }

    fn to_vec(&self, t: &Tensor) -> Result<Vec<f32>> {
        if t.elem_count() == 0 {
            return Ok(vec![]);
        }
        t.flatten_all()
            .and_then(|f| f.to_vec1::<f32>())
            .map_err(err("to_vec"))
    }

    fn dims(&self, t: &Tensor) -> Vec<usize> {
        t.dims().to_vec()
    }

    fn index_from_vec(&self, data: Vec<u32>, shape: &[usize]) -> Result<Tensor> {
        shape::elements("index_from_vec", data.len(), shape, "indices")?;
        Tensor::from_vec(data, shape, &self.device).map_err(err("index_from_vec"))
    }

    fn index_to_vec(&self, i: &Tensor) -> Result<Vec<u32>> {
        if i.elem_count() == 0 {
            return Ok(vec![]);
        }
        i.flatten_all()
            .and_then(|f| f.to_vec1::<u32>())
            .map_err(err("index_to_vec"))
    }

    fn index_dims(&self, i: &Tensor) -> Vec<usize> {
        i.dims().to_vec()
    }

    fn reshape(&self, t: &Tensor, shape: &[usize]) -> Result<Tensor> {
        shape::reshape(t.dims(), shape)?;
        if !t.is_contiguous()
            && let Some(view) = unit_dims_view(t, shape).map_err(err("reshape"))?
        {
            return Ok(view);
        }
        t.reshape(shape).map_err(err("reshape"))
    }

    fn permute(&self, t: &Tensor, perm: &[usize]) -> Result<Tensor> {
        shape::permute(t.dims(), perm)?;
        t.permute(perm).map_err(err("permute"))
    }

    fn narrow(&self, t: &Tensor, dim: usize, start: usize, len: usize) -> Result<Tensor> {
        shape::narrow("narrow", t.dims(), dim, start, len)?;
        t.narrow(dim, start, len).map_err(err("narrow"))
    }

    fn cat(&self, ts: &[&Tensor], dim: usize) -> Result<Tensor> {
        shape::cat(ts.iter().map(|t| t.dims()), dim)?;
        Tensor::cat(ts, dim).map_err(err("cat"))
    }

    fn index_narrow(&self, i: &Tensor, dim: usize, start: usize, len: usize) -> Result<Tensor> {
        self.narrow(i, dim, start, len)
    }

    fn add(&self, a: &Tensor, b: &Tensor) -> Result<Tensor> {
        if a.dims() == b.dims() && self.host_kernels(&[a, b]) {
            let y = host::with_values("add", b, |bv| {
                host::map("add", a, |av, out| kernels::elementwise::add(av, bv, out))
            })??;
            return Ok(y);
        }
        self.binary("add", a, b, |a, b| a + b)
    }

    fn sub(&self, a: &Tensor, b: &Tensor) -> Result<Tensor> {
        self.binary("sub", a, b, |a, b| a - b)
    }

    fn mul(&self, a: &Tensor, b: &Tensor) -> Result<Tensor> {
        self.binary("mul", a, b, |a, b| a * b)
    }

    fn div(&self, a: &Tensor, b: &Tensor) -> Result<Tensor> {
        self.binary("div", a, b, |a, b| a / b)
    }

    fn affine(&self, t: &Tensor, mul: f32, add: f32) -> Result<Tensor> {
        t.affine(f64::from(mul), f64::from(add))
            .map_err(err("affine"))
    }

    fn exp(&self, t: &Tensor) -> Result<Tensor> {
        t.exp().map_err(err("exp"))
    }

    fn log(&self, t: &Tensor) -> Result<Tensor> {
        t.log().map_err(err("log"))
    }

    fn sqrt(&self, t: &Tensor) -> Result<Tensor> {
        t.sqrt().map_err(err("sqrt"))
    }

    fn tanh(&self, t: &Tensor) -> Result<Tensor> {
        t.tanh().map_err(err("tanh"))
    }

    fn gelu_erf(&self, t: &Tensor) -> Result<Tensor> {
        if self.host_kernels(&[t]) {
            return host::map("gelu_erf", t, kernels::gelu::gelu_erf);
        }
        t.gelu_erf().map_err(err("gelu_erf"))
    }

    fn silu(&self, t: &Tensor) -> Result<Tensor> {
        t.silu().map_err(err("silu"))
    }

    fn sum_keepdim(&self, t: &Tensor, dim: usize) -> Result<Tensor> {
        self.dim_ok("sum_keepdim", t, dim)?;
        t.sum_keepdim(dim).map_err(err("sum_keepdim"))
    }

    fn mean_keepdim(&self, t: &Tensor, dim: usize) -> Result<Tensor> {
        self.dim_ok("mean_keepdim", t, dim)?;
        t.mean_keepdim(dim).map_err(err("mean_keepdim"))
    }

    fn max_keepdim(&self, t: &Tensor, dim: usize) -> Result<Tensor> {
        self.dim_ok("max_keepdim", t, dim)?;
        t.max_keepdim(dim).map_err(err("max_keepdim"))
    }

    fn matmul(&self, a: &Tensor, b: &Tensor) -> Result<Tensor> {
        shape::matmul(a.dims(), b.dims())?;
        let (ad, bd) = (a.dims(), b.dims());
        let a = gemm_operand(a)?;
        let b = gemm_operand(b)?;
        if bd.len() == 2 && ad.len() > 2 {
            // One shared right operand: fold the batch into the rows of a single gemm.
            let (k, n) = (bd[0], bd[1]);
            let rows: usize = ad[..ad.len() - 1].iter().product();
            let a2 = if a.is_contiguous() {
                a.reshape((rows, k))
            } else {
                a.contiguous().and_then(|c| c.reshape((rows, k)))
            }
            .map_err(err("matmul"))?;
            let mut out = ad.to_vec();
            let last = out.len() - 1; // ad.len() > 2 here
            out[last] = n;
            return a2
                .matmul(&b)
                .and_then(|y| y.reshape(out))
                .map_err(err("matmul"));
        }
        a.matmul(&b).map_err(err("matmul"))
    }

    fn linear(&self, x: &Tensor, w: &Tensor, bias: Option<&Tensor>) -> Result<Tensor> {
        let frozen = !w.track_op() && !bias.is_some_and(Tensor::track_op);
        if self.differentiable && frozen {
            let (xd, wd) = (x.dims(), w.dims());
            let fits = wd.len() == 2
                && xd.len() >= 2
                && xd[xd.len() - 1] == wd[1]
                && bias.is_none_or(|b| b.dims() == [wd[0]]);
            if !fits {
                return Err(Error::shape(
                    "linear",
                    format!(
                        "x {xd:?}, w {wd:?}, bias {:?} are not [.., k], [n, k], [n]",
                        bias.map(Tensor::dims)
                    ),
                ));
            }
            return autograd::frozen_linear(x, w, bias).map_err(err("linear"));
        }
        if self.host_linear_applies(x, w, bias) {
            return host_linear(x, w, bias, kernels::linear::Activation::Identity);
        }
        // The trait's default: x w^T (+ b).
        let y = self.matmul(x, &self.permute(w, &[1, 0])?)?;
        match bias {
            Some(b) => self.add(&y, b),
            None => Ok(y),
        }
    }

    fn linear_gelu_erf(&self, x: &Tensor, w: &Tensor, bias: Option<&Tensor>) -> Result<Tensor> {
        if self.host_linear_applies(x, w, bias) {
            return host_linear(x, w, bias, kernels::linear::Activation::GeluErf);
        }
        self.gelu_erf(&self.linear(x, w, bias)?)
    }

    fn softmax_last(&self, x: &Tensor, bias: Option<&Tensor>) -> Result<Tensor> {
        let x = match bias {
            Some(b) => {
                shape::softmax_bias(x.dims(), b.dims())?;
                self.add(x, b)?
            }
            None => x.clone(),
        };
        if x.rank() == 0 {
            return Err(Error::shape("softmax_last", "a scalar has no last dim"));
        }
        if self.differentiable {
            return autograd::softmax_last_tracked(&x).map_err(err("softmax_last"));
        }
        if self.host_kernels(&[&x]) {
            let width = x.dims()[x.rank() - 1];
            return host::map("softmax_last", &x, |v, out| {
                out.copy_from_slice(v);
                kernels::softmax::softmax_rows(out, width);
            });
        }
        candle_nn::ops::softmax_last_dim(&x.contiguous().map_err(err("softmax_last"))?)
            .map_err(err("softmax_last"))
    }

    fn layer_norm(&self, x: &Tensor, gamma: &Tensor, beta: &Tensor, eps: f32) -> Result<Tensor> {
        shape::layer_norm(x.dims(), gamma.dims(), beta.dims())?;
        if self.differentiable {
            return autograd::layer_norm(x, gamma, beta, eps).map_err(err("layer_norm"));
        }
        if self.host_kernels(&[x, gamma, beta]) && x.elem_count() > 0 {
            let y = host::with_values("layer_norm", gamma, |g| {
                host::with_values("layer_norm", beta, |b| {
                    host::map("layer_norm", x, |x, out| {
                        kernels::layer_norm::layer_norm(x, g, b, eps, out)
                    })
                })
            })???;
            return Ok(y);
        }
        let x = x.contiguous().map_err(err("layer_norm"))?;
        candle_nn::ops::layer_norm(&x, gamma, beta, eps).map_err(err("layer_norm"))
    }

    fn rms_norm(&self, x: &Tensor, gamma: &Tensor, eps: f32) -> Result<Tensor> {
        shape::rms_norm(x.dims(), gamma.dims())?;
        if self.differentiable {
            return autograd::rms_norm(x, gamma, eps).map_err(err("rms_norm"));
        }
        let x = x.contiguous().map_err(err("rms_norm"))?;
        candle_nn::ops::rms_norm(&x, gamma, eps).map_err(err("rms_norm"))
    }

    fn attention(
        &self,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        scale: f32,
        bias: Option<&Tensor>,
    ) -> Result<Tensor> {
        shape::attention(q.dims(), k.dims(), v.dims())?;
        if !self.differentiable && cpu_attention::applies(q, k, v) {
            return cpu_attention::attention(q, k, v, scale, bias);
        }
        let kt = gemm_operand(k)?.t().map_err(err("attention"))?;
        let scores = self.matmul(q, &kt)?.affine(f64::from(scale), 0.0);
        let scores = scores.map_err(err("attention"))?;
        let p = self.softmax_last(&scores, bias)?;
        self.matmul(&p, v)
    }

    fn index_select(&self, t: &Tensor, dim: usize, idx: &Tensor) -> Result<Tensor> {
        self.dim_ok("index_select", t, dim)?;
        if idx.rank() != 1 {
            return Err(Error::shape(
                "index_select",
                format!("indices must be 1-D, got {:?}", idx.dims()),
            ));
        }
        check_indices("index_select", idx, t.dims()[dim])?;
        t.contiguous()
            .and_then(|t| t.index_select(&idx.contiguous()?, dim))
            .map_err(err("index_select"))
    }

    fn gather(&self, t: &Tensor, dim: usize, idx: &Tensor) -> Result<Tensor> {
        gather_impl("gather", t, dim, idx)
    }

    fn index_gather(&self, t: &Tensor, dim: usize, idx: &Tensor) -> Result<Tensor> {
        gather_impl("index_gather", t, dim, idx)
    }

    fn scatter_add(&self, t: &Tensor, dim: usize, idx: &Tensor, src: &Tensor) -> Result<Tensor> {
        if idx.dims() != src.dims() {
            return Err(Error::shape(
                "scatter_add",
                format!(
                    "indices {:?} and source {:?} differ",
                    idx.dims(),
                    src.dims()
                ),
            ));
        }
        check_gather("scatter_add", t.dims(), dim, idx)?;
        if (0..t.rank()).any(|d| d != dim && src.dims()[d] != t.dims()[d]) {
            return Err(Error::shape(
                "scatter_add",
                format!(
                    "src {:?} must equal t {:?} outside dim {dim}",
                    src.dims(),
                    t.dims()
                ),
            ));
        }
        if self.differentiable && (t.track_op() || src.track_op()) {
            return autograd::scatter_add_tracked(t, dim, idx, src).map_err(err("scatter_add"));
        }
        t.contiguous()
            .and_then(|t| t.scatter_add(&idx.contiguous()?, &src.contiguous()?, dim))
            .map_err(err("scatter_add"))
    }

    fn argsort_last(&self, t: &Tensor, descending: bool) -> Result<Tensor> {
        if t.rank() == 0 {
            return Err(Error::shape("argsort_last", "a scalar has no last dim"));
        }
        t.contiguous()
            .and_then(|t| t.arg_sort_last_dim(!descending))
            .map_err(err("argsort_last"))
    }

    fn argmax_last(&self, t: &Tensor) -> Result<Tensor> {
        if t.rank() == 0 {
            return Err(Error::shape("argmax_last", "a scalar has no last dim"));
        }
        t.argmax_keepdim(D::Minus1).map_err(err("argmax_last"))
    }
}

/// [`Backend::linear`] by the fused kernel of [`kernels::linear`], for the shapes
/// [`CandleBackend::host_linear_applies`] accepts: `x [.., k]` (rank 2 or more), `w [n, k]`
/// (contiguous, or the transposed view of a contiguous `[k, n]`), `bias [n]`, then `act` on
/// the output (GELU for [`Backend::linear_gelu_erf`]).
fn host_linear(
    x: &Tensor,
    w: &Tensor,
    bias: Option<&Tensor>,
    act: kernels::linear::Activation,
) -> Result<Tensor> {
    let (xd, wd) = (x.dims(), w.dims());
    let (n, k) = (wd[0], wd[1]);
    let rows = xd[..xd.len() - 1]
        .iter()
        .try_fold(1usize, |acc, &d| acc.checked_mul(d))
        .filter(|r| r.checked_mul(n).is_some())
        .ok_or_else(|| Error::shape("linear", format!("x {xd:?} by n = {n} overflows")))?;
    let (w, layout) = if w.is_contiguous() {
        (w.clone(), kernels::linear::WeightLayout::OutIn)
    } else if w.t().is_ok_and(|t| t.is_contiguous()) {
        (
            w.t().map_err(err("linear"))?,
            kernels::linear::WeightLayout::InOut,
        )
    } else {
        (
            w.contiguous().map_err(err("linear"))?,
            kernels::linear::WeightLayout::OutIn,
        )
    };
    let mut out = vec![0f32; rows * n];
    host::with_values("linear", x, |xv| {
        host::with_values("linear", &w, |wv| {
            host::with_optional_values("linear", bias, |bv| {
                kernels::linear::linear(xv, rows, k, wv, layout, n, bv, act, &mut out)
            })
        })
    })???;
    let mut shape = xd.to_vec();
    let last = shape.len() - 1; // x has rank 2 or more (`host_linear_applies`)
    shape[last] = n;
    host::tensor("linear", out, &shape)
}

/// `t` reshaped to `shape` as a view, when the two differ only in dimensions of size 1 (such
/// as `[1, b, h, n, d] -> [b, h, n, d]`, one of q, k, v cut from the fused projection):
/// candle's `reshape` copies every non-contiguous tensor, while dropping or inserting a size-1
/// dimension never needs to. `None` when the sizes above 1 differ.
fn unit_dims_view(t: &Tensor, shape: &[usize]) -> candle_core::Result<Option<Tensor>> {
    let above_one = |d: &[usize]| d.iter().copied().filter(|&x| x != 1).collect::<Vec<_>>();
    if above_one(t.dims()) != above_one(shape) {
        return Ok(None);
    }
    let mut view = t.clone();
    for i in (0..view.rank()).rev() {
        if view.dims()[i] == 1 {
            view = view.squeeze(i)?;
        }
    }
    for (i, &d) in shape.iter().enumerate() {
        if d == 1 {
            view = view.unsqueeze(i)?;
        }
    }
    Ok(Some(view))
}

/// Gather along `dim`. candle 0.11's CPU kernel reads wrong values when `idx` is smaller
/// than `t` outside `dim` (found by the conformance suite), so `t` is first narrowed to `idx`'s
/// extent in every other dimension.
fn gather_impl(op: &'static str, t: &Tensor, dim: usize, idx: &Tensor) -> Result<Tensor> {
    check_gather(op, t.dims(), dim, idx)?;
    let mut t = t.clone();
    for (d, &n) in idx.dims().iter().enumerate() {
        if d != dim && n < t.dims()[d] {
            t = t.narrow(d, 0, n).map_err(err(op))?;
        }
    }
    t.contiguous()
        .and_then(|t| t.gather(&idx.contiguous()?, dim))
        .map_err(err(op))
}

/// Checks that every index in `idx` is below `bound`, so that no kernel reads out of range.
fn check_indices(op: &'static str, idx: &Tensor, bound: usize) -> Result<()> {
    if idx.elem_count() == 0 {
        return Ok(());
    }
    let max = idx
        .flatten_all()
        .and_then(|f| f.max(0))
        .and_then(|m| m.to_scalar::<u32>())
        .map_err(err(op))?;
    if (max as usize) < bound {
        Ok(())
    } else {
        Err(Error::shape(
            op,
            format!("index {max} out of range for a dimension of size {bound}"),
        ))
    }
}

/// Validates a gather/scatter index tensor against the indexed tensor's dims.
fn check_gather(op: &'static str, dims: &[usize], dim: usize, idx: &Tensor) -> Result<()> {
    shape::gather_index(op, dims, dim, idx.dims())?;
    check_indices(op, idx, dims[dim])
}
