//! The `Backend` trait: the tensor primitives that the generic Transformer is written against.
//!
//! One implementation per kind of hardware (candle CPU, an f64 reference, later libtorch, CUDA
//! and aarch64). The set is what a ViT/DeiT, a BERT encoder and a LLaMA-style decoder need, plus
//! what token merging (ToMe) needs: gather, scatter-add, argsort and softmax with an additive bias.
//!
//! Contract shared by every primitive:
//! - tensors hold `f32` values (a backend may compute in higher precision, as the reference
//!   does in `f64`), indices hold `u32` values;
//! - element-wise binary operations broadcast like NumPy (trailing dimensions aligned, size-1
//!   dimensions stretched);
//! - a shape that an operation cannot take is an [`Error::Shape`](crate::Error::Shape), never a
//!   panic;
//! - results are logically new tensors: callers never observe aliasing.
//!
//! Every implementation must pass the conformance suite in `collab-backends`, which checks each
//! primitive against the f64 reference on fresh random inputs.

use std::fmt::Debug;

use crate::Result;

/// Tensor primitives on one kind of hardware.
///
/// Methods take `&self` so that a backend value can carry its device (a CPU thread pool, a CUDA
/// ordinal). Backends are cheap to clone.
///
/// Code written against the trait runs on every backend; here on the f64 reference
/// (`collab-backends`; `CandleBackend::cpu()` and the others work the same):
///
/// ```
/// use collab_backends::reference::ReferenceBackend;
/// use collab_core::Backend;
///
/// /// `softmax(x W)` on any backend.
/// fn scores<B: Backend>(be: &B, x: &[f32], w: &[f32]) -> collab_core::Result<Vec<f32>> {
///     let x = be.from_vec(x.to_vec(), &[1, 2])?;
///     let w = be.from_vec(w.to_vec(), &[2, 2])?;
///     be.to_vec(&be.softmax_last(&be.matmul(&x, &w)?, None)?)
/// }
///
/// let p = scores(&ReferenceBackend::new(), &[1.0, 0.0], &[0.0, 0.0, 0.0, 0.0])?;
/// assert_eq!(p, vec![0.5, 0.5]);
/// # Ok::<(), collab_core::Error>(())
/// ```
pub trait Backend: Clone + Debug + Send + Sync + 'static {
    /// A dense tensor of `f32` values.
    type Tensor: Clone + Debug + Send + Sync;
    /// A dense tensor of `u32` indices (results of argsort/argmax, inputs of gather/scatter).
    type Index: Clone + Debug + Send + Sync;
    /// Where tensors live.
    type Device: Clone + Debug + Send + Sync;

    /// A short name for logs and reports, such as `candle-cpu`.
    fn name(&self) -> String;
    /// The device tensors of this backend live on.
    fn device(&self) -> &Self::Device;
    /// Blocks until every operation queued on this backend's device has finished.
    ///
    /// Backends that compute asynchronously (CUDA) must wait here; the default, for backends
    /// whose operations finish before they return (every CPU backend), does nothing. Timing
    /// code calls it before it reads the clock: without it a GPU profile measures kernel
    /// launches, not kernels.
    ///
    /// # Errors
    /// The device's error if waiting fails.
    fn synchronize(&self) -> Result<()> {
        Ok(())
    }

    // ----- creation and host transfer -----

    /// A tensor of `shape` from row-major `data`; `data.len()` must equal the shape's product.
    #[allow(clippy::wrong_self_convention)] // the backend value carries the device
    fn from_vec(&self, data: Vec<f32>, shape: &[usize]) -> Result<Self::Tensor>;
    /// A tensor of zeros.
    fn zeros(&self, shape: &[usize]) -> Result<Self::Tensor> {
        self.from_vec(vec![0.0; shape.iter().product()], shape)
    }
    /// The values in row-major order.
    fn to_vec(&self, t: &Self::Tensor) -> Result<Vec<f32>>;
    /// The shape of `t`.
    fn dims(&self, t: &Self::Tensor) -> Vec<usize>;
    /// An index tensor of `shape` from row-major `data`.
    fn index_from_vec(&self, data: Vec<u32>, shape: &[usize]) -> Result<Self::Index>;
    /// The indices in row-major order.
    fn index_to_vec(&self, i: &Self::Index) -> Result<Vec<u32>>;
    /// The shape of an index tensor.
    fn index_dims(&self, i: &Self::Index) -> Vec<usize>;

    // ----- layout -----

    /// The same values under another shape with the same number of elements.
    fn reshape(&self, t: &Self::Tensor, shape: &[usize]) -> Result<Self::Tensor>;
    /// Dimensions reordered: result dimension `i` is input dimension `perm[i]`.
    fn permute(&self, t: &Self::Tensor, perm: &[usize]) -> Result<Self::Tensor>;
    /// The slice `start..start + len` of dimension `dim`.
    fn narrow(
        &self,
        t: &Self::Tensor,
        dim: usize,
        start: usize,
        len: usize,
    ) -> Result<Self::Tensor>;
    /// Tensors joined along `dim`; all other dimensions must agree.
    fn cat(&self, ts: &[&Self::Tensor], dim: usize) -> Result<Self::Tensor>;
    /// The slice `start..start + len` of dimension `dim` of an index tensor.
    fn index_narrow(
        &self,
        i: &Self::Index,
        dim: usize,
        start: usize,
        len: usize,
    ) -> Result<Self::Index>;

    // ----- element-wise arithmetic (broadcasting) -----

    /// `a + b`.
    fn add(&self, a: &Self::Tensor, b: &Self::Tensor) -> Result<Self::Tensor>;
    /// `a - b`.
    fn sub(&self, a: &Self::Tensor, b: &Self::Tensor) -> Result<Self::Tensor>;
    /// `a * b`.
    fn mul(&self, a: &Self::Tensor, b: &Self::Tensor) -> Result<Self::Tensor>;
    /// `a / b`.
    fn div(&self, a: &Self::Tensor, b: &Self::Tensor) -> Result<Self::Tensor>;
    /// `t * mul + add`, element-wise.
    fn affine(&self, t: &Self::Tensor, mul: f32, add: f32) -> Result<Self::Tensor>;
    /// `exp(t)`.
    fn exp(&self, t: &Self::Tensor) -> Result<Self::Tensor>;
    /// Natural logarithm.
    fn log(&self, t: &Self::Tensor) -> Result<Self::Tensor>;
    /// Square root.
    fn sqrt(&self, t: &Self::Tensor) -> Result<Self::Tensor>;
    /// `tanh(t)`.
    fn tanh(&self, t: &Self::Tensor) -> Result<Self::Tensor>;
    /// GELU with the exact error function: `x/2 * (1 + erf(x/sqrt 2))`.
    fn gelu_erf(&self, t: &Self::Tensor) -> Result<Self::Tensor>;
    /// SiLU: `x * sigmoid(x)`.
    fn silu(&self, t: &Self::Tensor) -> Result<Self::Tensor>;

    // ----- reductions (the reduced dimension is kept with size 1) -----

    /// Sum over `dim`.
    fn sum_keepdim(&self, t: &Self::Tensor, dim: usize) -> Result<Self::Tensor>;
    /// Mean over `dim`.
    fn mean_keepdim(&self, t: &Self::Tensor, dim: usize) -> Result<Self::Tensor>;
    /// Maximum over `dim`.
    fn max_keepdim(&self, t: &Self::Tensor, dim: usize) -> Result<Self::Tensor>;

    // ----- linear algebra -----

    /// Batched matrix product `[.., m, k] x [.., k, n] -> [.., m, n]`. Leading dimensions must
    /// be equal; a 2-D right operand is shared by every batch.
    fn matmul(&self, a: &Self::Tensor, b: &Self::Tensor) -> Result<Self::Tensor>;
    /// A linear layer: `x [.., k] * w^T [k, n] + bias [n]` with `w` stored `[n, k]` as in
    /// PyTorch checkpoints.
    fn linear(
        &self,
        x: &Self::Tensor,
        w: &Self::Tensor,
        bias: Option<&Self::Tensor>,
    ) -> Result<Self::Tensor> {
        let wt = self.permute(w, &[1, 0])?;
        let y = self.matmul(x, &wt)?;
        match bias {
            Some(b) => self.add(&y, b),
            None => Ok(y),
        }
    }

    /// `gelu_erf(linear(x, w, bias))`: a Transformer MLP's expansion and activation, which a
    /// backend may fuse (the candle CPU backend applies GELU in place on the linear layer's
    /// output, each part right after its gemm wrote it: one allocation and one re-read from
    /// memory fewer). Same contract as [`Backend::linear`] and [`Backend::gelu_erf`].
    fn linear_gelu_erf(
        &self,
        x: &Self::Tensor,
        w: &Self::Tensor,
        bias: Option<&Self::Tensor>,
    ) -> Result<Self::Tensor> {
        self.gelu_erf(&self.linear(x, w, bias)?)
    }

    /// The weight `[out, in]` of a linear layer, built from row-major `data`, in the form this
    /// backend's [`Backend::linear`] wants it. Models build every linear layer's weight with
    /// this (never with `from_vec`), so a backend may pack it: quantise it to 8 or 4 bits,
    /// pre-transpose it. The result must still behave as a tensor of (approximately) these
    /// values in every other primitive, and its precision is the backend's to state. The
    /// default is [`Backend::from_vec`].
    ///
    /// # Errors
    /// As `from_vec`: `data.len()` must equal the shape's product, and `shape` must be 2-D.
    fn linear_weight(&self, data: Vec<f32>, shape: &[usize]) -> Result<Self::Tensor> {
        self.from_vec(data, shape)
    }

    // ----- neural-network primitives -----

    /// Softmax over the last dimension of `x + bias`, with `bias` broadcast to `x` (attention
    /// masks, ToMe's proportional attention `log(size)`). An entry of `-inf` in the bias gives
    /// probability zero.
    fn softmax_last(&self, x: &Self::Tensor, bias: Option<&Self::Tensor>) -> Result<Self::Tensor>;
    /// Layer normalisation over the last dimension with affine `gamma`, `beta` of that size.
    fn layer_norm(
        &self,
        x: &Self::Tensor,
        gamma: &Self::Tensor,
        beta: &Self::Tensor,
        eps: f32,
    ) -> Result<Self::Tensor>;
    /// RMS normalisation over the last dimension: `x / sqrt(mean(x^2) + eps) * gamma`.
    fn rms_norm(&self, x: &Self::Tensor, gamma: &Self::Tensor, eps: f32) -> Result<Self::Tensor>;
    /// Scaled dot-product attention over `[b, h, n, d]` queries, `[b, h, m, d]` keys and values:
    /// `softmax(q k^T * scale + bias) v`, with `bias` broadcast to `[b, h, n, m]`. Backends
    /// may fuse it; the default composes the primitives above.
    fn attention(
        &self,
        q: &Self::Tensor,
        k: &Self::Tensor,
        v: &Self::Tensor,
        scale: f32,
        bias: Option<&Self::Tensor>,
    ) -> Result<Self::Tensor> {
        let kt = self.permute(k, &[0, 1, 3, 2])?;
        let scores = self.affine(&self.matmul(q, &kt)?, scale, 0.0)?;
        let p = self.softmax_last(&scores, bias)?;
        self.matmul(&p, v)
    }

    // ----- indexing -----

    /// Entries of `t` along `dim` at the positions in the 1-D `idx` (embedding lookup).
    fn index_select(&self, t: &Self::Tensor, dim: usize, idx: &Self::Index)
    -> Result<Self::Tensor>;
    /// `out[.., i, ..] = t[.., idx[.., i, ..], ..]` along `dim`; `idx` has the rank of `t` and
    /// the shape of the result.
    fn gather(&self, t: &Self::Tensor, dim: usize, idx: &Self::Index) -> Result<Self::Tensor>;
    /// `gather` on an index tensor.
    fn index_gather(&self, t: &Self::Index, dim: usize, idx: &Self::Index) -> Result<Self::Index>;
    /// A copy of `t` with `src[.., i, ..]` added at `t[.., idx[.., i, ..], ..]` along `dim`;
    /// `idx` has the shape of `src`, and `src` has the shape of `t` in every dimension but
    /// `dim`. Repeated indices accumulate.
    fn scatter_add(
        &self,
        t: &Self::Tensor,
        dim: usize,
        idx: &Self::Index,
        src: &Self::Tensor,
    ) -> Result<Self::Tensor>;
    /// Indices that sort the last dimension, descending or ascending. Ties keep their original
    /// order (a stable sort), so every backend returns the same permutation.
    fn argsort_last(&self, t: &Self::Tensor, descending: bool) -> Result<Self::Index>;
    /// Index of the maximum over the last dimension (the first one on ties), keeping that
    /// dimension with size 1.
    fn argmax_last(&self, t: &Self::Tensor) -> Result<Self::Index>;
}

