//! Invalid arguments to the layout primitives.

use collab_core::Backend;
use rand::Rng;

use crate::conformance::harness::{Suite, Want, call};

impl<B: Backend> Suite<'_, B> {
    pub(super) fn layout_errors(&mut self) -> Option<()> {
        let b = self.b;
        let shape = self.shape(1..=4);
        let rank = shape.len();
        let (x, xr) = self.plain(&shape)?;

        // reshape to a different element count
        let mut to = shape.clone();
        let i = self.below(rank);
        to[i] += 1;
        let what = format!("reshape of {shape:?} to {to:?}");
        let g = call(|| b.reshape(&x, &to));
        let r = self.r.reshape(&xr, &to);
        self.reject("reshape", &what, Want::Shape, r, g);

        // permute: too long, repeated axis, axis out of range
        let mut long: Vec<usize> = (0..rank).collect();
        long.push(rank);
        let mut perms = vec![
            long,
            (0..rank).map(|i| if i == 0 { rank } else { i }).collect(),
        ];
        if rank >= 2 {
            perms.push((0..rank).map(|i| if i == 1 { 0 } else { i }).collect());
        }
        for perm in perms {
            let what = format!("permute of {shape:?} by {perm:?}");
            let g = call(|| b.permute(&x, &perm));
            let r = self.r.permute(&xr, &perm);
            self.reject("permute", &what, Want::Shape, r, g);
        }

        // narrow: dim out of range, past the end, start beyond the end
        let dim = self.below(rank);
        let size = shape[dim];
        let start = self.rng.random_range(0..size);
        for (d, s, l) in [
            (rank, 0, 1),
            (dim, start, size - start + 1),
            (dim, size + 1, 0),
        ] {
            let what = format!("narrow of {shape:?} dim {d} start {s} len {l}");
            let g = call(|| b.narrow(&x, d, s, l));
            let r = self.r.narrow(&xr, d, s, l);
            self.reject("narrow", &what, Want::Shape, r, g);
        }
        let (xi, xir) = self.plain_index(&shape, 10)?;
        for (d, s, l) in [(rank, 0, 1), (dim, start, size - start + 1)] {
            let what = format!("index_narrow of {shape:?} dim {d} start {s} len {l}");
            let g = call(|| b.index_narrow(&xi, d, s, l));
            let r = self.r.index_narrow(&xir, d, s, l);
            self.reject("index_narrow", &what, Want::Shape, r, g);
        }

        // cat: nothing, dim out of range, a rank mismatch, a size mismatch outside dim
        let g = call(|| b.cat(&[], 0));
        let r = self.r.cat(&[], 0);
        self.reject("cat", "cat of no tensors", Want::Shape, r, g);
        let what = format!("cat of two {shape:?} along dim {rank}");
        let g = call(|| b.cat(&[&x, &x], rank));
        let r = self.r.cat(&[&xr, &xr], rank);
        self.reject("cat", &what, Want::Shape, r, g);
        let mut higher = shape.clone();
        higher.push(1);
        let (y, yr) = self.plain(&higher)?;
        let what = format!("cat of {shape:?} and {higher:?} along dim 0");
        let g = call(|| b.cat(&[&x, &y], 0));
        let r = self.r.cat(&[&xr, &yr], 0);
        self.reject("cat", &what, Want::Shape, r, g);
        if rank >= 2 {
            let mut other = shape.clone();
            let d = (dim + 1) % rank;
            other[d] += 1;
            let (z, zr) = self.plain(&other)?;
            let what = format!("cat of {shape:?} and {other:?} along dim {dim}");
            let g = call(|| b.cat(&[&x, &z], dim));
            let r = self.r.cat(&[&xr, &zr], dim);
            self.reject("cat", &what, Want::Shape, r, g);
        }
        Some(())
    }
}
