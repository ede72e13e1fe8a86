//! Differentiable versions of the primitives that candle's fast CPU paths implement as custom
//! operations without a backward pass (`candle_nn::ops::softmax_last_dim`, `layer_norm`,
//! `rms_norm`), for [`CandleBackend::differentiable`](super::CandleBackend) and prompt
//! learning (SPEC §4). Shapes are validated by the caller.
//!
//! - [`layer_norm`], [`rms_norm`]: composed of candle operations that backpropagate (`sum`,
//!   `mean`, `sqrt`, broadcasting arithmetic);
//! - [`softmax_last_tracked`]: the fast kernel with an explicit backward pass, for inputs in
//!   the autograd graph (the composed `exp(x - max) / sum`, kept as the tests' reference, costs
//!   several passes more over the attention scores, forward and backward);
//! - [`frozen_linear`]: a linear layer whose weights need no gradient (a frozen backbone),
//!   with a backward pass for the input only;
//! - [`scatter_add_tracked`]: `scatter_add` with a correct backward pass. candle 0.11.1's own
//!   backward for `scatter_add` builds a mask with `scatter` from the *initial* tensor's shape,
//!   which fails whenever the indices are smaller than it ("shape mismatch in scatter"), and
//!   would zero the gradient of the initial values at the scattered positions if it ran
//!   (right for `scatter`, wrong for `scatter_add`, which only adds). ToMe merges tokens with
//!   it, so warm-up fine-tuning through merging (PRODIGY, SPEC §5) needs this one.

use candle_core::{CpuStorage, CustomOp1, CustomOp2, D, Device, Layout, Result, Shape, Tensor};

/// Softmax over the last dimension: `exp(x - max) / sum exp(x - max)` (the reference for
/// [`softmax_last_tracked`]).
///
/// The row maximum is detached: the softmax does not depend on it, so its gradient would be
/// zero anyway. `-inf` entries give probability zero (as long as a row has a finite entry).
#[cfg(test)]
pub(super) fn softmax_last(x: &Tensor) -> Result<Tensor> {
    let max = x.max_keepdim(D::Minus1)?.detach();
    let e = x.broadcast_sub(&max)?.exp()?;
    let sum = e.sum_keepdim(D::Minus1)?;
    e.broadcast_div(&sum)
}

/// Layer normalisation over the last dimension from the two-pass mean and (biased) variance:
/// `(x - mean) / sqrt(var + eps) * gamma + beta`.
pub(super) fn layer_norm(x: &Tensor, gamma: &Tensor, beta: &Tensor, eps: f32) -> Result<Tensor> {
    let mean = x.mean_keepdim(D::Minus1)?;
    let centred = x.broadcast_sub(&mean)?;
    let var = centred.sqr()?.mean_keepdim(D::Minus1)?;
    let std = var.affine(1.0, f64::from(eps))?.sqrt()?;
    centred
        .broadcast_div(&std)?
        .broadcast_mul(gamma)?
        .broadcast_add(beta)
}

/// RMS normalisation over the last dimension: `x / sqrt(mean(x^2) + eps) * gamma`.
pub(super) fn rms_norm(x: &Tensor, gamma: &Tensor, eps: f32) -> Result<Tensor> {
    let ms = x.sqr()?.mean_keepdim(D::Minus1)?;
    let rms = ms.affine(1.0, f64::from(eps))?.sqrt()?;
    x.broadcast_div(&rms)?.broadcast_mul(gamma)
}

/// A tensor holding a copy of a contiguous CPU storage region.
fn host_tensor(storage: &CpuStorage, layout: &Layout) -> Result<Tensor> {
    let data = storage.as_slice::<f32>()?;
    let (start, end) = layout
        .contiguous_offsets()
        .ok_or_else(|| candle_core::Error::Msg("custom op input must be contiguous".into()))?;
    Tensor::from_slice(&data[start..end], layout.shape(), &Device::Cpu)
}