/// Shape helpers shared by backends and models.
pub mod shape {
    use crate::{Error, Result};

    /// The NumPy broadcast of two shapes, or a shape error naming `op`.
    pub fn broadcast(op: &'static str, a: &[usize], b: &[usize]) -> Result<Vec<usize>> {
        let rank = a.len().max(b.len());
        let mut out = vec![0; rank];
        for i in 0..rank {
            let da = if i + a.len() >= rank {
                a[i + a.len() - rank]
            } else {
                1
            };
            let db = if i + b.len() >= rank {
                b[i + b.len() - rank]
            } else {
                1
            };
            out[i] = match (da, db) {
                (x, y) if x == y => x,
                (1, y) => y,
                (x, 1) => x,
                _ => {
                    return Err(Error::shape(
                        op,
                        format!("shapes {a:?} and {b:?} do not broadcast"),
                    ));
                }
            };
        }
        Ok(out)
    }

    /// Checks that `len` host values (`what`: `values`, `indices`) fill `shape`.
    pub fn elements(op: &'static str, len: usize, shape: &[usize], what: &str) -> Result<()> {
        let n: usize = shape.iter().product();
        if n == len {
            Ok(())
        } else {
            Err(Error::shape(
                op,
                format!("{len} {what} for shape {shape:?} ({n} elements)"),
            ))
        }
    }

