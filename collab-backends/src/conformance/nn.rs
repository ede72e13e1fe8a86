//! The `nn` family: `softmax_last`, `layer_norm`, `rms_norm`, `attention`.

use collab_core::Backend;
use rand::Rng;
use rand::seq::IndexedRandom;

use super::harness::{Suite, call};
use super::host::Host;

impl<B: Backend> Suite<'_, B> {
    pub(super) fn nn(&mut self) {
        self.softmax_case(false, 5.0);
        self.softmax_case(false, 100.0);
        self.softmax_case(true, 3.0);
        self.layer_norm_case(false);
        self.layer_norm_case(true);
        self.rms_norm_case();
        self.attention_case();
    }

    /// A bias of `shape` in `[lo, hi)` where, if `mask`, some entries are `-inf` but never a
    /// whole row (along the last dimension, which must then be the full length).
    fn bias(&mut self, shape: &[usize], lo: f32, hi: f32, mask: bool) -> Host<f32> {
        let mut h = self.host(shape, lo, hi);
        let last = shape.last().copied().unwrap_or(1);
        if mask && last >= 2 {
            for row in h.data.chunks_mut(last) {
                let keep = self.rng.random_range(0..last);
                for (j, v) in row.iter_mut().enumerate() {
                    if j != keep && self.rng.random_bool(0.4) {
                        *v = f32::NEG_INFINITY;
                    }
                }
            }
        }
        h
    }

    fn softmax_case(&mut self, with_bias: bool, range: f32) -> Option<()> {
        let b = self.b;
        let shape = self.shape(1..=4);
        let h = self.host(&shape, -range, range);
        let (x, xr, dx) = self.input("x", &h)?;
        let tol = self.tol;
        if !with_bias {
            let what = format!("softmax_last of {dx} (values in [-{range}, {range}))");
            let g = call(|| b.softmax_last(&x, None));
            let want = self.r.softmax_last(&xr, None);
            return self.check("softmax_last", &what, g, want, tol, 1.0);
        }
        let mut sb = self.broadcastable_to(&shape);
        let mask = self.chance(0.6);
        if mask {
            // Masks need the full last dimension, else they would mask whole rows.
            if let (Some(l), Some(&n)) = (sb.last_mut(), shape.last()) {
                *l = n;
            }
        }
        let hb = self.bias(&sb, -3.0, 3.0, mask);
        let (bias, bias_r, db) = self.input("bias", &hb)?;
        let what = format!(
            "softmax_last of {dx} + {db}{}",
            if mask { " (with -inf entries)" } else { "" }
        );
        let g = call(|| b.softmax_last(&x, Some(&bias)));
        let want = self.r.softmax_last(&xr, Some(&bias_r));
        self.check("softmax_last", &what, g, want, tol, 1.0)
    }

    /// Rows with spread: two entries of each row at `offset -/+ 2`, so that the variance is
    /// never tiny (a tiny variance turns f32 rounding into large normalised errors).
    fn spread_rows(&mut self, shape: &[usize]) -> Host<f32> {
        let mut h = self.host(shape, -3.0, 3.0);
        let d = shape.last().copied().unwrap_or(1);
        if d >= 2 {
            for row in h.data.chunks_mut(d) {
                let offset = self.rng.random_range(-2.0f32..2.0);
                let i = self.rng.random_range(0..d);
                let j = (i + 1 + self.rng.random_range(0..d - 1)) % d;
                for v in row.iter_mut() {
                    *v += offset;
                }
                row[i] = offset - 2.0;
                row[j] = offset + 2.0;
            }
        }
        h
    }

    fn layer_norm_case(&mut self, long_rows: bool) -> Option<()> {
        let b = self.b;
        let mut shape = self.shape(0..=3);
        let d = if long_rows {
            self.rng.random_range(16..=96)
        } else {
            self.size()
        };
        shape.push(d);
        let h = self.spread_rows(&shape);
        let (x, xr, dx) = self.input("x", &h)?;
        let hg = self.host(&[d], -2.0, 2.0);
        let hb = self.host(&[d], -1.0, 1.0);
        let (g, gr, _) = self.input("gamma", &hg)?;
        let (be, ber, _) = self.input("beta", &hb)?;
        let eps = *[1e-5f32, 1e-6, 1e-12].choose(&mut self.rng)?;
        let what = format!("layer_norm of {dx} with gamma, beta [{d}], eps {eps:e}");
        let got = call(|| b.layer_norm(&x, &g, &be, eps));
        let want = self.r.layer_norm(&xr, &gr, &ber, eps);
        let tol = self.tol;
        self.check("layer_norm", &what, got, want, tol, (d as f64).sqrt())
    }

    fn rms_norm_case(&mut self) -> Option<()> {
        let b = self.b;
        let mut shape = self.shape(0..=3);
        let d = if self.chance(0.3) {
            self.rng.random_range(16..=96)
        } else {
            self.size()
        };
        shape.push(d);
        let h = self.spread_rows(&shape);
        let (x, xr, dx) = self.input("x", &h)?;
        let hg = self.host(&[d], -2.0, 2.0);
        let (g, gr, _) = self.input("gamma", &hg)?;
        let eps = *[1e-5f32, 1e-6].choose(&mut self.rng)?;
        let what = format!("rms_norm of {dx} with gamma [{d}], eps {eps:e}");
        let got = call(|| b.rms_norm(&x, &g, eps));
        let want = self.r.rms_norm(&xr, &gr, eps);
        let tol = self.tol;
        self.check("rms_norm", &what, got, want, tol, (d as f64).sqrt())
    }

    fn attention_case(&mut self) -> Option<()> {
        let b = self.b;
        let (bs, heads) = (self.rng.random_range(1..=2), self.rng.random_range(1..=3));
        let (n, m) = (self.size(), self.size());
        let d = if self.chance(0.3) {
            self.rng.random_range(16..=64)
        } else {
            self.rng.random_range(1..=8)
        };
        let hq = self.host(&[bs, heads, n, d], -1.0, 1.0);
        let hk = self.host(&[bs, heads, m, d], -1.0, 1.0);
        let hv = self.host(&[bs, heads, m, d], -1.0, 1.0);
        let (q, qr, dq) = self.input("q", &hq)?;
        let (k, kr, dk) = self.input("k", &hk)?;
        let (v, vr, dv) = self.input("v", &hv)?;
        let scale = 1.0 / (d as f32).sqrt();
        let bias = match self.below(4) {
            0 => None,
            1 => Some((
                self.bias(&[bs, 1, 1, m], 0.0, 0.0001, true),
                "a -inf key mask",
            )),
            2 => Some((self.host(&[1, heads, n, m], -2.0, 2.0), "a random bias")),
            _ => {
                let mut h = self.host(&[m], 1.0, 5.0);
                for s in &mut h.data {
                    *s = s.ln();
                }
                Some((h, "log key sizes"))
            }
        };
        let tol = self.tol;
        let scale_tol = ((d + m) as f64).sqrt();
        match bias {
            None => {
                let what = format!("attention({dq}, {dk}, {dv}, scale {scale:e}, no bias)");
                let g = call(|| b.attention(&q, &k, &v, scale, None));
                let want = self.r.attention(&qr, &kr, &vr, scale, None);
                self.check("attention", &what, g, want, tol, scale_tol)
            }
            Some((hb, kind)) => {
                let (bias, bias_r, db) = self.input("bias", &hb)?;
                let what = format!("attention({dq}, {dk}, {dv}, scale {scale:e}, {db}: {kind})");
                let g = call(|| b.attention(&q, &k, &v, scale, Some(&bias)));
                let want = self.r.attention(&qr, &kr, &vr, scale, Some(&bias_r));
                self.check("attention", &what, g, want, tol, scale_tol)
            }
        }
    }
}
