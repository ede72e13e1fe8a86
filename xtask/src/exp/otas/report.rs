//! Tables, CSV, the gamma-over-load plot and the summary line of `cargo xtask exp otas`.

use std::io::Write;

use anyhow::Result;
use collab_core::cost::quantile;

use crate::exp::plot::{Series, line_chart};
use crate::exp::results_dir;
use collab_bench::traces::Trace;
use collab_policies::token::serve::{Outcome, RunLog};

/// One (trace, scheme) result.
#[derive(Clone, Debug)]
pub(crate) struct Row {
    trace: String,
    scheme: String,
    queries: usize,
    utility: f64,
    shares: [f64; 4],
    batches: usize,
    mean_batch: f64,
    mean_gamma: f64,
    wait_p50: f64,
    wait_p95: f64,
    mean_inference: f64,
    load_seconds: f64,
    scheduler_seconds: f64,
    wall: f64,
}

impl Row {
    pub(crate) fn new(
        trace: &str,
        scheme: &str,
        log: &RunLog,
        load_seconds: f64,
        wall: f64,
    ) -> Self {
        let nb = log.batches.len().max(1) as f64;
        let mut waits = log.waits.clone();
        waits.sort_by(f64::total_cmp);
        let q = |p| {
            if waits.is_empty() {
                f64::NAN
            } else {
                quantile(&waits, p)
            }
        };
        Self {
            trace: trace.into(),
            scheme: scheme.into(),
            queries: log.outcomes.len(),
            utility: log.utility(),
            shares: [
                log.share(Outcome::CorrectInTime),
                log.share(Outcome::WrongInTime),
                log.share(Outcome::Late),
                log.share(Outcome::Evicted),
            ],
            batches: log.batches.len(),
            mean_batch: log.batches.iter().map(|b| b.size as f64).sum::<f64>() / nb,
            mean_gamma: log.batches.iter().map(|b| f64::from(b.gamma)).sum::<f64>() / nb,
            wait_p50: q(0.5),
            wait_p95: q(0.95),
            mean_inference: log.batches.iter().map(|b| b.seconds).sum::<f64>() / nb,
            load_seconds,
            scheduler_seconds: log.scheduler_seconds,
            wall,
        }
    }

    pub(crate) fn header() {
        println!(
            "{:<17} {:<22} {:>6} {:>8} {:>7} {:>7} {:>6} {:>7} {:>6} {:>6} {:>7} {:>7} {:>7}",
            "trace",
            "scheme",
            "n",
            "utility",
            "correct",
            "wrong",
            "late",
            "evicted",
            "batch",
            "gamma",
            "wait50",
            "wait95",
            "infer"
        );
    }

    pub(crate) fn print(&self) {
        println!(
            "{:<17} {:<22} {:>6} {:>8.2} {:>7.3} {:>7.3} {:>6.3} {:>7.3} {:>6.1} {:>6.1} {:>7.3} {:>7.3} {:>7.3}",
            self.trace,
            self.scheme,
            self.queries,
            self.utility,
            self.shares[0],
            self.shares[1],
            self.shares[2],
            self.shares[3],
            self.mean_batch,
            self.mean_gamma,
            self.wait_p50,
            self.wait_p95,
            self.mean_inference
        );
    }
}

/// Writes every row to `results/otas/serving.csv`.
pub(crate) fn write(rows: &[Row]) -> Result<()> {
    let dir = results_dir()?.join("otas");
    std::fs::create_dir_all(&dir)?;
    let mut f = std::fs::File::create(dir.join("serving.csv"))?;
    writeln!(
        f,
        "trace,scheme,queries,utility,correct_in_time,wrong_in_time,late,evicted,batches,mean_batch,mean_gamma,wait_p50_s,wait_p95_s,mean_inference_s,load_s,scheduler_s,wall_s"
    )?;
    for r in rows {
        writeln!(
            f,
            "{},{},{},{:.3},{:.4},{:.4},{:.4},{:.4},{},{:.2},{:.2},{:.4},{:.4},{:.4},{:.3},{:.4},{:.1}",
            r.trace,
            r.scheme,
            r.queries,
            r.utility,
            r.shares[0],
            r.shares[1],
            r.shares[2],
            r.shares[3],
            r.batches,
            r.mean_batch,
            r.mean_gamma,
            r.wait_p50,
            r.wait_p95,
            r.mean_inference,
            r.load_seconds,
            r.scheduler_seconds,
            r.wall
        )?;
    }
    Ok(())
}

