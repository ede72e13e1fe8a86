//! The calibrated roofline (SPEC §7): `time = max(flops / attainable(intensity), bytes /
//! bandwidth)`, with the attainable rate a monotone curve ([`RateCurve`]) interpolated over
//! measured `(intensity, achieved FLOP/s)` points, one curve per operator class.
//!
//! Extension, off by default (`size_bands = 1` is exactly the model above): on a CPU the rate at
//! one intensity still depends on the operator's size: a fixed per-call cost dominates small
//! operators, and bytes come from L2, L3 or DRAM depending on the working set. With
//! `size_bands = k > 1` each class's points are split by bytes moved into up to `k` bands of
//! equal count (at least [`MIN_BAND_POINTS`] each), one monotone curve over intensity is fitted
//! per band, and the rate at `(intensity, bytes)` interpolates the two bands around `bytes`
//! (linearly in log rate over log bytes; the nearest band beyond the ends). The rate stays
//! monotone in intensity at every size. Measured on this project's CPU, decode linears (all at
//! intensity ≈ 0.5) range from 0.6 to 17 GFLOP/s with size alone; see
//! `cargo xtask exp calibrate-cost-model`.
//!
//! A [`Calibration`] is the measured file (a device name, its price, its bandwidth and timed
//! operators); [`Calibration::fit`] turns it into a [`CalibratedRoofline`] cost model, whose
//! [`CalibratedRoofline::spec`] is a [`DeviceSpec`] for the planners that want one: the way to
//! add a device from a measured calibration file rather than a datasheet.
//! `cargo xtask exp calibrate-cost-model` writes such a file for this machine's CPU.

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

use collab_core::cost::{CostModel, Workload};
use collab_core::graph::OpClass;
use collab_core::{Error, Result};

use super::DeviceSpec;
use super::roofline::operator_seconds;
use super::spline::{Knot, RateCurve};

/// One timed operator.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct CalibrationPoint {
    /// Its cost class.
    pub class: OpClass,
    /// Floating-point operations.
    pub flops: u64,
    /// Bytes read plus bytes written.
    pub bytes: u64,
    /// Measured seconds (a median).
    pub seconds: f64,
}

impl CalibrationPoint {
    /// FLOPs per byte.
    pub fn intensity(&self) -> f64 {
        self.flops as f64 / self.bytes.max(1) as f64
    }

    /// Achieved FLOP/s.
    pub fn rate(&self) -> f64 {
        self.flops as f64 / self.seconds
    }

    /// The workload a cost model prices for this operator.
    pub fn workload(&self) -> Workload {
        Workload::Operator {
            class: self.class,
            flops: self.flops,
            bytes: self.bytes,
        }
    }
}

/// A device's measured calibration: what [`Calibration::fit`] turns into a cost model.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Calibration {
    /// Device name (`cpu-2core-candle-f32`).
    pub device: String,
    /// Price of one second of compute in dollars (0 for the user's own device).
    pub price_per_second: f64,
    /// Memory bandwidth in bytes/s (measured or from a datasheet).
    pub bandwidth: f64,
    /// Size bands per class (1, the default: one curve over intensity per class, SPEC §7).
    #[serde(default = "one_band")]
    pub size_bands: usize,
    /// Timed operators.
    pub points: Vec<CalibrationPoint>,
}

fn one_band() -> usize {
    1
}

/// Fewest points in a size band.
pub const MIN_BAND_POINTS: usize = 6;

impl Calibration {
    /// Checks the numbers: bandwidth finite and positive, price finite and non-negative, every
    /// point's seconds finite and positive, and at least one point with FLOPs.
    ///
    /// # Errors
    /// [`Error::Config`] naming the device and what is wrong.
    pub fn validate(&self) -> Result<()> {
        let bad = |what: String| {
            Err(Error::Config(format!(
                "calibration `{}`: {what}",
                self.device
            )))
        };
        if !(self.bandwidth.is_finite() && self.bandwidth > 0.0) {
            return bad(format!("bandwidth {} must be > 0", self.bandwidth));
        }
        if !(self.price_per_second.is_finite() && self.price_per_second >= 0.0) {
            return bad(format!(
                "price_per_second {} must be >= 0",
                self.price_per_second
            ));
        }
        if self.size_bands == 0 {
            return bad("size_bands must be >= 1".into());
        }
        if let Some((i, p)) = self
            .points
            .iter()
            .enumerate()
            .find(|(_, p)| !(p.seconds.is_finite() && p.seconds > 0.0))
        {
            return bad(format!("point {i} has seconds = {}", p.seconds));
        }
        if !self.points.iter().any(|p| p.flops > 0) {
            return bad("no point with FLOPs to fit a rate curve to".into());
        }
        Ok(())
    }

