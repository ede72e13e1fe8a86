//! The tensor handles of the libtorch backend, and the mapping of libtorch's errors.
//!
//! `tch::Tensor` is `Send` but neither `Sync` nor `Clone`, while [`collab_core::Backend`] wants
//! tensors that are both. A handle therefore owns its libtorch tensor behind an
//! `Arc<Mutex<_>>`: cloning a handle shares it, and an operation locks only long enough to take
//! a shallow clone (a new reference to the same storage), computes on that clone with the lock
//! released, and wraps its result in a new handle. So `add(a, a)` takes the lock twice in turn,
//! never nested, and cannot deadlock; a lock poisoned by a panicking thread is recovered (the
//! tensor inside is never left half-modified: nothing mutates it in place).
//!
//! No handle ever holds a tensor that requires a gradient (tensors are built from host data or
//! come out of operations on such tensors), so libtorch records no autograd graph: the backend
//! runs with `tch::no_grad` semantics at no per-operation cost.

use std::fmt;
use std::sync::{Arc, Mutex, PoisonError};

use collab_core::Error;
use tch::TchError;

/// The backend's name in errors.
pub(super) const BACKEND: &str = "tch";

/// Maps a libtorch error into collab's, naming the primitive.
pub(super) fn err(op: &'static str) -> impl FnOnce(TchError) -> Error {
    move |e| Error::Backend {
        backend: BACKEND.into(),
        op,
        message: e.to_string(),
    }
}

/// A shape as libtorch wants it.
pub(super) fn i64_dims(dims: &[usize]) -> Vec<i64> {
    dims.iter().map(|&d| d as i64).collect()
}

/// The dims of a libtorch tensor. (`size()` has no fallible variant; it reads the tensor's
/// metadata and cannot fail on the defined tensors this backend holds.)
fn usize_dims(t: &tch::Tensor) -> Vec<usize> {
    t.size().iter().map(|&d| d as usize).collect()
}

/// A shared, immutable libtorch tensor; its `Debug` shows the shape and device, not values.
struct Shared {
    tensor: Mutex<tch::Tensor>,
    dims: Vec<usize>,
}

impl Shared {
    fn new(t: tch::Tensor) -> Arc<Self> {
        Arc::new(Self {
            dims: usize_dims(&t),
            tensor: Mutex::new(t),
        })
    }

    /// A shallow clone (same storage) taken under the lock, which is released on return.
    fn get(&self) -> tch::Tensor {
        self.tensor
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .shallow_clone()
    }
}

/// An `f32` tensor of the libtorch backend (kind `Float`), on the backend's device.
///
/// Cloning is cheap and shares the values; no primitive modifies a tensor in place, so shared
/// values are never observed to change.
#[derive(Clone)]
pub struct TchTensor(Arc<Shared>);

impl TchTensor {
    pub(super) fn new(t: tch::Tensor) -> Self {
        Self(Shared::new(t))
    }

    /// The libtorch tensor (a shallow clone sharing storage).
    pub(super) fn get(&self) -> tch::Tensor {
        self.0.get()
    }

    /// The shape.
    pub fn dims(&self) -> &[usize] {
        &self.0.dims
    }
}

impl fmt::Debug for TchTensor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "TchTensor(f32 {:?})", self.0.dims)
    }
}

/// An index tensor of the libtorch backend: `u32` values at collab's API, held as `int64`
/// (kind `Int64`) because libtorch's indexing operations take `int64` indices.
///
/// Besides the values it carries `limit`, a bound such that every index is `< limit` (the
/// exact maximum plus one for indices built from host data, the sorted dimension's length for
/// `argsort_last` and `argmax_last`): indexing primitives check it against the indexed
/// dimension without reading the indices back, and read the true maximum only when the bound
/// is not tight enough to decide.
#[derive(Clone)]
pub struct TchIndex {
    shared: Arc<Shared>,
    limit: u64,
}

impl TchIndex {
    /// `t` must be of kind `Int64` with every value in `0..limit`.
    pub(super) fn new(t: tch::Tensor, limit: u64) -> Self {
        Self {
            shared: Shared::new(t),
            limit,
        }
    }

    /// The libtorch tensor (a shallow clone sharing storage).
    pub(super) fn get(&self) -> tch::Tensor {
        self.shared.get()
    }

    /// The shape.
    pub fn dims(&self) -> &[usize] {
        &self.shared.dims
    }

    /// A bound above every index (see the type's documentation).
    pub(super) fn limit(&self) -> u64 {
        self.limit
    }
}

impl fmt::Debug for TchIndex {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "TchIndex(u32 {:?})", self.shared.dims)
    }
}
