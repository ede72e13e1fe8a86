//! Predictions, errors and files of the calibration experiment.

use std::fmt::Write as _;
use std::path::Path;

use anyhow::{Context, Result, bail};
use collab_core::cost::CostModel;
use collab_core::graph::OpClass;
use collab_policies::operator::{
    CalibratedRoofline, Calibration, CalibrationPoint, DeviceSpec, Roofline,
};

use super::super::plot::{Series, log_log_chart};
use super::Sample;
use super::shapes::Shape;

/// The models compared, in the order of the columns.
struct Models {
    /// The calibration's model (size bands as configured).
    calibrated: CalibratedRoofline,
    /// SPEC §7's model: one curve over intensity per class.
    single_curve: CalibratedRoofline,
    /// Peak = best measured FLOP/s, bandwidth = the calibration's.
    roofline: Roofline,
    /// Peak = best measured FLOP/s, bandwidth = streaming.
    roofline_stream: Roofline,
}

impl Models {
    fn new(fit: &Calibration, stream: f64) -> Result<Self> {
        let peak = fit
            .points
            .iter()
            .map(CalibrationPoint::rate)
            .fold(0.0, f64::max);
        let spec = |bandwidth: f64| DeviceSpec {
            name: fit.device.clone(),
            peak_flops: peak,
            bandwidth,
            price_per_second: fit.price_per_second,
        };
        let single = Calibration {
            size_bands: 1,
            ..fit.clone()
        };
        Ok(Models {
            calibrated: fit.fit()?,
            single_curve: single.fit()?,
            roofline: Roofline::new(spec(fit.bandwidth))?,
            roofline_stream: Roofline::new(spec(stream))?,
        })
    }

    /// Predicted seconds of each model.
    fn predict(&self, p: &CalibrationPoint) -> Result<[f64; MODELS]> {
        let w = p.workload();
        Ok([
            self.calibrated.seconds(&w)?,
            self.single_curve.seconds(&w)?,
            self.roofline.seconds(&w)?,
            self.roofline_stream.seconds(&w)?,
        ])
    }
}

/// How many models [`Models::predict`] compares.
const MODELS: usize = 4;

/// Groups of the error table: a name and which samples it holds.
type Group = (String, Box<dyn Fn(&Sample) -> bool>);

fn groups() -> Vec<Group> {
    let class = |c: OpClass| move |s: &Sample| s.point.class == c;
    let mut g: Vec<Group> = vec![
        (
            "linear+attention".into(),
            Box::new(|s: &Sample| s.point.class != OpClass::Elementwise),
        ),
        ("linear".into(), Box::new(class(OpClass::Linear))),
        ("attention".into(), Box::new(class(OpClass::Attention))),
        ("softmax".into(), Box::new(class(OpClass::Softmax))),
        ("elementwise".into(), Box::new(class(OpClass::Elementwise))),
    ];
    for kind in [
        "linear",
        "attn_scores",
        "softmax",
        "attn_context",
        "rms_norm",
        "residual",
        "silu_mul",
    ] {
        for stage in ["prefill", "decode"] {
            g.push((
                format!("{kind}/{stage}"),
                Box::new(move |s: &Sample| s.shape.columns().0 == kind && s.shape.stage() == stage),
            ));
        }
    }
    g
}

fn mape(errors: &[f64]) -> f64 {
    if errors.is_empty() {
        f64::NAN
    } else {
        errors.iter().sum::<f64>() / errors.len() as f64
    }
}

/// Prints and writes the error table, `points.csv` and `curve.png`; returns the held-out MAPE
/// of the calibrated model over linear and attention operators.
pub(super) fn report(
    out: &Path,
    samples: &[Sample],
    fit: &Calibration,
    stream: f64,
) -> Result<f64> {
    let models = Models::new(fit, stream)?;
    let preds: Vec<[f64; MODELS]> = samples
        .iter()
        .map(|s| models.predict(&s.point))
        .collect::<Result<_>>()?;
    let err = |i: usize, m: usize| (preds[i][m] / samples[i].point.seconds - 1.0).abs();
    let mut table = String::from(
        "group,held_out,calibrated_mape,single_curve_mape,roofline_mape,roofline_stream_mape,\
         fit_points,calibrated_fit_mape\n",
    );
    println!(
        "held-out MAPE ({} size bands; single curve = SPEC's one curve per class)",
        fit.size_bands
    );
    println!(
        "{:<22} {:>5} {:>10} {:>10} {:>10} {:>10} {:>5} {:>10}",
        "group", "held", "calibrated", "1-curve", "roofline", "roof-strm", "fit", "cal-fit"
    );
    let mut headline = f64::NAN;
    for (name, keep) in groups() {
        let (held, fitted): (Vec<usize>, Vec<usize>) = (0..samples.len())
            .filter(|&i| keep(&samples[i]))
            .partition(|&i| samples[i].held_out);
        if held.is_empty() && fitted.is_empty() {
            continue;
        }
        let m: Vec<f64> = (0..MODELS)
            .map(|k| mape(&held.iter().map(|&i| err(i, k)).collect::<Vec<_>>()))
            .collect();
        let f = mape(&fitted.iter().map(|&i| err(i, 0)).collect::<Vec<_>>());
        if name == "linear+attention" {
            headline = m[0];
        }
        println!(
            "{name:<22} {:>5} {:>10.4} {:>10.4} {:>10.4} {:>10.4} {:>5} {:>10.4}",
            held.len(),
            m[0],
            m[1],
            m[2],
            m[3],
            fitted.len(),
            f
        );
        writeln!(
            table,
            "{name},{},{:.5},{:.5},{:.5},{:.5},{},{:.5}",
            held.len(),
            m[0],
            m[1],
            m[2],
            m[3],
            fitted.len(),
            f
        )?;
    }
    write(out, "mape.csv", &table)?;
    write_points(out, samples, &preds)?;
    plot(out, samples, &models.calibrated)?;
    Ok(headline)
}

