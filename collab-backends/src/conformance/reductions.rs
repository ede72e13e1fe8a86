//! The `reductions` family: `sum_keepdim`, `mean_keepdim`, `max_keepdim`.

use collab_core::Backend;

use super::harness::{Suite, call};

impl<B: Backend> Suite<'_, B> {
    pub(super) fn reductions(&mut self) {
        for op in ["sum_keepdim", "mean_keepdim", "max_keepdim"] {
            self.reduce_case(op);
        }
    }

    fn reduce_case(&mut self, op: &'static str) -> Option<()> {
        let b = self.b;
        let shape = self.shape(1..=4);
        let h = self.host(&shape, -3.0, 3.0);
        let (x, xr, desc) = self.input("x", &h)?;
        let dim = self.below(shape.len());
        let what = format!("{op} over dim {dim} of {desc}");
        let (g, want) = match op {
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
        let tol = self.tol;
        // A maximum is one of the inputs; sums and means accumulate over the dimension.
        let scale = if op == "max_keepdim" {
            1.0
        } else {
            (shape[dim] as f64).sqrt()
        };
        self.check(op, &what, g, want, tol, scale)
    }
}