/// The storage of a result computed with ordinary tensor operations.
fn into_storage(t: &Tensor) -> Result<(CpuStorage, Shape)> {
    let values = t.flatten_all()?.to_vec1::<f32>()?;
    Ok((CpuStorage::F32(values), t.shape().clone()))
}

/// `x w^T + b` for weights that need no gradient: the backward pass computes only
/// `dL/dx = dL/dy w`. candle's own matmul backward also computes the weights' gradient, which
/// for a frozen backbone is a whole wasted matmul per layer (a third of a training step).
struct FrozenLinear {
    w: Tensor,
    b: Option<Tensor>,
}

impl FrozenLinear {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let dims = x.dims();
        let k = dims[dims.len() - 1];
        let n = self.w.dims()[0];
        let rows = x.elem_count() / k.max(1);
        let y = x.reshape((rows, k))?.matmul(&self.w.t()?)?;
        let y = match &self.b {
            Some(b) => y.broadcast_add(b)?,
            None => y,
        };
        let mut out = dims.to_vec();
        out[dims.len() - 1] = n;
        y.reshape(out)
    }
}

impl CustomOp1 for FrozenLinear {
    fn name(&self) -> &'static str {
        "frozen-linear"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        into_storage(&self.forward(&host_tensor(storage, layout)?)?)
    }

    fn bwd(&self, arg: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        let n = self.w.dims()[0];
        let rows = grad.elem_count() / n.max(1);
        let g = grad.contiguous()?.reshape((rows, n))?.matmul(&self.w)?;
        Ok(Some(g.reshape(arg.shape())?))
    }
}

/// A linear layer whose weight and bias need no gradient (see [`FrozenLinear`]); shapes are
/// validated by the caller (`x [.., k]`, `w [n, k]` contiguous, `b [n]`).
pub(super) fn frozen_linear(x: &Tensor, w: &Tensor, b: Option<&Tensor>) -> Result<Tensor> {
    let op = FrozenLinear {
        w: w.contiguous()?,
        b: b.cloned(),
    };
    x.contiguous()?.apply_op1(op)
}

/// Softmax over the last dimension computed by candle-nn's fast kernel, with the explicit
/// backward `dL/dx = y (g - sum(g y))` from the saved output `y`.
struct Softmax;

impl CustomOp1 for Softmax {
    fn name(&self) -> &'static str {
        "softmax-last-with-backward"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        into_storage(&candle_nn::ops::softmax_last_dim(&host_tensor(
            storage, layout,
        )?)?)
    }

    fn bwd(&self, _arg: &Tensor, res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        let y = res.detach();
        let gy = grad.mul(&y)?;
        let s = gy.sum_keepdim(D::Minus1)?;
        Ok(Some(gy.sub(&y.broadcast_mul(&s)?)?))
    }
}

/// Softmax over the last dimension with a backward pass, for inputs in the graph.
pub(super) fn softmax_last_tracked(x: &Tensor) -> Result<Tensor> {
    x.contiguous()?.apply_op1(Softmax)
}

/// `t` with `src` added at `idx` along `dim` (candle's `scatter_add`), whose backward is
/// `dL/dt = g` and `dL/dsrc = gather(g, idx, dim)`.
struct ScatterAdd {
    idx: Tensor,
    dim: usize,
}

impl CustomOp2 for ScatterAdd {
    fn name(&self) -> &'static str {
        "scatter-add-with-backward"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let t = host_tensor(s1, l1)?;
        let src = host_tensor(s2, l2)?;
        into_storage(&t.scatter_add(&self.idx, &src, self.dim)?)
    }

    fn bwd(
        &self,
        _t: &Tensor,
        _src: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        // candle's CPU gather misreads when the indices are smaller than the tensor outside
        // `dim` (see `gather_impl`): narrow the gradient to their extent first.
        let mut g = grad.clone();
        for (d, &n) in self.idx.dims().iter().enumerate() {
            if d != self.dim && n < g.dims()[d] {
                g = g.narrow(d, 0, n)?;
            }
        }
        let src_grad = g.contiguous()?.gather(&self.idx, self.dim)?;
        Ok((Some(grad.clone()), Some(src_grad)))
    }
}