    /// Checks that `from` and `to` hold the same number of elements.
    pub fn reshape(from: &[usize], to: &[usize]) -> Result<()> {
        if from.iter().product::<usize>() == to.iter().product::<usize>() {
            Ok(())
        } else {
            Err(Error::shape(
                "reshape",
                format!("cannot reshape {from:?} into {to:?}"),
            ))
        }
    }

    /// Checks that `perm` is a permutation of `0..dims.len()`.
    pub fn permute(dims: &[usize], perm: &[usize]) -> Result<()> {
        let rank = dims.len();
        let mut seen = vec![false; rank];
        let valid = perm.len() == rank
            && perm
                .iter()
                .all(|&p| p < rank && !std::mem::replace(&mut seen[p], true));
        if valid {
            Ok(())
        } else {
            Err(Error::shape(
                "permute",
                format!("{perm:?} is not a permutation of the dims of {dims:?}"),
            ))
        }
    }

    /// Checks that `start..start + len` lies within dimension `dim` of `dims` (without
    /// overflowing).
    pub fn narrow(
        op: &'static str,
        dims: &[usize],
        dim: usize,
        start: usize,
        len: usize,
    ) -> Result<()> {
        check_dim(op, dims, dim)?;
        if start.checked_add(len).is_none_or(|end| end > dims[dim]) {
            return Err(Error::shape(
                op,
                format!(
                    "{start}..{} out of range for dim {dim} of {dims:?}",
                    start.saturating_add(len)
                ),
            ));
        }
        Ok(())
    }

