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
//!   with a backward pass for the input only.

use candle_core::{CpuStorage, CustomOp1, D, Device, Layout, Result, Shape, Tensor};

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