/// `scatter_add` for inputs in the graph (see [`ScatterAdd`]); shapes are validated by the
/// caller.
pub(super) fn scatter_add_tracked(
    t: &Tensor,
    dim: usize,
    idx: &Tensor,
    src: &Tensor,
) -> Result<Tensor> {
    let op = ScatterAdd {
        idx: idx.contiguous()?,
        dim,
    };
    t.contiguous()?.apply_op2(&src.contiguous()?, op)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use candle_core::{Device, Tensor, Var};

    fn seeded(n: usize, seed: u32) -> Vec<f32> {
        (0..n)
            .map(|i| ((i as f32 * 0.37 + seed as f32).sin() * 43758.547).fract() - 0.5)
            .collect()
    }

    fn var(shape: &[usize], seed: u32) -> Var {
        let n = shape.iter().product();
        Var::from_vec(seeded(n, seed), shape, &Device::Cpu).unwrap()
    }

    fn close(a: &Tensor, b: &Tensor) {
        let (a, b) = (
            a.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
            b.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
        );
        assert_eq!(a.len(), b.len());
        for (x, y) in a.iter().zip(&b) {
            assert!((x - y).abs() <= 1e-5 * (1.0 + x.abs()), "{x} vs {y}");
        }
    }

    /// `scatter_add`'s values equal candle's, and its gradients are the incoming gradient for
    /// the initial values and its gather at the indices for the source.
    #[test]
    fn scatter_add_backpropagates_to_both_inputs() {
        let t = var(&[5, 3], 1);
        let src = var(&[2, 3], 2);
        let idx = Tensor::from_vec(vec![4u32, 4, 4, 1, 1, 1], (2, 3), &Device::Cpu).unwrap();
        let out = super::scatter_add_tracked(t.as_tensor(), 0, &idx, src.as_tensor()).unwrap();
        let plain = t.as_tensor().scatter_add(&idx, src.as_tensor(), 0).unwrap();
        close(&out, &plain);
        let r = Tensor::from_vec(seeded(15, 7), (5, 3), &Device::Cpu).unwrap();
        let g = (out * &r).unwrap().sum_all().unwrap().backward().unwrap();
        close(g.get(t.as_tensor()).unwrap(), &r);
        let want = r.gather(&idx, 0).unwrap();
        close(g.get(src.as_tensor()).unwrap(), &want);
    }

    /// The custom ops' values and input gradients equal those of the composed operations.
    #[test]
    fn custom_backward_passes_match_composed_ones() {
        let x = var(&[2, 5, 6], 1);
        let r = Tensor::from_vec(seeded(2 * 5 * 4, 9), (2, 5, 4), &Device::Cpu).unwrap();
        let w = Tensor::from_vec(seeded(4 * 6, 2), (4, 6), &Device::Cpu).unwrap();
        let b = Tensor::from_vec(seeded(4, 3), 4, &Device::Cpu).unwrap();
        let custom = super::frozen_linear(x.as_tensor(), &w, Some(&b)).unwrap();
        let composed = x
            .as_tensor()
            .broadcast_matmul(&w.t().unwrap())
            .unwrap()
            .broadcast_add(&b)
            .unwrap();
        close(&custom, &composed);
        let g1 = (custom * &r)
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap();
        let g2 = (composed * &r)
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap();
        close(
            g1.get(x.as_tensor()).unwrap(),
            g2.get(x.as_tensor()).unwrap(),
        );

        let r = Tensor::from_vec(seeded(2 * 5 * 6, 4), (2, 5, 6), &Device::Cpu).unwrap();
        let custom = super::softmax_last_tracked(x.as_tensor()).unwrap();
        let composed = super::softmax_last(x.as_tensor()).unwrap();
        close(&custom, &composed);
        let g1 = (custom * &r)
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap();
        let g2 = (composed * &r)
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap();
        close(
            g1.get(x.as_tensor()).unwrap(),
            g2.get(x.as_tensor()).unwrap(),
        );
    }
}
