//! Neural-network primitives of the libtorch backend: softmax with an additive bias, layer and
//! RMS normalisation, and attention through libtorch's fused `scaled_dot_product_attention`.

use collab_core::{Error, Result, shape};
use tch::{Kind, Tensor};

use super::TchBackend;
use super::tensor::{TchTensor, err, i64_dims};

impl TchBackend {
    pub(super) fn softmax_last_impl(
        &self,
        x: &TchTensor,
        bias: Option<&TchTensor>,
    ) -> Result<TchTensor> {
        if let Some(b) = bias {
            shape::softmax_bias(x.dims(), b.dims())?;
        }
        shape::last_dim("softmax_last", x.dims())?;
        let xt = x.get();
        let r = match bias {
            Some(b) => xt.f_add(&b.get()),
            None => Ok(xt),
        }
        .and_then(|s| s.f_softmax(-1, Kind::Float))
        .map_err(err("softmax_last"))?;
        Ok(TchTensor::new(r))
    }

    pub(super) fn layer_norm_impl(
        &self,
        x: &TchTensor,
        gamma: &TchTensor,
        beta: &TchTensor,
        eps: f32,
    ) -> Result<TchTensor> {
        let d = shape::layer_norm(x.dims(), gamma.dims(), beta.dims())?;
        let r = x
            .get()
            .f_layer_norm(
                [d as i64].as_slice(),
                Some(gamma.get()),
                Some(beta.get()),
                f64::from(eps),
                false,
            )
            .map_err(err("layer_norm"))?;
        Ok(TchTensor::new(r))
    }

    pub(super) fn rms_norm_impl(
        &self,
        x: &TchTensor,
        gamma: &TchTensor,
        eps: f32,
    ) -> Result<TchTensor> {
        let d = shape::rms_norm(x.dims(), gamma.dims())?;
        let r = x
            .get()
            .f_rms_norm([d as i64].as_slice(), Some(gamma.get()), f64::from(eps))
            .map_err(err("rms_norm"))?;
        Ok(TchTensor::new(r))
    }

    /// `softmax(q k^T * scale + bias) v` with libtorch's `scaled_dot_product_attention`, whose
    /// float mask is added to the scaled scores exactly as the trait's `bias` (`-inf` entries
    /// give probability zero). The bias is checked to broadcast to `[b, h, n, m]` and passed
    /// as a 4-D view (size-1 dimensions prepended), which every libtorch kernel accepts.
    pub(super) fn attention_impl(
        &self,
        q: &TchTensor,
        k: &TchTensor,
        v: &TchTensor,
        scale: f32,
        bias: Option<&TchTensor>,
    ) -> Result<TchTensor> {
        let (qd, kd) = (q.dims(), k.dims());
        shape::attention(qd, kd, v.dims())?;
        let scores = [qd[0], qd[1], qd[2], kd[2]];
        let mask = match bias {
            Some(b) => {
                let bd = b.dims();
                if bd.len() > 4 || shape::broadcast("attention", &scores, bd)? != scores {
                    return Err(Error::shape(
                        "attention",
                        format!("bias {bd:?} does not broadcast to the scores {scores:?}"),
                    ));
                }
                let mut four = vec![1; 4 - bd.len()];
                four.extend_from_slice(bd);
                Some(
                    b.get()
                        .f_reshape(i64_dims(&four))
                        .map_err(err("attention"))?,
                )
            }
            None => None,
        };
        let r = Tensor::f_scaled_dot_product_attention(
            &q.get(),
            &k.get(),
            &v.get(),
            mask,
            0.0,
            false,
            f64::from(scale),
            false,
        )
        .map_err(err("attention"))?;
        Ok(TchTensor::new(r))
    }
}