    /// Checks that tensors of the shapes `parts` can be joined along `dim`: at least one, and
    /// all equal outside `dim`.
    pub fn cat<'a>(parts: impl IntoIterator<Item = &'a [usize]>, dim: usize) -> Result<()> {
        let mut parts = parts.into_iter();
        let first = parts
            .next()
            .ok_or_else(|| Error::shape("cat", "no tensors to join"))?;
        check_dim("cat", first, dim)?;
        for other in parts {
            let same_rest = other.len() == first.len()
                && (0..other.len()).all(|d| d == dim || other[d] == first[d]);
            if !same_rest {
                return Err(Error::shape(
                    "cat",
                    format!("{first:?} and {other:?} differ outside dim {dim}"),
                ));
            }
        }
        Ok(())
    }

    /// The size of the last dimension of `dims`, or a shape error for a scalar.
    pub fn last_dim(op: &'static str, dims: &[usize]) -> Result<usize> {
        dims.last()
            .copied()
            .ok_or_else(|| Error::shape(op, "a scalar has no last dim"))
    }

    /// Checks `softmax_last`'s `bias` against `x`: it must broadcast to `x`'s shape exactly.
    pub fn softmax_bias(x: &[usize], bias: &[usize]) -> Result<()> {
        if broadcast("softmax_last", x, bias)? == x {
            Ok(())
        } else {
            Err(Error::shape(
                "softmax_last",
                format!("bias {bias:?} does not broadcast to x {x:?}"),
            ))
        }
    }

    /// Checks `layer_norm`'s `gamma` and `beta` against `x` (both `[d]`, `d` its last
    /// dimension) and returns `d`.
    pub fn layer_norm(x: &[usize], gamma: &[usize], beta: &[usize]) -> Result<usize> {
        let d = last_dim("layer_norm", x)?;
        if gamma != [d] || beta != [d] {
            return Err(Error::shape(
                "layer_norm",
                format!("gamma {gamma:?} / beta {beta:?} must be [{d}] for input {x:?}"),
            ));
        }
        Ok(d)
    }

    /// Checks `rms_norm`'s `gamma` against `x` (`[d]`, `d` its last dimension) and returns `d`.
    pub fn rms_norm(x: &[usize], gamma: &[usize]) -> Result<usize> {
        let d = last_dim("rms_norm", x)?;
        if gamma != [d] {
            return Err(Error::shape(
                "rms_norm",
                format!("gamma {gamma:?} must be [{d}] for input {x:?}"),
            ));
        }
        Ok(d)
    }

    /// Checks that `[.., m, k] x [.., k, n]` is a valid `matmul`: ranks at least 2, inner sizes
    /// equal, leading dimensions equal unless the right operand is 2-D.
    pub fn matmul(a: &[usize], b: &[usize]) -> Result<()> {
        let ok = a.len() >= 2
            && b.len() >= 2
            && a[a.len() - 1] == b[b.len() - 2]
            && (b.len() == 2 || a[..a.len() - 2] == b[..b.len() - 2]);
        if ok {
            Ok(())
        } else {
            Err(Error::shape(
                "matmul",
                format!("cannot multiply {a:?} by {b:?}"),
            ))
        }
    }

    /// Checks that `q`, `k`, `v` are `[b, h, n, d]`, `[b, h, m, d]`, `[b, h, m, e]`.
    pub fn attention(q: &[usize], k: &[usize], v: &[usize]) -> Result<()> {
        let ok = q.len() == 4
            && k.len() == 4
            && v.len() == 4
            && q[..2] == k[..2]
            && k[..3] == v[..3]
            && q[3] == k[3];
        if ok {
            Ok(())
        } else {
            Err(Error::shape(
                "attention",
                format!("q {q:?}, k {k:?}, v {v:?} must be [b,h,n,d], [b,h,m,d], [b,h,m,e]"),
            ))
        }
    }

    /// Checks the shape of a gather/scatter index `idx` against the indexed tensor's `dims`
    /// along `dim`: a valid `dim`, the same rank, and no larger outside `dim`. (The index
    /// values are the backend's to check.)
    pub fn gather_index(op: &'static str, dims: &[usize], dim: usize, idx: &[usize]) -> Result<()> {
        check_dim(op, dims, dim)?;
        let fits = idx.len() == dims.len() && (0..idx.len()).all(|d| d == dim || idx[d] <= dims[d]);
        if fits {
            Ok(())
        } else {
            Err(Error::shape(
                op,
                format!("indices {idx:?} do not fit tensor {dims:?} along dim {dim}"),
            ))
        }
    }

    /// Checks that `dim` is a valid dimension of a tensor of rank `rank`.
    pub fn check_dim(op: &'static str, dims: &[usize], dim: usize) -> Result<()> {
        if dim < dims.len() {
            Ok(())
        } else {
            Err(Error::shape(
                op,
                format!("dimension {dim} out of range for shape {dims:?}"),
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::shape::broadcast;

    proptest! {
        /// NumPy broadcasting is symmetric, keeps the larger rank, and stretches only size-1
        /// dimensions.
        #[test]
        fn broadcast_is_symmetric_and_stretches_only_ones(
            a in prop::collection::vec(1usize..4, 0..5),
            b in prop::collection::vec(1usize..4, 0..5),
        ) {
            let ab = broadcast("t", &a, &b);
            let ba = broadcast("t", &b, &a);
            prop_assert_eq!(ab.is_ok(), ba.is_ok());
            if let (Ok(ab), Ok(ba)) = (ab, ba) {
                prop_assert_eq!(&ab, &ba);
                prop_assert_eq!(ab.len(), a.len().max(b.len()));
                for (x, shape) in [(&a, &ab), (&b, &ab)] {
                    let off = shape.len() - x.len();
                    for (i, &d) in x.iter().enumerate() {
                        prop_assert!(d == shape[off + i] || d == 1);
                    }
                }
            }
        }
    }

    #[test]
    fn incompatible_shapes_name_the_operation() {
        let e = broadcast("add", &[2, 3], &[4, 3]).expect_err("3 vs 2 rows");
        assert!(
            e.to_string().contains("add") && e.to_string().contains("[2, 3]"),
            "{e}"
        );
    }
}
