//! The `layout` family: `reshape`, `permute`, `narrow`, `cat`, `index_narrow`.

use collab_core::Backend;
use rand::Rng;

use super::harness::{Suite, call};
use super::host::Route;
use super::tolerance::Tolerance;
use crate::reference::RefTensor;

impl<B: Backend> Suite<'_, B> {
    pub(super) fn layout(&mut self) {
        self.reshape_case();
        self.permute_case();
        self.narrow_case();
        self.narrow_empty_case();
        self.cat_case();
        self.index_narrow_case();
    }

    /// A random shape with `n` elements (rank 1 to 4).
    fn shape_with(&mut self, n: usize) -> Vec<usize> {
        let mut factors = Vec::new();
        let (mut m, mut p) = (n, 2);
        while m > 1 {
            if m % p == 0 {
                factors.push(p);
                m /= p;
            } else {
                p += 1;
            }
        }
        let rank = self.rng.random_range(1..=4);
        let mut shape = vec![1; rank];
        for f in factors {
            let i = self.below(rank);
            shape[i] *= f;
        }
        shape
    }

    fn reshape_case(&mut self) -> Option<()> {
        let b = self.b;
        let shape = self.shape(1..=4);
        let h = self.host(&shape, -5.0, 5.0);
        let (x, xr, desc) = self.input("x", &h)?;
        let to = self.shape_with(h.data.len());
        let what = format!("reshape of {desc} to {to:?}");
        let g = call(|| b.reshape(&x, &to));
        let want = self.r.reshape(&xr, &to);
        self.check("reshape", &what, g, want, Tolerance::EXACT, 1.0)
    }

    fn permute_case(&mut self) -> Option<()> {
        let b = self.b;
        let shape = self.shape(1..=4);
        let h = self.host(&shape, -5.0, 5.0);
        let (x, xr, desc) = self.input("x", &h)?;
        let perm = self.permutation(shape.len());
        let what = format!("permute {perm:?} of {desc}");
        let g = call(|| b.permute(&x, &perm));
        let want = self.r.permute(&xr, &perm);
        self.check("permute", &what, g, want, Tolerance::EXACT, 1.0)?;
        // A permuted view, made contiguous by an arithmetic op, then reshaped.
        let y = call(|| b.permute(&x, &perm));
        let y = self.got("permute", &what, y)?;
        let n = h.data.len();
        let to = self.shape_with(n);
        let what = format!("reshape to {to:?} of (permute {perm:?} of {desc})");
        let g = call(|| b.reshape(&y, &to));
        let want = self
            .r
            .permute(&xr, &perm)
            .and_then(|p| self.r.reshape(&p, &to));
        self.check("reshape", &what, g, want, Tolerance::EXACT, 1.0)
    }

    fn narrow_case(&mut self) -> Option<()> {
        let b = self.b;
        let shape = self.shape(1..=4);
        let h = self.host(&shape, -5.0, 5.0);
        let (x, xr, desc) = self.input("x", &h)?;
        let dim = self.below(shape.len());
        let start = self.rng.random_range(0..=shape[dim]);
        let len = if start < shape[dim] && self.chance(0.9) {
            self.rng.random_range(1..=shape[dim] - start)
        } else {
            0
        };
        let what = format!("narrow dim {dim} start {start} len {len} of {desc}");
        let g = call(|| b.narrow(&x, dim, start, len));
        let want = self.r.narrow(&xr, dim, start, len);
        self.check("narrow", &what, g, want, Tolerance::EXACT, 1.0)
    }

    /// An empty slice at the very end of a dimension of a narrowed view.
    fn narrow_empty_case(&mut self) -> Option<()> {
        let b = self.b;
        let shape = self.shape(1..=3);
        let h = self.host(&shape, -5.0, 5.0);
        let route = Route::Narrowed {
            dim: self.below(shape.len()),
            before: 1 + self.below(2),
            after: self.below(2),
        };
        let (x, xr, desc) = self.input_via("x", &h, &route)?;
        let dim = self.below(shape.len());
        let start = shape[dim];
        let what = format!("narrow dim {dim} start {start} len 0 (empty, at the end) of {desc}");
        let g = call(|| b.narrow(&x, dim, start, 0));
        let want = self.r.narrow(&xr, dim, start, 0);
        self.check("narrow", &what, g, want, Tolerance::EXACT, 1.0)
    }

    fn cat_case(&mut self) -> Option<()> {
        let b = self.b;
        let shape = self.shape(1..=4);
        let dim = self.below(shape.len());
        let count = self.rng.random_range(1..=4);
        let mut parts = Vec::new();
        for i in 0..count {
            let mut s = shape.clone();
            s[dim] = self.size();
            let h = self.host(&s, -5.0, 5.0);
            parts.push(self.input(&format!("t{i}"), &h)?);
        }
        let descs: Vec<&str> = parts.iter().map(|p| p.2.as_str()).collect();
        let what = format!("cat along dim {dim} of [{}]", descs.join(", "));
        let ts: Vec<&B::Tensor> = parts.iter().map(|p| &p.0).collect();
        let rs: Vec<&RefTensor> = parts.iter().map(|p| &p.1).collect();
        let g = call(|| b.cat(&ts, dim));
        let want = self.r.cat(&rs, dim);
        self.check("cat", &what, g, want, Tolerance::EXACT, 1.0)
    }

    fn index_narrow_case(&mut self) -> Option<()> {
        let b = self.b;
        let shape = self.shape(1..=4);
        let h = self.indices(&shape, 1000);
        let (x, xr, desc) = self.index_input("i", &h)?;
        let dim = self.below(shape.len());
        let start = self.rng.random_range(0..shape[dim]);
        let len = self.rng.random_range(1..=shape[dim] - start);
        let what = format!("index_narrow dim {dim} start {start} len {len} of {desc}");
        let g = call(|| b.index_narrow(&x, dim, start, len));
        let want = self.r.index_narrow(&xr, dim, start, len);
        self.check_index("index_narrow", &what, g, want)
    }
}