fn write(out: &Path, name: &str, text: &str) -> Result<()> {
    let path = out.join(name);
    std::fs::write(&path, text).with_context(|| format!("cannot write {}", path.display()))
}

/// The columns `read_points` needs, at the start of the header.
const HEADER: &str = "kind,stage,a,b,c,d,class,flops,bytes,intensity,seconds";
/// The prediction columns after them.
const PREDICTED: &str =
    "achieved_gflops,split,calibrated_s,single_curve_s,roofline_s,roofline_stream_s";

fn class_name(c: OpClass) -> &'static str {
    match c {
        OpClass::Linear => "linear",
        OpClass::Attention => "attention",
        OpClass::Softmax => "softmax",
        OpClass::Elementwise => "elementwise",
    }
}

fn write_points(out: &Path, samples: &[Sample], preds: &[[f64; MODELS]]) -> Result<()> {
    let mut csv = format!("{HEADER},{PREDICTED}\n");
    for (s, p) in samples.iter().zip(preds) {
        let (kind, d) = s.shape.columns();
        let q = &s.point;
        writeln!(
            csv,
            "{kind},{},{},{},{},{},{},{},{},{:.4},{:.6e},{:.3},{},{:.6e},{:.6e},{:.6e},{:.6e}",
            s.shape.stage(),
            d[0],
            d[1],
            d[2],
            d[3],
            class_name(q.class),
            q.flops,
            q.bytes,
            q.intensity(),
            q.seconds,
            q.rate() / 1e9,
            if s.held_out { "held_out" } else { "fit" },
            p[0],
            p[1],
            p[2],
            p[3]
        )?;
    }
    write(out, "points.csv", &csv)
}

/// Reads the samples of an earlier run's `points.csv` (its split is redone from the seed).
pub(super) fn read_points(path: &Path) -> Result<Vec<Sample>> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    let mut lines = text.lines();
    if !lines.next().is_some_and(|h| h.starts_with(HEADER)) {
        bail!(
            "{}: not a calibrate-cost-model points.csv (header differs)",
            path.display()
        );
    }
    lines
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, line)| {
            let f: Vec<&str> = line.split(',').collect();
            let bad = || format!("{} line {}: `{line}`", path.display(), i + 2);
            if f.len() < 11 {
                bail!("{}: too few fields", bad());
            }
            let n = |k: usize| f[k].parse::<usize>().with_context(bad);
            let shape = Shape::from_columns(f[0], [n(2)?, n(3)?, n(4)?, n(5)?])?;
            let class = match f[6] {
                "linear" => OpClass::Linear,
                "attention" => OpClass::Attention,
                "softmax" => OpClass::Softmax,
                "elementwise" => OpClass::Elementwise,
                other => bail!("{}: unknown class `{other}`", bad()),
            };
            Ok(Sample {
                shape,
                point: CalibrationPoint {
                    class,
                    flops: f[7].parse().with_context(bad)?,
                    bytes: f[8].parse().with_context(bad)?,
                    seconds: f[10].parse().with_context(bad)?,
                },
                held_out: false,
            })
        })
        .collect()
}

/// Achieved GFLOP/s over intensity: the measured points of each class and its fitted curves,
/// one per size band (the smallest band lowest).
fn plot(out: &Path, samples: &[Sample], model: &CalibratedRoofline) -> Result<()> {
    let mut scatter = Vec::new();
    let mut lines = Vec::new();
    let mut colors = Vec::new();
    for class in OpClass::ALL {
        let pts: Vec<(f64, f64)> = samples
            .iter()
            .filter(|s| s.point.class == class && s.point.flops > 0)
            .map(|s| (s.point.intensity(), s.point.rate() / 1e9))
            .collect();
        if pts.is_empty() {
            continue;
        }
        let (lo, hi) = pts
            .iter()
            .fold((f64::MAX, f64::MIN), |(a, b), p| (a.min(p.0), b.max(p.0)));
        let name = class_name(class);
        let steps = 120;
        for (b, band) in model.curves(class).bands().iter().enumerate() {
            // Each band's curve over its own knots (it is constant beyond them).
            let knots = band.curve.knots();
            let lo = lo.max(knots[0].intensity);
            let hi = hi.min(knots[knots.len() - 1].intensity).max(lo);
            lines.push(Series {
                label: if b == 0 {
                    format!("{name} fitted (one per size band)")
                } else {
                    String::new()
                },
                points: (0..=steps)
                    .map(|k| {
                        let x = lo * (hi / lo).powf(k as f64 / steps as f64);
                        (x, band.curve.rate(x) / 1e9)
                    })
                    .collect(),
            });
            colors.push(scatter.len());
        }
        scatter.push(Series {
            label: format!("{name} measured"),
            points: pts,
        });
    }
    let path = out.join("curve.png");
    if log_log_chart(
        &path,
        "Attainable rate over intensity (candle CPU, f32)",
        ("arithmetic intensity (FLOP/byte)", "achieved GFLOP/s"),
        &lines,
        &colors,
        &scatter,
    )? {
        println!("wrote {}", path.display());
    }
    Ok(())
}