    /// Saves as pretty JSON.
    ///
    /// # Errors
    /// [`Error::Io`] naming the file.
    pub fn save(&self, path: &Path) -> Result<()> {
        collab_core::json::save(self, path)
    }

    /// Loads and validates a file written by [`Calibration::save`].
    ///
    /// # Errors
    /// [`Error::Io`] if it cannot be read, [`Error::BadFile`] naming the file if it does not
    /// parse or its numbers are invalid.
    pub fn load(path: &Path) -> Result<Self> {
        let cal: Calibration = collab_core::json::load(path)?;
        cal.validate().map_err(|e| Error::BadFile {
            path: path.to_path_buf(),
            message: e.to_string(),
        })?;
        Ok(cal)
    }

    /// Fits the attainable rate of each operator class from its points with FLOPs (in
    /// [`Calibration::size_bands`] size bands); a class with fewer than two such points uses the
    /// rate fitted over every class together.
    ///
    /// # Errors
    /// As [`Calibration::validate`].
    pub fn fit(&self) -> Result<CalibratedRoofline> {
        self.validate()?;
        let timed: Vec<&CalibrationPoint> = self.points.iter().filter(|p| p.flops > 0).collect();
        let pooled = ClassCurves::fit(&timed, self.size_bands)?;
        let mut by_class: BTreeMap<OpClass, Vec<&CalibrationPoint>> = BTreeMap::new();
        for p in &timed {
            by_class.entry(p.class).or_default().push(p);
        }
        let curves = by_class
            .into_iter()
            .filter(|(_, k)| k.len() >= 2)
            .map(|(c, k)| Ok((c, ClassCurves::fit(&k, self.size_bands)?)))
            .collect::<Result<_>>()?;
        Ok(CalibratedRoofline {
            device: self.device.clone(),
            bandwidth: self.bandwidth,
            price_per_second: self.price_per_second,
            curves,
            pooled,
        })
    }
}

/// The curve over intensity of the operators of one size band.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SizeBand {
    /// Mean `ln bytes` of the band's points: where its curve applies exactly.
    pub log_bytes: f64,
    /// Attainable rate over intensity.
    pub curve: RateCurve,
}

/// The attainable rate of one operator class: monotone curves over intensity, one per size
/// band, by increasing size (one band: SPEC §7's single curve).
///
/// Serialised as its bands; loading refuses an empty or unsorted list.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "Vec<SizeBand>", into = "Vec<SizeBand>")]
pub struct ClassCurves {
    bands: Vec<SizeBand>,
}

impl TryFrom<Vec<SizeBand>> for ClassCurves {
    type Error = Error;

    fn try_from(bands: Vec<SizeBand>) -> Result<Self> {
        let sorted = bands.windows(2).all(|w| w[0].log_bytes <= w[1].log_bytes);
        if bands.is_empty() || !sorted || bands.iter().any(|b| !b.log_bytes.is_finite()) {
            return Err(Error::InvalidInput(
                "class curves need at least one size band, by increasing finite log_bytes".into(),
            ));
        }
        Ok(ClassCurves { bands })
    }
}

impl From<ClassCurves> for Vec<SizeBand> {
    fn from(c: ClassCurves) -> Self {
        c.bands
    }
}

