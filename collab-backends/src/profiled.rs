//! A backend that times every primitive of the backend it wraps: the per-operator profile of
//! a forward pass on any backend.
//!
//! [`Profiled`] forwards each call to the inner backend, waits for the device
//! ([`Backend::synchronize`]) so that asynchronous work is charged to the primitive that queued
//! it, and adds the wall time to that primitive's row. Values are the inner backend's, bit for
//! bit (the conformance suite runs on `Profiled<CandleBackend>`). Clones share one table, so a
//! model loaded on a `Profiled` backend reports into the table of the value it was given.
//!
//! What a row holds is what the inner backend does inside that primitive: a `reshape` that
//! candle must copy (a strided view whose sizes above 1 change) shows as time under `reshape`;
//! a backend's `linear` includes its bias add. Timing adds a clock read and a lock per call (well under a
//! microsecond), so profile with the batch sizes whose costs you want to see.
//!
//! ```
//! use collab_backends::profiled::Profiled;
//! use collab_backends::reference::ReferenceBackend;
//! use collab_core::Backend;
//!
//! let be = Profiled::new(ReferenceBackend::new());
//! let x = be.from_vec(vec![1.0, -1.0, 0.5, 2.0], &[2, 2])?;
//! let y = be.gelu_erf(&be.matmul(&x, &x)?)?;
//! assert_eq!(be.dims(&y), vec![2, 2]);
//! let ops = be.report();
//! assert!(ops.iter().any(|o| o.op == "matmul" && o.calls == 1));
//! assert!(ops.iter().any(|o| o.op == "gelu_erf" && o.calls == 1));
//! # Ok::<(), collab_core::Error>(())
//! ```

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use collab_core::{Backend, Result};

/// The time spent in one primitive.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OpTime {
    /// The primitive's name in [`Backend`] (`matmul`, `layer_norm`, ...).
    pub op: &'static str,
    /// How many calls were timed.
    pub calls: u64,
    /// Their total wall time, each call's device work included.
    pub total: Duration,
}

/// `inner`, with every primitive timed (see the module docs).
#[derive(Clone, Debug)]
pub struct Profiled<B> {
    inner: B,
    table: Arc<Mutex<BTreeMap<&'static str, (u64, Duration)>>>,
}

impl<B: Backend> Profiled<B> {
    /// Wraps `inner` with an empty table.
    pub fn new(inner: B) -> Self {
        Self {
            inner,
            table: Arc::default(),
        }
    }

    /// The wrapped backend.
    pub fn inner(&self) -> &B {
        &self.inner
    }

    /// The primitives called since creation or the last [`Profiled::reset`], most time first.
    pub fn report(&self) -> Vec<OpTime> {
        let table = self.table.lock().unwrap_or_else(PoisonError::into_inner);
        let mut rows: Vec<OpTime> = table
            .iter()
            .map(|(&op, &(calls, total))| OpTime { op, calls, total })
            .collect();
        rows.sort_by(|a, b| b.total.cmp(&a.total).then(a.op.cmp(b.op)));
        rows
    }

    /// Empties the table (of every clone).
    pub fn reset(&self) {
        self.table
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clear();
    }

    /// Runs `f`, waits for the device, and charges the time to `op`.
    fn timed<T>(&self, op: &'static str, f: impl FnOnce() -> Result<T>) -> Result<T> {
        let start = Instant::now();
        let out = f();
        let synced = self.inner.synchronize();
        let spent = start.elapsed();
        {
            let mut table = self.table.lock().unwrap_or_else(PoisonError::into_inner);
            let row = table.entry(op).or_default();
            row.0 += 1;
            row.1 += spent;
        }
        let out = out?;
        synced?;
        Ok(out)
    }
}

impl<B: Backend> Backend for Profiled<B> {
    type Tensor = B::Tensor;
    type Index = B::Index;
    type Device = B::Device;

