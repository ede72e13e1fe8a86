//! The `matmul` family: batched and shared-right-operand `matmul`, `linear`.

use collab_core::Backend;
use rand::Rng;

use super::harness::{Suite, call};

impl<B: Backend> Suite<'_, B> {
    pub(super) fn matmul(&mut self) {
        self.matmul_case(false);
        self.matmul_case(true);
        self.linear_case();
    }

    fn matmul_case(&mut self, long_k: bool) -> Option<()> {
        let b = self.b;
        let batch_rank = self.below(3);
        let batch: Vec<usize> = (0..batch_rank)
            .map(|_| self.rng.random_range(1..=4))
            .collect();
        let (m, n) = (self.size(), self.size());
        let k = if long_k {
            self.rng.random_range(16..=128)
        } else {
            self.size()
        };
        let shared = batch_rank > 0 && self.chance(0.35);
        let mut sa = batch.clone();
        sa.extend([m, k]);
        let mut sb = if shared { Vec::new() } else { batch.clone() };
        sb.extend([k, n]);
        let ha = self.host(&sa, -1.0, 1.0);
        let hb = self.host(&sb, -1.0, 1.0);
        let (x, xr, da) = self.input("a", &ha)?;
        let (y, yr, db) = self.input("b", &hb)?;
        let what = format!("matmul({da}, {db})");
        let g = call(|| b.matmul(&x, &y));
        let want = self.r.matmul(&xr, &yr);
        let tol = self.tol;
        self.check("matmul", &what, g, want, tol, (k as f64).sqrt())
    }

    fn linear_case(&mut self) -> Option<()> {
        let b = self.b;
        let mut sx = self.shape(1..=2);
        let k = self.size();
        let n = self.size();
        sx.push(k);
        let hx = self.host(&sx, -1.0, 1.0);
        let hw = self.host(&[n, k], -1.0, 1.0);
        let (x, xr, dx) = self.input("x", &hx)?;
        let (w, wr, dw) = self.input("w", &hw)?;
        let with_bias = self.chance(0.5);
        let hb = self.host(&[n], -1.0, 1.0);
        let (bias, bias_r, dbias) = self.input("bias", &hb)?;
        let (g, want, what) = if with_bias {
            (
                call(|| b.linear(&x, &w, Some(&bias))),
                self.r.linear(&xr, &wr, Some(&bias_r)),
                format!("linear({dx}, {dw}, {dbias})"),
            )
        } else {
            (
                call(|| b.linear(&x, &w, None)),
                self.r.linear(&xr, &wr, None),
                format!("linear({dx}, {dw}, no bias)"),
            )
        };
        let tol = self.tol;
        self.check("linear", &what, g, want, tol, (k as f64).sqrt())
    }
}