impl ClassCurves {
    /// Up to `bands` equal-count bands by bytes moved, each of at least [`MIN_BAND_POINTS`]
    /// points (one band if there are fewer).
    fn fit(points: &[&CalibrationPoint], bands: usize) -> Result<Self> {
        let mut sorted = points.to_vec();
        sorted.sort_by_key(|p| p.bytes);
        let n = sorted.len();
        let k = bands.min(n / MIN_BAND_POINTS).max(1);
        let bands = (0..k)
            .map(|b| {
                let band = &sorted[b * n / k..(b + 1) * n / k];
                let knots: Vec<Knot> = band
                    .iter()
                    .map(|p| Knot {
                        intensity: p.intensity(),
                        rate: p.rate(),
                    })
                    .collect();
                let log_bytes = band
                    .iter()
                    .map(|p| (p.bytes.max(1) as f64).ln())
                    .sum::<f64>()
                    / band.len().max(1) as f64;
                Ok(SizeBand {
                    log_bytes,
                    curve: RateCurve::fit(&knots)?,
                })
            })
            .collect::<Result<_>>()?;
        Ok(ClassCurves { bands })
    }

    /// The bands, by increasing size.
    pub fn bands(&self) -> &[SizeBand] {
        &self.bands
    }

    /// Attainable FLOP/s at `intensity` for an operator moving `bytes`.
    pub fn rate(&self, intensity: f64, bytes: u64) -> f64 {
        let s = (bytes.max(1) as f64).ln();
        let b = &self.bands;
        let j = b.partition_point(|band| band.log_bytes < s);
        if j == 0 {
            return b[0].curve.rate(intensity);
        }
        if j == b.len() {
            return b[j - 1].curve.rate(intensity);
        }
        let u = (s - b[j - 1].log_bytes) / (b[j].log_bytes - b[j - 1].log_bytes);
        let lo = b[j - 1].curve.rate(intensity).ln();
        let hi = b[j].curve.rate(intensity).ln();
        ((1.0 - u) * lo + u * hi).exp()
    }

    /// The highest rate of any band.
    pub fn max_rate(&self) -> f64 {
        self.bands
            .iter()
            .map(|b| b.curve.max_rate())
            .fold(0.0, f64::max)
    }
}

/// A roofline whose attainable compute rate is a measured curve per operator class.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CalibratedRoofline {
    /// Device name.
    pub device: String,
    /// Memory bandwidth in bytes/s.
    pub bandwidth: f64,
    /// Price of one second in dollars.
    pub price_per_second: f64,
    /// Rates of the classes that had at least two points.
    pub curves: BTreeMap<OpClass, ClassCurves>,
    /// The rate fitted over every point, for the other classes.
    pub pooled: ClassCurves,
}

impl CalibratedRoofline {
    /// The curves that price `class`.
    pub fn curves(&self, class: OpClass) -> &ClassCurves {
        self.curves.get(&class).unwrap_or(&self.pooled)
    }

    /// Attainable FLOP/s of a `class` operator at `intensity` moving `bytes`.
    pub fn rate(&self, class: OpClass, intensity: f64, bytes: u64) -> f64 {
        self.curves(class).rate(intensity, bytes)
    }

    /// The device as a plain roofline sees it: peak = the highest attainable rate of any curve,
    /// with this bandwidth and price.
    pub fn spec(&self) -> DeviceSpec {
        let peak = self
            .curves
            .values()
            .chain(std::iter::once(&self.pooled))
            .map(ClassCurves::max_rate)
            .fold(0.0, f64::max);
        DeviceSpec {
            name: self.device.clone(),
            peak_flops: peak,
            bandwidth: self.bandwidth,
            price_per_second: self.price_per_second,
        }
    }
}

impl CostModel for CalibratedRoofline {
    fn name(&self) -> String {
        format!("calibrated-roofline({})", self.device)
    }

