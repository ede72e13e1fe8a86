//! The `matmul` family: batched and shared-right-operand `matmul`, `linear`, and `linear`
//! with a weight built by `linear_weight` (which a backend may pack).

use collab_core::Backend;
use rand::Rng;

use super::harness::{Got, Suite, call};

impl<B: Backend> Suite<'_, B> {
    pub(super) fn matmul(&mut self) {
        self.matmul_case(false);
        self.matmul_case(true);
        self.linear_case();
        self.packed_linear_case();
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
        self.check("linear", &what, g, want, tol, (k as f64).sqrt())?;
        // The fused MLP expansion, on the same inputs.
        let (bias, bias_r) = (with_bias.then_some(&bias), with_bias.then_some(&bias_r));
        let what = format!(
            "linear_gelu_erf({dx}, {dw}, {})",
            bias.map_or("no bias", |_| &dbias)
        );
        let g = call(|| b.linear_gelu_erf(&x, &w, bias));
        let want = self
            .r
            .linear(&xr, &wr, bias_r)
            .and_then(|y| self.r.gelu_erf(&y));
        self.check("linear_gelu_erf", &what, g, want, tol, (k as f64).sqrt())
    }

    /// A weight `[n, k]` built with `linear_weight` (`k` a multiple of 32, so a packing
    /// backend packs it), used in `linear`, read back with `to_vec`, and used transposed in
    /// `matmul`; all three at the weight tolerance.
    fn packed_linear_case(&mut self) -> Option<()> {
        let b = self.b;
        let k = 32 * self.rng.random_range(1..=8);
        let n = self.rng.random_range(1..=48);
        let mut sx = self.shape(1..=2);
        sx.push(k);
        let hx = self.host(&sx, -1.0, 1.0);
        let hw = self.host(&[n, k], -1.0, 1.0);
        let hb = self.host(&[n], -1.0, 1.0);
        let (x, xr, dx) = self.input("x", &hx)?;
        let (bias, bias_r, dbias) = self.input("bias", &hb)?;
        let wname = format!("w [{n}, {k}] from linear_weight");
        let g = call(|| b.linear_weight(hw.data.clone(), &[n, k]));
        let w = self.got("linear_weight", &format!("building {wname}"), g)?;
        let r = self.r.from_vec(hw.data.clone(), &[n, k]);
        let wr = self.reference("from_vec", &wname, r)?;
        let (tol, scale) = (self.weight_tol, (k as f64).sqrt());

        let (g, want, what) = if self.chance(0.5) {
            (
                call(|| b.linear(&x, &w, Some(&bias))),
                self.r.linear(&xr, &wr, Some(&bias_r)),
                format!("linear({dx}, {wname}, {dbias})"),
            )
        } else {
            (
                call(|| b.linear(&x, &w, None)),
                self.r.linear(&xr, &wr, None),
                format!("linear({dx}, {wname}, no bias)"),
            )
        };
        self.check("linear_weight", &what, g, want, tol, scale);

        let what = format!("{wname}, read back with to_vec");
        let want = self.r.from_vec(hw.data.clone(), &[n, k]);
        self.check("linear_weight", &what, Got::Ok(w.clone()), want, tol, 1.0);

        let what = format!("matmul({dx}, permute({wname}, [1, 0]))");
        let g = call(|| b.permute(&w, &[1, 0]).and_then(|wt| b.matmul(&x, &wt)));
        let want = self
            .r
            .permute(&wr, &[1, 0])
            .and_then(|wt| self.r.matmul(&xr, &wt));
        self.check("linear_weight", &what, g, want, tol, scale)
    }
}