/// OTAS's gamma per batch over time against the load (paper-unit rate / 100).
pub(crate) fn gamma_plot(trace: &Trace, log: &RunLog, scale: f64) -> Result<()> {
    let dir = results_dir()?.join("otas");
    std::fs::create_dir_all(&dir)?;
    let gamma = Series {
        label: "gamma chosen (OTAS)".into(),
        points: log
            .batches
            .iter()
            .map(|b| (b.start, f64::from(b.gamma)))
            .collect(),
    };
    let load = Series {
        label: "load: trace rate, paper units / 100".into(),
        points: trace
            .rate_per_second
            .iter()
            .enumerate()
            .map(|(s, r)| (s as f64 + 0.5, r / 100.0))
            .collect(),
    };
    let measured = Series {
        label: "measured rate (scaled back) / 100".into(),
        points: log
            .batches
            .iter()
            .map(|b| (b.start, b.rate / scale / 100.0))
            .collect(),
    };
    line_chart(
        &dir.join(format!("gamma-{}.png", trace.name)),
        &format!("OTAS gamma vs load ({})", trace.name),
        ("time (s)", "gamma / load"),
        &[gamma, load, measured],
    )?;
    Ok(())
}

/// Whether a scheme is one of the compared systems rather than a baseline.
fn is_system(scheme: &str) -> bool {
    scheme.starts_with("otas") || scheme.starts_with("prodigy")
}

/// Prints OTAS and PRODIGY against the best baseline (every scheme not named `otas*` or
/// `prodigy*`) per trace and over all traces, in utility and in correct answers in time; the
/// last line is `otas/best-baseline utility=X.XX`.
pub(crate) fn summary(rows: &[Row]) {
    let mut traces: Vec<&str> = rows.iter().map(|r| r.trace.as_str()).collect();
    traces.dedup();
    let correct = |r: &Row| r.shares[0] * r.queries as f64;
    let total = |scheme: &str, f: &dyn Fn(&Row) -> f64| -> Option<f64> {
        let v: Vec<f64> = rows.iter().filter(|r| r.scheme == scheme).map(f).collect();
        (!v.is_empty()).then(|| v.iter().sum())
    };
    let mut baselines: Vec<&str> = rows
        .iter()
        .map(|r| r.scheme.as_str())
        .filter(|s| !is_system(s))
        .collect();
    baselines.sort_unstable();
    baselines.dedup();
    println!();
    for t in &traces {
        let of = |pred: &dyn Fn(&Row) -> bool| {
            rows.iter()
                .filter(|r| r.trace == *t && pred(r))
                .max_by(|a, b| a.utility.total_cmp(&b.utility))
        };
        let Some(b) = of(&|r| !is_system(&r.scheme)) else {
            continue;
        };
        let most_correct = rows
            .iter()
            .filter(|r| r.trace == *t && !is_system(&r.scheme))
            .map(correct)
            .fold(0.0, f64::max);
        for system in ["otas", "prodigy", "prodigy-unwarmed"] {
            if let Some(o) = of(&|r| r.scheme == system) {
                println!(
                    "{t}: {system} {:.2} vs best baseline {} {:.2}: x{:.3} (correct in time x{:.3} of the most any baseline got)",
                    o.utility,
                    b.scheme,
                    b.utility,
                    o.utility / b.utility.max(1e-9),
                    correct(o) / most_correct.max(1e-9)
                );
            }
        }
    }
    let best = baselines
        .iter()
        .filter_map(|&s| Some((s, total(s, &|r| r.utility)?)))
        .max_by(|a, b| a.1.total_cmp(&b.1));
    let best_correct = baselines
        .iter()
        .filter_map(|&s| Some((s, total(s, &correct)?)))
        .max_by(|a, b| a.1.total_cmp(&b.1));
    if let (Some((name, b)), Some((cname, c))) = (best, best_correct) {
        for system in ["prodigy", "prodigy-unwarmed"] {
            if let (Some(p), Some(pc)) = (total(system, &|r| r.utility), total(system, &correct)) {
                let vs_otas = total("otas", &|r| r.utility).map_or(String::new(), |o| {
                    format!(", otas {o:.2}: x{:.3}", p / o.max(1e-9))
                });
                println!(
                    "all traces: {system} utility {p:.2} vs best baseline {name} {b:.2}: x{:.3}{vs_otas}; correct in time {pc:.0} vs best baseline {cname} {c:.0}: x{:.3}",
                    p / b.max(1e-9),
                    pc / c.max(1e-9)
                );
            }
        }
        if let Some(o) = total("otas", &|r| r.utility) {
            println!("all traces: otas {o:.2} vs best baseline {name} {b:.2}");
            println!("otas/best-baseline utility={:.2}", o / b.max(1e-9));
        }
    }
}
