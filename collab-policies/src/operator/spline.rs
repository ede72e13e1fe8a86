//! The attainable-rate curve of a calibrated roofline (SPEC §7): achieved FLOP/s as a monotone
//! function of arithmetic intensity, interpolated over measured points.
//!
//! Fitting: sort the points by intensity, merge equal intensities (geometric mean of their
//! rates, weighted by count), make the rates non-decreasing by isotonic regression
//! (pool-adjacent-violators, weighted, on log rate), then interpolate the knots with
//! Fritsch–Carlson monotone cubic Hermite interpolation in log-log space (Fritsch & Carlson,
//! "Monotone piecewise cubic interpolation", SIAM J. Numer. Anal. 17(2), 1980). Outside the
//! measured range the curve is constant (the first or last knot's rate): no extrapolation past
//! what was measured.
//!
//! Why monotone: a higher intensity never lowers the attainable rate on a roofline, and a
//! non-monotone fit of noisy timings would make a planner prefer an operator for being *less*
//! efficient. Why log-log: rates and intensities span decades, and a roofline is piecewise
//! linear in log-log axes.
//!
//! Written here rather than taken from crates.io: `splines` (the well-kept interpolation crate)
//! has no monotone Hermite mode, `scirs2-interpolate` has PCHIP but brings a large numeric
//! stack for ~60 lines, and the small PCHIP crates are young single-author crates without serde;
//! none does the isotonic pre-fit, which noisy timings need (Fritsch–Carlson alone only
//! preserves monotonicity that the data already has).

use serde::{Deserialize, Serialize};

use collab_core::{Error, Result};

/// One knot of a [`RateCurve`]: an arithmetic intensity and the FLOP/s attained there.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Knot {
    /// FLOPs per byte moved.
    pub intensity: f64,
    /// Achieved FLOP/s.
    pub rate: f64,
}

/// A monotone non-decreasing curve of attainable FLOP/s over arithmetic intensity.
///
/// Serialised as its knots; loading re-derives the slopes (and re-fits knots that are not
/// monotone).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "Vec<Knot>", into = "Vec<Knot>")]
pub struct RateCurve {
    /// The monotone-fitted knots, by strictly increasing intensity.
    knots: Vec<Knot>,
    /// `ln intensity` of the knots.
    x: Vec<f64>,
    /// `ln rate` of the knots.
    y: Vec<f64>,
    /// Fritsch–Carlson slopes `d ln rate / d ln intensity` at the knots.
    m: Vec<f64>,
}

/// Relative gap under which two intensities count as the same knot.
const SAME_INTENSITY: f64 = 1e-9;

impl RateCurve {
    /// Fits the curve to measured `(intensity, rate)` points, in any order.
    ///
    /// # Errors
    /// [`Error::InvalidInput`] if there is no point, or a point's intensity or rate is not a
    /// finite positive number (it names the point).
    pub fn fit(points: &[Knot]) -> Result<Self> {
        if points.is_empty() {
            return Err(Error::InvalidInput(
                "a rate curve needs at least one measured point".into(),
            ));
        }
        if let Some(p) = points.iter().find(|p| {
            !(p.intensity.is_finite() && p.intensity > 0.0 && p.rate.is_finite() && p.rate > 0.0)
        }) {
            return Err(Error::InvalidInput(format!(
                "rate-curve point (intensity {}, rate {}) must have finite positive values",
                p.intensity, p.rate
            )));
        }
        let mut logs: Vec<(f64, f64)> = points
            .iter()
            .map(|p| (p.intensity.ln(), p.rate.ln()))
            .collect();
        logs.sort_by(|a, b| a.0.total_cmp(&b.0));
        // Merge equal intensities into (x, mean ln rate, weight) blocks.
        let mut merged: Vec<(f64, f64, f64)> = Vec::new();
        for (x, y) in logs {
            match merged.last_mut() {
                Some((mx, my, w)) if x - *mx <= SAME_INTENSITY => {
                    *my = (*my * *w + y) / (*w + 1.0);
                    *w += 1.0;
                }
                _ => merged.push((x, y, 1.0)),
            }
        }
        let x: Vec<f64> = merged.iter().map(|b| b.0).collect();
        let y = isotonic(
            &merged.iter().map(|b| b.1).collect::<Vec<_>>(),
            &merged.iter().map(|b| b.2).collect::<Vec<_>>(),
        );
        Ok(Self::from_monotone(x, y))
    }

    /// The curve through knots already sorted, distinct and non-decreasing (in logs).
    fn from_monotone(x: Vec<f64>, y: Vec<f64>) -> Self {
        let m = fritsch_carlson(&x, &y);
        let knots = x
            .iter()
            .zip(&y)
            .map(|(x, y)| Knot {
                intensity: x.exp(),
                rate: y.exp(),
            })
            .collect();
        RateCurve { knots, x, y, m }
    }