    fn name(&self) -> String {
        format!("profiled-{}", self.inner.name())
    }
    fn device(&self) -> &B::Device {
        self.inner.device()
    }
    fn synchronize(&self) -> Result<()> {
        self.inner.synchronize()
    }
    fn from_vec(&self, data: Vec<f32>, shape: &[usize]) -> Result<B::Tensor> {
        self.timed("from_vec", || self.inner.from_vec(data, shape))
    }
    fn zeros(&self, shape: &[usize]) -> Result<B::Tensor> {
        self.timed("zeros", || self.inner.zeros(shape))
    }
    fn to_vec(&self, t: &B::Tensor) -> Result<Vec<f32>> {
        self.timed("to_vec", || self.inner.to_vec(t))
    }
    fn dims(&self, t: &B::Tensor) -> Vec<usize> {
        self.inner.dims(t)
    }
    fn index_from_vec(&self, data: Vec<u32>, shape: &[usize]) -> Result<B::Index> {
        self.timed("index_from_vec", || self.inner.index_from_vec(data, shape))
    }
    fn index_to_vec(&self, i: &B::Index) -> Result<Vec<u32>> {
        self.timed("index_to_vec", || self.inner.index_to_vec(i))
    }
    fn index_dims(&self, i: &B::Index) -> Vec<usize> {
        self.inner.index_dims(i)
    }
    fn reshape(&self, t: &B::Tensor, shape: &[usize]) -> Result<B::Tensor> {
        self.timed("reshape", || self.inner.reshape(t, shape))
    }
    fn permute(&self, t: &B::Tensor, perm: &[usize]) -> Result<B::Tensor> {
        self.timed("permute", || self.inner.permute(t, perm))
    }
    fn narrow(&self, t: &B::Tensor, dim: usize, start: usize, len: usize) -> Result<B::Tensor> {
        self.timed("narrow", || self.inner.narrow(t, dim, start, len))
    }
    fn cat(&self, ts: &[&B::Tensor], dim: usize) -> Result<B::Tensor> {
        self.timed("cat", || self.inner.cat(ts, dim))
    }
    fn index_narrow(&self, i: &B::Index, dim: usize, start: usize, len: usize) -> Result<B::Index> {
        self.timed("index_narrow", || {
            self.inner.index_narrow(i, dim, start, len)
        })
    }
    fn add(&self, a: &B::Tensor, b: &B::Tensor) -> Result<B::Tensor> {
        self.timed("add", || self.inner.add(a, b))
    }
    fn sub(&self, a: &B::Tensor, b: &B::Tensor) -> Result<B::Tensor> {
        self.timed("sub", || self.inner.sub(a, b))
    }
    fn mul(&self, a: &B::Tensor, b: &B::Tensor) -> Result<B::Tensor> {
        self.timed("mul", || self.inner.mul(a, b))
    }
    fn div(&self, a: &B::Tensor, b: &B::Tensor) -> Result<B::Tensor> {
        self.timed("div", || self.inner.div(a, b))
    }
    fn affine(&self, t: &B::Tensor, mul: f32, add: f32) -> Result<B::Tensor> {
        self.timed("affine", || self.inner.affine(t, mul, add))
    }
    fn exp(&self, t: &B::Tensor) -> Result<B::Tensor> {
        self.timed("exp", || self.inner.exp(t))
    }
    fn log(&self, t: &B::Tensor) -> Result<B::Tensor> {
        self.timed("log", || self.inner.log(t))
    }
    fn sqrt(&self, t: &B::Tensor) -> Result<B::Tensor> {
        self.timed("sqrt", || self.inner.sqrt(t))
    }
    fn tanh(&self, t: &B::Tensor) -> Result<B::Tensor> {
        self.timed("tanh", || self.inner.tanh(t))
    }
    fn gelu_erf(&self, t: &B::Tensor) -> Result<B::Tensor> {
        self.timed("gelu_erf", || self.inner.gelu_erf(t))
    }
    fn silu(&self, t: &B::Tensor) -> Result<B::Tensor> {
        self.timed("silu", || self.inner.silu(t))
    }
    fn sum_keepdim(&self, t: &B::Tensor, dim: usize) -> Result<B::Tensor> {
        self.timed("sum_keepdim", || self.inner.sum_keepdim(t, dim))
    }
    fn mean_keepdim(&self, t: &B::Tensor, dim: usize) -> Result<B::Tensor> {
        self.timed("mean_keepdim", || self.inner.mean_keepdim(t, dim))
    }
    fn max_keepdim(&self, t: &B::Tensor, dim: usize) -> Result<B::Tensor> {
        self.timed("max_keepdim", || self.inner.max_keepdim(t, dim))
    }
    fn matmul(&self, a: &B::Tensor, b: &B::Tensor) -> Result<B::Tensor> {
        self.timed("matmul", || self.inner.matmul(a, b))
    }
    fn linear(&self, x: &B::Tensor, w: &B::Tensor, bias: Option<&B::Tensor>) -> Result<B::Tensor> {
        self.timed("linear", || self.inner.linear(x, w, bias))
    }
    fn linear_gelu_erf(
        &self,
        x: &B::Tensor,
        w: &B::Tensor,
        bias: Option<&B::Tensor>,
    ) -> Result<B::Tensor> {
        self.timed("linear_gelu_erf", || self.inner.linear_gelu_erf(x, w, bias))
    }
    fn linear_weight(&self, data: Vec<f32>, shape: &[usize]) -> Result<B::Tensor> {
        self.timed("linear_weight", || self.inner.linear_weight(data, shape))
    }
    fn softmax_last(&self, x: &B::Tensor, bias: Option<&B::Tensor>) -> Result<B::Tensor> {
        self.timed("softmax_last", || self.inner.softmax_last(x, bias))
    }
    fn layer_norm(
        &self,
        x: &B::Tensor,
        gamma: &B::Tensor,
        beta: &B::Tensor,
        eps: f32,
    ) -> Result<B::Tensor> {
        self.timed("layer_norm", || self.inner.layer_norm(x, gamma, beta, eps))
    }
    fn rms_norm(&self, x: &B::Tensor, gamma: &B::Tensor, eps: f32) -> Result<B::Tensor> {
        self.timed("rms_norm", || self.inner.rms_norm(x, gamma, eps))
    }
    fn attention(
        &self,
        q: &B::Tensor,
        k: &B::Tensor,
        v: &B::Tensor,
        scale: f32,
        bias: Option<&B::Tensor>,
    ) -> Result<B::Tensor> {
        self.timed("attention", || self.inner.attention(q, k, v, scale, bias))
    }
    fn index_select(&self, t: &B::Tensor, dim: usize, idx: &B::Index) -> Result<B::Tensor> {
        self.timed("index_select", || self.inner.index_select(t, dim, idx))
    }
    fn gather(&self, t: &B::Tensor, dim: usize, idx: &B::Index) -> Result<B::Tensor> {
        self.timed("gather", || self.inner.gather(t, dim, idx))
    }
    fn index_gather(&self, t: &B::Index, dim: usize, idx: &B::Index) -> Result<B::Index> {
        self.timed("index_gather", || self.inner.index_gather(t, dim, idx))
    }
    fn scatter_add(
        &self,
        t: &B::Tensor,
        dim: usize,
        idx: &B::Index,
        src: &B::Tensor,
    ) -> Result<B::Tensor> {
        self.timed("scatter_add", || self.inner.scatter_add(t, dim, idx, src))
    }
    fn argsort_last(&self, t: &B::Tensor, descending: bool) -> Result<B::Index> {
        self.timed("argsort_last", || self.inner.argsort_last(t, descending))
    }
    fn argmax_last(&self, t: &B::Tensor) -> Result<B::Index> {
        self.timed("argmax_last", || self.inner.argmax_last(t))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::reference::ReferenceBackend;

    #[test]
    fn clones_share_one_table_and_reset_empties_it() {
        let be = Profiled::new(ReferenceBackend::new());
        let other = be.clone();
        let x = other.from_vec(vec![1.0, 2.0], &[1, 2]).unwrap();
        other.add(&x, &x).unwrap();
        other.add(&x, &x).unwrap();
        let ops = be.report();
        let add = ops.iter().find(|o| o.op == "add").unwrap();
        assert_eq!(add.calls, 2);
        assert!(ops.iter().any(|o| o.op == "from_vec" && o.calls == 1));
        be.reset();
        assert!(other.report().is_empty());
    }

    #[test]
    fn errors_pass_through_and_are_still_counted() {
        let be = Profiled::new(ReferenceBackend::new());
        let x = be.from_vec(vec![1.0, 2.0], &[1, 2]).unwrap();
        assert!(be.matmul(&x, &x).is_err());
        assert!(be.report().iter().any(|o| o.op == "matmul" && o.calls == 1));
    }
}