    fn seconds(&self, work: &Workload) -> Result<f64> {
        let (class, bytes) = match *work {
            Workload::Operator { class, bytes, .. } => (class, bytes),
            _ => (OpClass::Linear, 0), // operator_seconds refuses it
        };
        operator_seconds(self, work, |i| self.rate(class, i, bytes), self.bandwidth)
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn point(class: OpClass, flops: u64, bytes: u64, seconds: f64) -> CalibrationPoint {
        CalibrationPoint {
            class,
            flops,
            bytes,
            seconds,
        }
    }

    /// A made-up device: linear reaches 1e9 * intensity up to 50 GFLOP/s, attention half that,
    /// elementwise has a single point (so it falls back to the pooled curve).
    fn calibration() -> Calibration {
        let mut points = Vec::new();
        for (i, intensity) in [0.25f64, 0.5, 1.0, 4.0, 16.0, 64.0, 256.0]
            .iter()
            .enumerate()
        {
            let bytes = 1_000_000 * (i as u64 + 1);
            let flops = (intensity * bytes as f64) as u64;
            let lin = (1e9 * intensity).min(50e9);
            points.push(point(OpClass::Linear, flops, bytes, flops as f64 / lin));
            points.push(point(
                OpClass::Attention,
                flops,
                bytes,
                flops as f64 / (lin / 2.0),
            ));
        }
        points.push(point(OpClass::Elementwise, 1000, 8000, 1e-6));
        Calibration {
            device: "test-device".into(),
            price_per_second: 1e-5,
            bandwidth: 1e12,
            size_bands: 1,
            points,
        }
    }

    #[test]
    fn the_fitted_model_reproduces_its_training_points() -> Result<()> {
        let cal = calibration();
        let model = cal.fit()?;
        for p in cal
            .points
            .iter()
            .filter(|p| p.class != OpClass::Elementwise)
        {
            let s = model.seconds(&p.workload())?;
            assert!((s / p.seconds - 1.0).abs() < 1e-6, "{p:?}: {s}");
        }
        assert!(model.curves.contains_key(&OpClass::Linear));
        assert!(!model.curves.contains_key(&OpClass::Elementwise));
        assert_eq!(model.curves(OpClass::Elementwise), &model.pooled);
        // Bandwidth still floors the time: a huge-bytes, zero-FLOP operator.
        let copy = Workload::Operator {
            class: OpClass::Elementwise,
            flops: 0,
            bytes: 2_000_000_000_000,
        };
        assert!((model.seconds(&copy)? - 2.0).abs() < 1e-12);
        Ok(())
    }

    #[test]
    fn the_spec_takes_the_best_rate_and_the_file_round_trips() -> Result<()> {
        let cal = calibration();
        let model = cal.fit()?;
        let spec = model.spec();
        assert!((spec.peak_flops / 50e9 - 1.0).abs() < 1e-9);
        assert_eq!(spec.bandwidth, 1e12);
        assert_eq!(spec.price_per_second, 1e-5);
        spec.validate()?;
        let path = std::env::temp_dir().join(format!("calibration-{}.json", std::process::id()));
        cal.save(&path)?;
        let back = Calibration::load(&path)?;
        std::fs::remove_file(&path).map_err(|e| Error::io(&path, e))?;
        assert_eq!(back, cal);
        let json = serde_json::to_string(&model).map_err(|e| Error::InvalidInput(e.to_string()))?;
        let again: CalibratedRoofline =
            serde_json::from_str(&json).map_err(|e| Error::InvalidInput(e.to_string()))?;
        assert_eq!(again.curves.len(), model.curves.len());
        for p in &cal.points {
            let (a, b) = (again.seconds(&p.workload())?, model.seconds(&p.workload())?);
            assert!((a / b - 1.0).abs() < 1e-12);
        }
        let empty = r#"{"device": "d", "bandwidth": 1, "price_per_second": 0, "curves": {},
                       "pooled": []}"#;
        assert!(serde_json::from_str::<CalibratedRoofline>(empty).is_err());
        Ok(())
    }

    /// Decode-like operators: one intensity, a rate that grows with size (a fixed cost per
    /// call), as measured on CPUs.
    fn sized(bands: usize) -> Calibration {
        let points = (0..24)
            .map(|i| {
                let bytes = 1000u64 << (i / 2);
                let flops = bytes / 2 + i as u64 % 2;
                point(OpClass::Linear, flops, bytes, 20e-6 + bytes as f64 / 20e9)
            })
            .collect();
        Calibration {
            size_bands: bands,
            ..Calibration {
                points,
                ..calibration()
            }
        }
    }