    /// Attainable FLOP/s at `intensity` (the first knot's rate for a non-positive or NaN
    /// intensity, constant beyond the last knot).
    pub fn rate(&self, intensity: f64) -> f64 {
        let n = self.x.len();
        if intensity.is_nan() || intensity <= 0.0 || intensity.ln() <= self.x[0] {
            return self.knots[0].rate;
        }
        let t = intensity.ln();
        if t >= self.x[n - 1] {
            return self.knots[n - 1].rate;
        }
        // x[k] < t < x[k + 1] (t equal to a knot lands on its left segment's end, exactly).
        let k = self.x.partition_point(|&v| v < t) - 1;
        let h = self.x[k + 1] - self.x[k];
        let s = (t - self.x[k]) / h;
        let (s2, s3) = (s * s, s * s * s);
        let y = (2.0 * s3 - 3.0 * s2 + 1.0) * self.y[k]
            + (s3 - 2.0 * s2 + s) * h * self.m[k]
            + (-2.0 * s3 + 3.0 * s2) * self.y[k + 1]
            + (s3 - s2) * h * self.m[k + 1];
        // Rounding can step outside the segment's range by an ulp; the exact cubic cannot.
        y.clamp(self.y[k], self.y[k + 1]).exp()
    }

    /// The monotone-fitted knots, by increasing intensity.
    pub fn knots(&self) -> &[Knot] {
        &self.knots
    }

    /// The highest attainable rate (the last knot's).
    pub fn max_rate(&self) -> f64 {
        self.knots[self.knots.len() - 1].rate
    }
}

/// Weighted isotonic (non-decreasing) regression by pool-adjacent-violators.
fn isotonic(y: &[f64], w: &[f64]) -> Vec<f64> {
    // Blocks of (mean, weight, length).
    let mut blocks: Vec<(f64, f64, usize)> = Vec::with_capacity(y.len());
    for (&v, &wt) in y.iter().zip(w) {
        blocks.push((v, wt, 1));
        while blocks.len() > 1 && blocks[blocks.len() - 2].0 > blocks[blocks.len() - 1].0 {
            let (v2, w2, n2) = blocks.pop().unwrap_or((0.0, 0.0, 0));
            let last = blocks.len() - 1;
            let (v1, w1, n1) = blocks[last];
            blocks[last] = ((v1 * w1 + v2 * w2) / (w1 + w2), w1 + w2, n1 + n2);
        }
    }
    blocks
        .iter()
        .flat_map(|&(v, _, n)| std::iter::repeat_n(v, n))
        .collect()
}

/// Fritsch–Carlson slopes for non-decreasing data at strictly increasing `x`: three-point
/// averages of the secants (zero at a flat neighbour), then each segment's pair of slopes scaled
/// into the circle of radius 3 (in units of its secant) that guarantees a monotone cubic.
fn fritsch_carlson(x: &[f64], y: &[f64]) -> Vec<f64> {
    let n = x.len();
    if n < 2 {
        return vec![0.0; n];
    }
    let d: Vec<f64> = (0..n - 1)
        .map(|k| (y[k + 1] - y[k]) / (x[k + 1] - x[k]))
        .collect();
    let mut m = vec![0.0; n];
    m[0] = d[0];
    m[n - 1] = d[n - 2];
    for k in 1..n - 1 {
        m[k] = if d[k - 1] * d[k] <= 0.0 {
            0.0
        } else {
            (d[k - 1] + d[k]) / 2.0
        };
    }
    for k in 0..n - 1 {
        if d[k] == 0.0 {
            m[k] = 0.0;
            m[k + 1] = 0.0;
            continue;
        }
        let (a, b) = (m[k] / d[k], m[k + 1] / d[k]);
        let r = a * a + b * b;
        if r > 9.0 {
            let tau = 3.0 / r.sqrt();
            m[k] = tau * a * d[k];
            m[k + 1] = tau * b * d[k];
        }
    }
    m
}

impl TryFrom<Vec<Knot>> for RateCurve {
    type Error = Error;

    fn try_from(knots: Vec<Knot>) -> Result<Self> {
        RateCurve::fit(&knots)
    }
}

