//! Invalid arguments to the element-wise arithmetic and the reductions.

use collab_core::Backend;
use rand::Rng;

use crate::conformance::harness::{Suite, Want, call};

impl<B: Backend> Suite<'_, B> {
    pub(super) fn arithmetic_errors(&mut self) -> Option<()> {
        let b = self.b;
        let mut sa = self.shape(1..=4);
        let p = self.rng.random_range(2..=7);
        let q = if p == 7 { 2 + self.below(5) } else { p + 1 };
        if let Some(l) = sa.last_mut() {
            *l = p;
        }
        let mut sb = self.broadcastable_to(&sa);
        if let Some(l) = sb.last_mut() {
            *l = q;
        }
        let (x, xr) = self.plain(&sa)?;
        let (y, yr) = self.plain(&sb)?;
        for op in ["add", "sub", "mul", "div"] {
            let what = format!("{op} of {sa:?} and {sb:?}");
            let (g, r) = match op {
                "add" => (call(|| b.add(&x, &y)), self.r.add(&xr, &yr)),
                "sub" => (call(|| b.sub(&x, &y)), self.r.sub(&xr, &yr)),
                "mul" => (call(|| b.mul(&x, &y)), self.r.mul(&xr, &yr)),
                _ => (call(|| b.div(&x, &y)), self.r.div(&xr, &yr)),
            };
            self.reject(op, &what, Want::Shape, r, g);
        }
        let rank = sa.len();
        let dim = rank + self.below(2);
        for op in ["sum_keepdim", "mean_keepdim", "max_keepdim"] {
            let what = format!("{op} of {sa:?} over dim {dim}");
            let (g, r) = match op {
                "sum_keepdim" => (
                    call(|| b.sum_keepdim(&x, dim)),
                    self.r.sum_keepdim(&xr, dim),
                ),
                "mean_keepdim" => (
                    call(|| b.mean_keepdim(&x, dim)),
                    self.r.mean_keepdim(&xr, dim),
                ),
                _ => (
                    call(|| b.max_keepdim(&x, dim)),
                    self.r.max_keepdim(&xr, dim),
                ),
            };
            self.reject(op, &what, Want::Shape, r, g);
        }
        Some(())
    }
}