    #[test]
    fn size_bands_follow_a_rate_that_depends_on_size() -> Result<()> {
        let err = |cal: &Calibration| -> Result<f64> {
            let model = cal.fit()?;
            let mut sum = 0.0;
            for p in &cal.points {
                sum += (model.seconds(&p.workload())? / p.seconds - 1.0).abs();
            }
            Ok(sum / cal.points.len() as f64)
        };
        // One curve over intensity cannot tell these operators apart; four bands can, but for
        // the smallest and largest sizes, beyond the outer bands' centres.
        let (one, four) = (err(&sized(1))?, err(&sized(4))?);
        // Measured: 3.05 and 0.10.
        assert!(one > 0.5 && four < 0.2, "{one} {four}");
        let model = sized(4).fit()?;
        assert_eq!(model.curves(OpClass::Linear).bands().len(), 4);
        // 24 points allow at most 24 / MIN_BAND_POINTS bands.
        assert_eq!(sized(50).fit()?.curves(OpClass::Linear).bands().len(), 4);
        Ok(())
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(128))]

        #[test]
        fn banded_rates_are_monotone_in_intensity_at_every_size(
            raw in proptest::collection::vec((1u64..1 << 30, 1u64..1 << 30, -9.0f64..-1.0), 2..60),
            bands in 1usize..10,
            probe_bytes in 1u64..1 << 31,
        ) {
            let points = raw
                .iter()
                .map(|&(flops, bytes, s)| point(OpClass::Attention, flops, bytes, 10f64.powf(s)))
                .collect();
            let cal = Calibration { size_bands: bands, points, ..calibration() };
            let model = cal.fit()?;
            let mut last = 0.0;
            for e in -40..40 {
                let r = model.rate(OpClass::Attention, 2f64.powf(f64::from(e) / 2.0), probe_bytes);
                prop_assert!(r.is_finite() && r > 0.0);
                prop_assert!(r >= last * (1.0 - 1e-12), "{r} after {last}");
                last = r;
            }
        }
    }

    #[test]
    fn other_workloads_get_no_prediction() -> Result<()> {
        let model = calibration().fit()?;
        let block = Workload::Block {
            layer: 0,
            batch: 1,
            tokens: 4,
        };
        assert!(matches!(
            model.seconds(&block),
            Err(Error::NoPrediction { .. })
        ));
        Ok(())
    }

    #[test]
    fn bad_files_are_typed_errors_naming_the_file() {
        let dir = std::env::temp_dir();
        let missing = dir.join("no-such-calibration-file.json");
        assert!(matches!(
            Calibration::load(&missing),
            Err(Error::Io { path, .. }) if path == missing
        ));
        let cases = [
            ("garbage", "{ not json"),
            ("shape", r#"{"device": "d", "price_per_second": 0}"#),
            (
                "bandwidth",
                r#"{"device": "d", "price_per_second": 0, "bandwidth": -1,
                   "points": [{"class": "linear", "flops": 10, "bytes": 10, "seconds": 1}]}"#,
            ),
            (
                "seconds",
                r#"{"device": "d", "price_per_second": 0, "bandwidth": 1,
                   "points": [{"class": "linear", "flops": 10, "bytes": 10, "seconds": 0}]}"#,
            ),
            (
                "bands",
                r#"{"device": "d", "price_per_second": 0, "bandwidth": 1, "size_bands": 0,
                   "points": [{"class": "linear", "flops": 10, "bytes": 10, "seconds": 1}]}"#,
            ),
            (
                "empty",
                r#"{"device": "d", "price_per_second": 0, "bandwidth": 1, "points": []}"#,
            ),
        ];
        for (name, text) in cases {
            let path = dir.join(format!("calibration-{name}-{}.json", std::process::id()));
            std::fs::write(&path, text).expect("temp dir is writable");
            let got = Calibration::load(&path);
            std::fs::remove_file(&path).expect("just written");
            match got {
                Err(Error::BadFile { path: p, message }) => {
                    assert_eq!(p, path, "{name}");
                    assert!(!message.is_empty());
                }
                other => panic!("{name}: expected BadFile, got {other:?}"),
            }
        }
    }
}