impl From<RateCurve> for Vec<Knot> {
    fn from(c: RateCurve) -> Self {
        c.knots
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn knots(points: &[(f64, f64)]) -> Vec<Knot> {
        points
            .iter()
            .map(|&(intensity, rate)| Knot { intensity, rate })
            .collect()
    }

    /// Random points spanning decades of intensity and rate, with duplicates and noise.
    fn points() -> impl Strategy<Value = Vec<Knot>> {
        proptest::collection::vec((0u32..40, -3.0f64..3.0, 6.0f64..12.0), 1..40).prop_map(|v| {
            v.into_iter()
                .map(|(q, e, r)| Knot {
                    // Quantised exponents give repeated intensities.
                    intensity: 10f64.powf(e + f64::from(q % 7) * 0.25),
                    rate: 10f64.powf(r),
                })
                .collect()
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        #[test]
        fn the_curve_is_monotone_finite_and_positive(p in points(), probes in
            proptest::collection::vec(-5.0f64..6.0, 2..64)) {
            let c = RateCurve::fit(&p)?;
            let mut xs: Vec<f64> = probes.iter().map(|e| 10f64.powf(*e)).collect();
            xs.extend(c.knots().iter().map(|k| k.intensity));
            xs.sort_by(f64::total_cmp);
            let rates: Vec<f64> = xs.iter().map(|&x| c.rate(x)).collect();
            for r in &rates {
                prop_assert!(r.is_finite() && *r > 0.0, "rate {r}");
            }
            for w in rates.windows(2) {
                prop_assert!(w[1] >= w[0] * (1.0 - 1e-12), "{} then {}", w[0], w[1]);
            }
        }

        #[test]
        fn the_curve_passes_through_its_monotone_knots(p in points()) {
            let c = RateCurve::fit(&p)?;
            let k = c.knots();
            for w in k.windows(2) {
                prop_assert!(w[0].intensity < w[1].intensity && w[0].rate <= w[1].rate);
            }
            for knot in k {
                let r = c.rate(knot.intensity);
                prop_assert!((r / knot.rate - 1.0).abs() < 1e-9, "{r} vs {knot:?}");
            }
            prop_assert!(c.rate(0.0) == k[0].rate && c.rate(1e30) == c.max_rate());
        }

        #[test]
        fn already_monotone_data_is_kept_and_serde_round_trips(p in points()) {
            let c = RateCurve::fit(&p)?;
            let again = RateCurve::fit(c.knots())?;
            prop_assert_eq!(again.knots().len(), c.knots().len());
            for (a, b) in again.knots().iter().zip(c.knots()) {
                prop_assert!((a.rate / b.rate - 1.0).abs() < 1e-12);
            }
            let json = serde_json::to_string(&c).map_err(|e| TestCaseError::fail(e.to_string()))?;
            let back: RateCurve =
                serde_json::from_str(&json).map_err(|e| TestCaseError::fail(e.to_string()))?;
            prop_assert!((back.rate(3.3) / c.rate(3.3) - 1.0).abs() < 1e-12);
        }
    }

    #[test]
    fn violators_are_pooled_and_duplicates_merged() -> Result<()> {
        // Rates 4, 1 at intensities 1, 2 pool to their geometric mean 2.
        let c = RateCurve::fit(&knots(&[(1.0, 4.0), (2.0, 1.0), (4.0, 8.0)]))?;
        let r: Vec<f64> = c.knots().iter().map(|k| k.rate).collect();
        assert!((r[0] - 2.0).abs() < 1e-12 && (r[1] - 2.0).abs() < 1e-12);
        assert!((r[2] - 8.0).abs() < 1e-12);
        // Two measurements at one intensity become one knot at their geometric mean.
        let d = RateCurve::fit(&knots(&[(1.0, 2.0), (1.0, 8.0), (3.0, 9.0)]))?;
        assert_eq!(d.knots().len(), 2);
        assert!((d.knots()[0].rate - 4.0).abs() < 1e-12);
        Ok(())
    }

    #[test]
    fn a_power_law_is_reproduced_between_knots() -> Result<()> {
        // rate = 1e9 * intensity is linear in log-log: the cubic reproduces it exactly.
        let c = RateCurve::fit(&knots(&[
            (0.5, 0.5e9),
            (2.0, 2e9),
            (8.0, 8e9),
            (32.0, 32e9),
        ]))?;
        for i in [0.7, 1.0, 3.0, 10.0, 20.0] {
            assert!((c.rate(i) / (1e9 * i) - 1.0).abs() < 1e-9, "at {i}");
        }
        let close = |a: f64, b: f64| (a / b - 1.0).abs() < 1e-12;
        assert!(close(c.rate(100.0), 32e9) && close(c.max_rate(), 32e9));
        assert!(close(c.rate(0.1), 0.5e9));
        Ok(())
    }

    #[test]
    fn bad_points_are_typed_errors() {
        assert!(matches!(RateCurve::fit(&[]), Err(Error::InvalidInput(_))));
        for bad in [
            (0.0, 1.0),
            (1.0, -1.0),
            (f64::NAN, 1.0),
            (1.0, f64::INFINITY),
        ] {
            assert!(matches!(
                RateCurve::fit(&knots(&[bad])),
                Err(Error::InvalidInput(_))
            ));
        }
        let json = r#"[{"intensity": -1.0, "rate": 3.0}]"#;
        assert!(serde_json::from_str::<RateCurve>(json).is_err());
    }
}
