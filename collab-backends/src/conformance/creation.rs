//! The `creation` family: `from_vec`, `to_vec`, `zeros`, `synchronize`, scalars and empty
//! tensors, index round trips.

use collab_core::Backend;
use rand::Rng;
use rand::seq::IndexedRandom;

use super::harness::{Got, Suite, call};
use super::host::{Host, Route};
use super::tolerance::Tolerance;

impl<B: Backend> Suite<'_, B> {
    pub(super) fn creation(&mut self) {
        self.round_trip();
        self.views_read_back();
        self.scalars_and_empty();
        self.index_round_trip();
    }

    fn round_trip(&mut self) -> Option<()> {
        let b = self.b;
        let shape = self.shape(1..=4);
        let mut h = self.host(&shape, -10.0, 10.0);
        let specials = [
            0.0,
            -0.0,
            1.5e-38,
            3.0e38,
            -3.0e38,
            f32::INFINITY,
            f32::NEG_INFINITY,
            f32::NAN,
            1.0 / 3.0,
        ];
        for _ in 0..3 {
            let i = self.below(h.data.len());
            h.data[i] = *specials.choose(&mut self.rng)?;
        }
        let what = format!("from_vec then to_vec of {shape:?} (with inf, NaN, extremes)");
        let g = call(|| b.from_vec(h.data.clone(), &shape));
        // Waiting for the device must succeed with work queued, and leave the values intact.
        self.got(
            "synchronize",
            "synchronize after from_vec",
            call(|| b.synchronize()),
        )?;
        let want = self.r.from_vec(h.data.clone(), &shape);
        self.check("from_vec", &what, g, want, Tolerance::EXACT, 1.0)?;
        let zshape = self.shape(1..=4);
        let g = call(|| b.zeros(&zshape));
        let want = self.r.zeros(&zshape);
        self.check(
            "zeros",
            &format!("zeros {zshape:?}"),
            g,
            want,
            Tolerance::EXACT,
            1.0,
        )
    }

    /// `to_vec` of permuted and narrowed views gives their logical values.
    fn views_read_back(&mut self) -> Option<()> {
        let shape = self.shape(2..=4);
        let h = self.host(&shape, -10.0, 10.0);
        let mut perm = self.permutation(shape.len());
        if perm.iter().enumerate().all(|(i, &p)| i == p) {
            perm.reverse();
        }
        let dim = self.below(shape.len());
        let before = self.below(3);
        let after = 1 + self.below(2);
        for route in [
            Route::Permuted(perm),
            Route::Narrowed { dim, before, after },
        ] {
            let Some((t, r, desc)) = self.input_via("x", &h, &route) else {
                continue;
            };
            let what = format!("to_vec of {desc}");
            self.check("to_vec", &what, Got::Ok(t), Ok(r), Tolerance::EXACT, 1.0);
        }
        Some(())
    }

    fn scalars_and_empty(&mut self) -> Option<()> {
        let b = self.b;
        let v = self.uniform(1, -5.0, 5.0);
        let g = call(|| b.from_vec(v.clone(), &[]));
        let want = self.r.from_vec(v.clone(), &[]);
        self.check(
            "from_vec",
            "a scalar (shape [])",
            g,
            want,
            Tolerance::EXACT,
            1.0,
        );
        let mut shape = self.shape(1..=3);
        let zero_at = self.below(shape.len());
        shape[zero_at] = 0;
        let what = format!("an empty tensor {shape:?}");
        let g = call(|| b.from_vec(Vec::new(), &shape));
        let want = self.r.from_vec(Vec::new(), &shape);
        self.check("from_vec", &what, g, want, Tolerance::EXACT, 1.0);
        let g = call(|| b.zeros(&shape));
        let want = self.r.zeros(&shape);
        self.check("zeros", &what, g, want, Tolerance::EXACT, 1.0)
    }

    fn index_round_trip(&mut self) -> Option<()> {
        let b = self.b;
        let shape = self.shape(1..=4);
        let n: usize = shape.iter().product();
        let mut data: Vec<u32> = (0..n).map(|_| self.rng.random()).collect();
        data[0] = u32::MAX;
        if n > 1 {
            data[n - 1] = 0;
        }
        let h = Host { data, shape };
        let what = format!("index_from_vec then index_to_vec of {:?}", h.shape);
        let g = call(|| b.index_from_vec(h.data.clone(), &h.shape));
        let want = self.r.index_from_vec(h.data.clone(), &h.shape);
        self.check_index("index_from_vec", &what, g, want);
        let (t, r, desc) = self.index_input("i", &h)?;
        let what = format!("index_to_vec of {desc}");
        self.check_index("index_to_vec", &what, Got::Ok(t), Ok(r))
    }
}
