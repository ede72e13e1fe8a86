//! Invalid arguments to `matmul` and `linear`.

use collab_core::Backend;
use rand::Rng;

use crate::conformance::harness::{Suite, Want, call};

impl<B: Backend> Suite<'_, B> {
    pub(super) fn matmul_errors(&mut self) -> Option<()> {
        let b = self.b;
        let (m, k, n) = (self.size(), self.size(), self.size());
        let bt = self.rng.random_range(2..=4);
        let cases: Vec<(Vec<usize>, Vec<usize>, &str)> = vec![
            (vec![m, k], vec![k + 1, n], "inner dimensions differ"),
            (
                vec![bt, m, k],
                vec![bt, k + 1, n],
                "inner dimensions differ",
            ),
            (vec![k], vec![k, n], "a 1-D left operand"),
            (vec![m, k], vec![k], "a 1-D right operand"),
            (
                vec![bt, m, k],
                vec![bt + 1, k, n],
                "batch dimensions differ",
            ),
            (
                vec![m, k],
                vec![bt, k, n],
                "a 2-D left operand with a batched right one",
            ),
            (
                vec![bt, 2, m, k],
                vec![2, k, n],
                "leading dimensions of different rank",
            ),
        ];
        for (sa, sb, why) in cases {
            let (x, xr) = self.plain(&sa)?;
            let (y, yr) = self.plain(&sb)?;
            let what = format!("matmul of {sa:?} and {sb:?} ({why})");
            let g = call(|| b.matmul(&x, &y));
            let r = self.r.matmul(&xr, &yr);
            self.reject("matmul", &what, Want::Shape, r, g);
        }
        let (x, xr) = self.plain(&[m, k])?;
        let (w, wr) = self.plain(&[n, k + 1])?;
        let what = format!("linear of x [{m}, {k}] with w [{n}, {}]", k + 1);
        let g = call(|| b.linear(&x, &w, None));
        let r = self.r.linear(&xr, &wr, None);
        self.reject("linear", &what, Want::Shape, r, g);
        Some(())
    }
}
