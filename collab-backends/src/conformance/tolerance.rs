//! How close a value must be to the reference's, and the comparison that finds the worst
//! offender.

/// How far a backend's value may be from the reference's: `abs * scale + rel * |expected|`,
/// with `scale` as described in the [module documentation](crate::conformance).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Tolerance {
    /// The absolute part, multiplied by the check's scale.
    pub abs: f64,
    /// The part relative to the expected value.
    pub rel: f64,
}

impl Tolerance {
    /// The default for backends computing in `f32`.
    pub const F32: Self = Self {
        abs: 1e-4,
        rel: 1e-4,
    };
    /// The weight tolerance of a backend with Q8_0 linear weights (and Q8_0 activations in
    /// `linear`, as candle's CPU quantised matmul does), for inputs in `[-1, 1)`: see the
    /// measured errors in `collab-backends/README.md`.
    pub const Q8_WEIGHTS: Self = Self {
        abs: 1.5e-2,
        rel: 0.0,
    };
    /// The weight tolerance of a backend with Q4_0 linear weights (Q8_0 activations in
    /// `linear`), for inputs in `[-1, 1)`: see the measured errors in
    /// `collab-backends/README.md`.
    pub const Q4_WEIGHTS: Self = Self {
        abs: 2e-1,
        rel: 0.0,
    };
    /// Exact equality (used for layout, indexing and index results).
    pub const EXACT: Self = Self { abs: 0.0, rel: 0.0 };

    /// The largest difference allowed from `expected` at `scale`.
    pub fn allowed(&self, expected: f64, scale: f64) -> f64 {
        self.abs * scale + self.rel * expected.abs()
    }
}

impl Default for Tolerance {
    fn default() -> Self {
        Self::F32
    }
}

/// The worst failing element of a comparison.
pub(super) struct Worst {
    pub(super) flat: usize,
    pub(super) bad: usize,
    pub(super) diff: f64,
    pub(super) allowed: f64,
}

/// `None` if every value is within tolerance, else the worst offender.
pub(super) fn compare_values(
    got: &[f32],
    want: &[f64],
    tol: Tolerance,
    scale: f64,
) -> Option<Worst> {
    let mut worst: Option<(f64, Worst)> = None;
    let mut bad = 0;
    for (flat, (&g, &w)) in got.iter().zip(want).enumerate() {
        let g = f64::from(g);
        let allowed = if w.is_finite() {
            tol.allowed(w, scale)
        } else {
            0.0
        };
        let (ok, diff) = if w.is_nan() {
            (g.is_nan(), if g.is_nan() { 0.0 } else { f64::INFINITY })
        } else if w.is_infinite() || !g.is_finite() {
            (g == w, if g == w { 0.0 } else { f64::INFINITY })
        } else {
            let d = (g - w).abs();
            (d <= allowed, d)
        };
        if ok {
            continue;
        }
        bad += 1;
        let key = if allowed > 0.0 {
            diff / allowed
        } else {
            f64::INFINITY
        };
        let replace = match &worst {
            None => true,
            Some((k, w)) => key > *k || (key == *k && diff > w.diff),
        };
        if replace {
            worst = Some((
                key,
                Worst {
                    flat,
                    bad: 0,
                    diff,
                    allowed,
                },
            ));
        }
    }
    worst.map(|(_, mut w)| {
        w.bad = bad;
        w
    })
}
