//! The `elementwise` family: broadcasting `add`, `sub`, `mul`, `div`, `affine` and the unary
//! functions.

use collab_core::Backend;
use rand::Rng;

use super::harness::{Suite, call};
use crate::reference::{RefTensor, ReferenceBackend};

impl<B: Backend> Suite<'_, B> {
    pub(super) fn elementwise(&mut self) {
        for op in ["add", "sub", "mul", "div"] {
            self.binary_case(op);
        }
        self.affine_case();
        type Unary<T> =
            fn(&T, &<T as Backend>::Tensor) -> collab_core::Result<<T as Backend>::Tensor>;
        type RefUnary = Unary<ReferenceBackend>;
        let cases: [(&'static str, f32, f32, Unary<B>, RefUnary); 6] = [
            ("exp", -10.0, 10.0, B::exp, ReferenceBackend::exp),
            ("log", 1e-3, 100.0, B::log, ReferenceBackend::log),
            ("sqrt", 0.0, 100.0, B::sqrt, ReferenceBackend::sqrt),
            ("tanh", -6.0, 6.0, B::tanh, ReferenceBackend::tanh),
            (
                "gelu_erf",
                -8.0,
                8.0,
                B::gelu_erf,
                ReferenceBackend::gelu_erf,
            ),
            ("silu", -20.0, 20.0, B::silu, ReferenceBackend::silu),
        ];
        for (op, lo, hi, f, fr) in cases {
            self.unary_case(op, lo, hi, f, fr);
        }
    }

    fn binary_case(&mut self, op: &'static str) -> Option<()> {
        let b = self.b;
        let out = self.shape(1..=4);
        let (sa, sb) = match self.below(3) {
            0 => (out.clone(), out.clone()),
            1 => (out.clone(), self.broadcastable_to(&out)),
            _ => {
                let sa = self.broadcastable_to(&out);
                (sa, self.broadcastable_to(&out))
            }
        };
        let (sa, sb) = if self.chance(0.5) { (sa, sb) } else { (sb, sa) };
        let ha = self.host(&sa, -3.0, 3.0);
        let mut hb = self.host(&sb, -3.0, 3.0);
        if op == "div" {
            // Denominators away from zero: |b| in [0.5, 2].
            for v in &mut hb.data {
                *v = (0.5 + v.abs() / 2.0).copysign(*v);
            }
        }
        let (x, xr, da) = self.input("a", &ha)?;
        let (y, yr, db) = self.input("b", &hb)?;
        let what = format!("{op}({da}, {db})");
        let (g, want) = match op {
            "add" => (call(|| b.add(&x, &y)), self.r.add(&xr, &yr)),
            "sub" => (call(|| b.sub(&x, &y)), self.r.sub(&xr, &yr)),
            "mul" => (call(|| b.mul(&x, &y)), self.r.mul(&xr, &yr)),
            _ => (call(|| b.div(&x, &y)), self.r.div(&xr, &yr)),
        };
        let tol = self.tol;
        self.check(op, &what, g, want, tol, 1.0)
    }

    fn affine_case(&mut self) -> Option<()> {
        let b = self.b;
        let shape = self.shape(1..=4);
        let h = self.host(&shape, -3.0, 3.0);
        let (x, xr, desc) = self.input("x", &h)?;
        let mul = self.rng.random_range(-3.0f32..3.0);
        let add = self.rng.random_range(-3.0f32..3.0);
        let what = format!("affine of {desc} by mul {mul:e} add {add:e}");
        let g = call(|| b.affine(&x, mul, add));
        let want = self.r.affine(&xr, mul, add);
        let tol = self.tol;
        self.check("affine", &what, g, want, tol, 1.0)
    }

    fn unary_case(
        &mut self,
        op: &'static str,
        lo: f32,
        hi: f32,
        f: fn(&B, &B::Tensor) -> collab_core::Result<B::Tensor>,
        fr: fn(&ReferenceBackend, &RefTensor) -> collab_core::Result<RefTensor>,
    ) -> Option<()> {
        let b = self.b;
        let shape = self.shape(1..=4);
        let h = self.host(&shape, lo, hi);
        let (x, xr, desc) = self.input("x", &h)?;
        let what = format!("{op} of {desc} (values in [{lo}, {hi}))");
        let g = call(|| f(b, &x));
        let want = fr(&self.r, &xr);
        let tol = self.tol;
        self.check(op, &what, g, want, tol, 1.0)
    }
}
