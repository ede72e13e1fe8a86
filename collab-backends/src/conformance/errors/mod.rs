//! The `errors` family: every primitive that takes shapes rejects invalid ones with `Err`,
//! never a panic.

mod elementwise;
mod indexing;
mod layout;
mod matmul;
mod nn;

use collab_core::Backend;

use super::harness::{Suite, Want, call};
use super::host::Route;
use crate::reference::{RefIndex, RefTensor};

impl<B: Backend> Suite<'_, B> {
    pub(super) fn errors(&mut self) {
        self.creation_errors();
        self.layout_errors();
        self.arithmetic_errors();
        self.matmul_errors();
        self.nn_errors();
        self.indexing_errors();
    }

    /// A random tensor of `shape` on both backends (directly built).
    fn plain(&mut self, shape: &[usize]) -> Option<(B::Tensor, RefTensor)> {
        let h = self.host(shape, -1.0, 1.0);
        let (t, r, _) = self.input_via("x", &h, &Route::Direct)?;
        Some((t, r))
    }

    fn plain_index(&mut self, shape: &[usize], bound: usize) -> Option<(B::Index, RefIndex)> {
        let b = self.b;
        let h = self.indices(shape, bound);
        let g = call(|| b.index_from_vec(h.data.clone(), shape));
        let t = self.got("index_from_vec", &format!("building an index {shape:?}"), g)?;
        let r = self.r.index_from_vec(h.data, shape);
        let r = self.reference("index_from_vec", "building an index", r)?;
        Some((t, r))
    }

    fn creation_errors(&mut self) {
        let b = self.b;
        let shape = self.shape(1..=4);
        let n: usize = shape.iter().product();
        let extra = 1 + self.below(3);
        let data = vec![0.5f32; n + extra];
        let what = format!("from_vec of {} values into {shape:?}", n + extra);
        let g = call(|| b.from_vec(data.clone(), &shape));
        let r = self.r.from_vec(data, &shape);
        self.reject("from_vec", &what, Want::Shape, r, g);
        if n > 1 {
            let data = vec![0.5f32; n - 1];
            let what = format!("from_vec of {} values into {shape:?}", n - 1);
            let g = call(|| b.from_vec(data.clone(), &shape));
            let r = self.r.from_vec(data, &shape);
            self.reject("from_vec", &what, Want::Shape, r, g);
        }
        let data = vec![1u32; n + extra];
        let what = format!("index_from_vec of {} values into {shape:?}", n + extra);
        let g = call(|| b.index_from_vec(data.clone(), &shape));
        let r = self.r.index_from_vec(data, &shape);
        self.reject("index_from_vec", &what, Want::Shape, r, g);
    }
}
