//! The neural-network primitives: softmax, the normalisations and attention.

use collab_core::{Backend, Error, Result, shape};
use ndarray::ArrayD;

use super::shapes::{array_from_vec, row_major};
use super::{RefTensor, ReferenceBackend};

/// Applies `f` to each row (a lane along the last dimension) of `t`, which must have rank >= 1.
fn map_rows(
    op: &'static str,
    t: &ArrayD<f64>,
    mut f: impl FnMut(&mut [f64]),
) -> Result<ArrayD<f64>> {
    let Some(&n) = t.shape().last() else {
        return Err(Error::shape(
            op,
            "needs a tensor of rank >= 1, got a scalar",
        ));
    };
    let mut data = row_major(t);
    if n > 0 {
        for row in data.chunks_mut(n) {
            f(row);
        }
    }
    array_from_vec(op, data, t.shape())
}

/// Checks that `p` is a 1-D parameter of length `n` (the last dimension of `x`).
fn check_param(op: &'static str, what: &str, p: &[usize], x: &[usize]) -> Result<()> {
    let n = x.last().copied();
    if x.is_empty() || p.len() != 1 || Some(p[0]) != n {
        return Err(Error::shape(
            op,
            format!("{what} of shape {p:?} must be [d] with d the last dimension of {x:?}"),
        ));
    }
    Ok(())
}

/// Softmax along the last dimension of `x` plus `bias` (broadcast to `x`), if any.
pub(super) fn softmax_last(
    rb: &ReferenceBackend,
    x: &RefTensor,
    bias: Option<&RefTensor>,
) -> Result<RefTensor> {
    let op = "softmax_last";
    if x.0.ndim() == 0 {
        return Err(Error::shape(
            op,
            "needs a tensor of rank >= 1, got a scalar",
        ));
    }
    let z = match bias {
        None => x.clone(),
        Some(b) => {
            let out = shape::broadcast(op, x.0.shape(), b.0.shape())?;
            if out != x.0.shape() {
                return Err(Error::shape(
                    op,
                    format!(
                        "bias {:?} does not broadcast to x {:?}",
                        b.0.shape(),
                        x.0.shape()
                    ),
                ));
            }
            rb.add(x, b)?
        }
    };
    let y = map_rows(op, &z.0, |row| {
        let max = row.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        // exp(-inf - max) = 0; a row of only -inf gives 0/0 = NaN.
        let mut sum = 0.0;
        for v in row.iter_mut() {
            *v = (*v - max).exp();
            sum += *v;
        }
        for v in row.iter_mut() {
            *v /= sum;
        }
    })?;
    Ok(RefTensor(y))
}

/// Layer normalisation over the last dimension, scaled by `gamma` and shifted by `beta`.
pub(super) fn layer_norm(
    x: &RefTensor,
    gamma: &RefTensor,
    beta: &RefTensor,
    eps: f32,
) -> Result<RefTensor> {
    let op = "layer_norm";
    check_param(op, "gamma", gamma.0.shape(), x.0.shape())?;
    check_param(op, "beta", beta.0.shape(), x.0.shape())?;
    let (g, b) = (row_major(&gamma.0), row_major(&beta.0));
    let eps = f64::from(eps);
    let y = map_rows(op, &x.0, |row| {
        let n = row.len() as f64;
        let mean = row.iter().sum::<f64>() / n;
        let var = row.iter().map(|v| (v - mean) * (v - mean)).sum::<f64>() / n;
        let inv = 1.0 / (var + eps).sqrt();
        for (j, v) in row.iter_mut().enumerate() {
            *v = (*v - mean) * inv * g[j] + b[j];
        }
    })?;
    Ok(RefTensor(y))
}

/// RMS normalisation over the last dimension, scaled by `gamma`.
pub(super) fn rms_norm(x: &RefTensor, gamma: &RefTensor, eps: f32) -> Result<RefTensor> {
    let op = "rms_norm";
    check_param(op, "gamma", gamma.0.shape(), x.0.shape())?;
    let g = row_major(&gamma.0);
    let eps = f64::from(eps);
    let y = map_rows(op, &x.0, |row| {
        let ms = row.iter().map(|v| v * v).sum::<f64>() / row.len() as f64;
        let inv = 1.0 / (ms + eps).sqrt();
        for (j, v) in row.iter_mut().enumerate() {
            *v = *v * inv * g[j];
        }
    })?;
    Ok(RefTensor(y))
}

/// Scaled dot-product attention, `softmax(q k^T * scale + bias) v`, through the backend's own
/// primitives.
pub(super) fn attention(
    rb: &ReferenceBackend,
    q: &RefTensor,
    k: &RefTensor,
    v: &RefTensor,
    scale: f32,
    bias: Option<&RefTensor>,
) -> Result<RefTensor> {
    let op = "attention";
    let (sq, sk, sv) = (q.0.shape(), k.0.shape(), v.0.shape());
    let valid = sq.len() == 4
        && sk.len() == 4
        && sv.len() == 4
        && sq[..2] == sk[..2]
        && sk[..2] == sv[..2]
        && sq[3] == sk[3]
        && sk[2] == sv[2];
    if !valid {
        return Err(Error::shape(
            op,
            format!(
                "needs q [b, h, n, d], k [b, h, m, d], v [b, h, m, dv]; got {sq:?}, {sk:?}, \
                 {sv:?}"
            ),
        ));
    }
    if let Some(b) = bias {
        let scores = [sq[0], sq[1], sq[2], sk[2]];
        if shape::broadcast(op, &scores, b.0.shape())? != scores {
            return Err(Error::shape(
                op,
                format!(
                    "bias {:?} does not broadcast to the scores {scores:?}",
                    b.0.shape()
                ),
            ));
        }
    }
    let kt = rb.permute(k, &[0, 1, 3, 2])?;
    let scores = rb.affine(&rb.matmul(q, &kt)?, scale, 0.0)?;
    let p = rb.softmax_last(&scores, bias)?;
    rb.matmul(&p, v)
}
