//! Element-wise arithmetic, reductions and linear algebra of the libtorch backend.
//!
//! libtorch broadcasts like NumPy, as the trait asks; shapes are checked here first so that
//! every shape error is an [`Error::Shape`] naming the primitive, not a libtorch message.

use collab_core::{Error, Result, shape};
use tch::{Kind, Tensor};

use super::TchBackend;
use super::tensor::{TchTensor, err};

/// A binary libtorch operation.
type Binary = fn(&Tensor, &Tensor) -> Result<Tensor, tch::TchError>;
/// A unary libtorch operation.
type Unary = fn(&Tensor) -> Result<Tensor, tch::TchError>;

impl TchBackend {
    /// `f(a, b)` after checking that the shapes broadcast.
    pub(super) fn binary(
        &self,
        op: &'static str,
        a: &TchTensor,
        b: &TchTensor,
        f: Binary,
    ) -> Result<TchTensor> {
        shape::broadcast(op, a.dims(), b.dims())?;
        let r = f(&a.get(), &b.get()).map_err(err(op))?;
        Ok(TchTensor::new(r))
    }

    /// `f(t)`.
    pub(super) fn unary(&self, op: &'static str, t: &TchTensor, f: Unary) -> Result<TchTensor> {
        let r = f(&t.get()).map_err(err(op))?;
        Ok(TchTensor::new(r))
    }

    pub(super) fn affine_impl(&self, t: &TchTensor, mul: f32, add: f32) -> Result<TchTensor> {
        let r = t
            .get()
            .f_mul_scalar(f64::from(mul))
            .and_then(|x| x.f_add_scalar(f64::from(add)))
            .map_err(err("affine"))?;
        Ok(TchTensor::new(r))
    }

    /// A reduction over `dim`, keeping it with size 1.
    pub(super) fn reduce(
        &self,
        op: &'static str,
        t: &TchTensor,
        dim: usize,
        f: fn(&Tensor, i64) -> Result<Tensor, tch::TchError>,
    ) -> Result<TchTensor> {
        shape::check_dim(op, t.dims(), dim)?;
        let r = f(&t.get(), dim as i64).map_err(err(op))?;
        Ok(TchTensor::new(r))
    }

    pub(super) fn matmul_impl(&self, a: &TchTensor, b: &TchTensor) -> Result<TchTensor> {
        shape::matmul(a.dims(), b.dims())?;
        // libtorch's matmul folds the batch of a left operand into the rows of one gemm when
        // the right operand is 2-D, and reads transposed views without copying.
        let r = a.get().f_matmul(&b.get()).map_err(err("matmul"))?;
        Ok(TchTensor::new(r))
    }

    /// `x w^T + bias` with libtorch's fused `linear` (one gemm with the bias added in it) when
    /// the bias is `[n]`; any other bias shape is added with broadcasting, as the trait's
    /// default does.
    pub(super) fn linear_impl(
        &self,
        x: &TchTensor,
        w: &TchTensor,
        bias: Option<&TchTensor>,
    ) -> Result<TchTensor> {
        let (xd, wd) = (x.dims(), w.dims());
        let fits = wd.len() == 2 && xd.len() >= 2 && xd[xd.len() - 1] == wd[1];
        if !fits {
            return Err(Error::shape(
                "linear",
                format!("x {xd:?} and w {wd:?} are not [.., k] (rank >= 2) and [n, k]"),
            ));
        }
        match bias {
            Some(b) if b.dims() != [wd[0]] => {
                let mut out = xd.to_vec();
                let last = out.len() - 1;
                out[last] = wd[0];
                shape::broadcast("linear", &out, b.dims())?;
                let y = x
                    .get()
                    .f_linear(&w.get(), None::<Tensor>)
                    .and_then(|y| y.f_add(&b.get()))
                    .map_err(err("linear"))?;
                Ok(TchTensor::new(y))
            }
            _ => {
                let y = x
                    .get()
                    .f_linear(&w.get(), bias.map(TchTensor::get))
                    .map_err(err("linear"))?;
                Ok(TchTensor::new(y))
            }
        }
    }
}

/// `sum` over one dimension, kept.
pub(super) fn sum(t: &Tensor, dim: i64) -> Result<Tensor, tch::TchError> {
    t.f_sum_dim_intlist([dim].as_slice(), true, Kind::Float)
}

/// `mean` over one dimension, kept.
pub(super) fn mean(t: &Tensor, dim: i64) -> Result<Tensor, tch::TchError> {
    t.f_mean_dim([dim].as_slice(), true, Kind::Float)
}

/// `max` over one dimension, kept.
pub(super) fn max(t: &Tensor, dim: i64) -> Result<Tensor, tch::TchError> {
    t.f_amax([dim].as_slice(), true)
}

/// GELU with the exact error function.
pub(super) fn gelu_erf(t: &Tensor) -> Result<Tensor, tch::TchError> {
    t.f_gelu("none")
}
