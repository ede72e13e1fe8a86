//! Rows, tables, figures and the summary line of the STI experiment.

use std::fmt::Write as _;
use std::path::Path;

use anyhow::Result;
use collab_policies::shard::plan::Plan;

use super::super::plot::{Series, line_chart};
use super::measure::Streamed;

/// One measured configuration.
#[derive(Clone, Debug)]
pub(crate) struct Row {
    pub(crate) model: String,
    pub(crate) task: String,
    pub(crate) metric_name: String,
    pub(crate) full_metric: f64,
    pub(crate) scheme: String,
    pub(crate) target_ms: Option<f64>,
    pub(crate) budget_mb: Option<f64>,
    pub(crate) metric: Option<f64>,
    /// What streaming (or running resident) measured.
    pub(crate) run: Streamed,
    pub(crate) predicted_ms: Option<f64>,
    pub(crate) shards: Option<usize>,
    pub(crate) mean_bits: Option<f64>,
    pub(crate) note: String,
}

impl Row {
    pub(crate) fn new(model: &str, task: &str, metric_name: &str, full_metric: f64) -> Self {
        Self {
            model: model.into(),
            task: task.into(),
            metric_name: metric_name.into(),
            full_metric,
            scheme: String::new(),
            target_ms: None,
            budget_mb: None,
            metric: None,
            run: Streamed::none(),
            predicted_ms: None,
            shards: None,
            mean_bits: None,
            note: String::new(),
        }
    }

    pub(crate) fn streamed(
        &self,
        scheme: &str,
        target_ms: Option<f64>,
        budget_mb: Option<f64>,
        metric: f64,
        s: &Streamed,
        plan: Option<&Plan>,
    ) -> Self {
        let (shards, mean_bits) = match plan {
            Some(p) => {
                let n: usize = p.layers.iter().map(Vec::len).sum();
                let bits: f64 = p
                    .layers
                    .iter()
                    .flatten()
                    .map(|(_, f)| f64::from(f.bits()))
                    .sum();
                (Some(n), Some(if n > 0 { bits / n as f64 } else { 0.0 }))
            }
            None => (None, None),
        };
        Self {
            scheme: scheme.into(),
            target_ms,
            budget_mb,
            metric: Some(metric),
            run: s.clone(),
            predicted_ms: plan.map(|p| p.predicted_latency_s * 1e3),
            shards,
            mean_bits,
            ..self.clone()
        }
    }

    pub(crate) fn infeasible(&self, target_ms: f64, budget_mb: f64, why: &str) -> Self {
        Self {
            scheme: "sti".into(),
            target_ms: Some(target_ms),
            budget_mb: Some(budget_mb),
            note: why.replace(',', ";"),
            ..self.clone()
        }
    }

    fn drop(&self) -> Option<f64> {
        self.metric.map(|m| self.full_metric - m)
    }
}

fn opt(v: Option<f64>, prec: usize) -> String {
    v.map_or("-".into(), |x| format!("{x:.prec$}"))
}

/// Prints the table of one task.
pub(crate) fn print(rows: &[Row]) {
    println!(
        "{:<8} {:<9} {:<16} {:>6} {:>6} {:>7} {:>7} {:>8} {:>8} {:>9} {:>8} {:>7} {:>6} {:>5}",
        "model",
        "task",
        "scheme",
        "T(ms)",
        "M(MB)",
        "metric",
        "drop",
        "p50(ms)",
        "p95(ms)",
        "weights",
        "IO(MB)",
        "wait",
        "shards",
        "bits"
    );
    for r in rows {
        if r.metric.is_none() {
            continue;
        }
        println!(
            "{:<8} {:<9} {:<16} {:>6} {:>6} {:>7} {:>7} {:>8.1} {:>8.1} {:>8.2}M {:>8.2} {:>7.1} {:>6.1} {:>6} {:>5}",
            r.model,
            r.task,
            r.scheme,
            opt(r.target_ms, 0),
            opt(r.budget_mb, 1),
            opt(r.metric, 4),
            opt(r.drop(), 4),
            r.run.p50_ms,
            r.run.p95_ms,
            r.run.peak_weight_bytes as f64 / 1e6,
            r.run.io_bytes as f64 / 1e6,
            r.run.max_wait_ms,
            r.run.max_late_ms,
            r.shards.map_or("-".into(), |n| n.to_string()),
            opt(r.mean_bits, 1),
        );
    }
}

/// Writes `runs.csv` and a memory/metric figure per task under `dir`.
pub(crate) fn write(dir: &Path, rows: &[Row]) -> Result<()> {
    let mut csv = String::from(
        "model,task,metric_name,scheme,target_ms,budget_mb,metric,full_metric,drop,p50_ms,p95_ms,peak_weight_bytes,io_bytes,max_wait_ms,max_late_ms,peak_rss_bytes,predicted_ms,shards,mean_bits,note\n",
    );
    for r in rows {
        let _ = writeln!(
            csv,
            "{},{},{},{},{},{},{},{:.6},{},{:.3},{:.3},{},{},{:.3},{:.3},{},{},{},{},{}",
            r.model,
            r.task,
            r.metric_name,
            r.scheme,
            opt(r.target_ms, 0),
            opt(r.budget_mb, 2),
            opt(r.metric, 6),
            r.full_metric,
            opt(r.drop(), 6),
            r.run.p50_ms,
            r.run.p95_ms,
            r.run.peak_weight_bytes,
            r.run.io_bytes,
            r.run.max_wait_ms,
            r.run.max_late_ms,
            r.run.peak_rss_bytes.map_or("-".into(), |b| b.to_string()),
            opt(r.predicted_ms, 3),
            r.shards.map_or("-".into(), |n| n.to_string()),
            opt(r.mean_bits, 3),
            r.note,
        );
    }
    std::fs::write(dir.join("runs.csv"), csv)?;
    let mut tasks: Vec<&str> = rows.iter().map(|r| r.task.as_str()).collect();
    tasks.dedup();
    for task in tasks {
        let mut targets: Vec<f64> = rows.iter().filter_map(|r| r.target_ms).collect();
        targets.sort_by(f64::total_cmp);
        targets.dedup();
        let mut series: Vec<Series> = targets
            .iter()
            .map(|&t| Series {
                label: format!("STI, target {t:.0} ms"),
                points: rows
                    .iter()
                    .filter(|r| r.task == task && r.target_ms == Some(t))
                    .filter_map(|r| r.metric.map(|m| (r.run.peak_weight_bytes as f64 / 1e6, m)))
                    .collect(),
            })
            .collect();
        series.push(Series {
            label: "uniform pipelines q2..q8, f32".into(),
            points: rows
                .iter()
                .filter(|r| r.task == task && r.scheme.starts_with("pipeline"))
                .filter_map(|r| r.metric.map(|m| (r.run.peak_weight_bytes as f64 / 1e6, m)))
                .collect(),
        });
        let model = rows.first().map_or("", |r| r.model.as_str());
        line_chart(
            &dir.join(format!("memory-{task}.png")),
            &format!("{model} {task}: metric vs peak weight memory"),
            ("peak weight memory (MB)", "metric"),
            &series,
        )?;
    }
    Ok(())
}

/// The STI row chosen at a target: the least peak weight memory whose metric is within 0.01
/// of the full model and whose p95 latency meets the target; else the best metric that meets
/// the target; else the best metric.
fn chosen(rows: &[Row], model: &str, task: &str, target: f64) -> Option<Row> {
    let sti: Vec<&Row> = rows
        .iter()
        .filter(|r| {
            r.model == model
                && r.task == task
                && r.scheme == "sti"
                && r.target_ms == Some(target)
                && r.metric.is_some()
        })
        .collect();
    let in_time = |r: &&&Row| r.run.p95_ms <= target;
    let good = sti
        .iter()
        .filter(in_time)
        .filter(|r| r.drop().is_some_and(|d| d <= 0.01))
        .min_by_key(|r| r.run.peak_weight_bytes);
    let best = |v: &mut dyn Iterator<Item = &&Row>| {
        v.max_by(|a, b| a.metric.unwrap_or(0.0).total_cmp(&b.metric.unwrap_or(0.0)))
            .map(|r| (*r).clone())
    };
    good.map(|r| (*r).clone())
        .or_else(|| best(&mut sti.iter().filter(in_time)))
        .or_else(|| best(&mut sti.iter()))
}

/// Prints, per model and task, the chosen STI row at each target against hold-everything,
/// then the headline line (MiniLM STS-B if run, else the first task).
pub(crate) fn summary(rows: &[Row], targets: &[f64], headline_ms: f64) {
    let mut keys: Vec<(String, String)> = rows
        .iter()
        .map(|r| (r.model.clone(), r.task.clone()))
        .collect();
    keys.dedup();
    println!(
        "\nSTI at each target: least memory within 0.01 of full accuracy with p95 <= target (else best in time, else best)"
    );
    let mut headline = None;
    for (model, task) in &keys {
        let Some(resident) = rows
            .iter()
            .find(|r| &r.model == model && &r.task == task && r.scheme == "hold-everything")
        else {
            continue;
        };
        for &t in targets {
            if let Some(r) = chosen(rows, model, task, t) {
                let ratio =
                    resident.run.peak_weight_bytes as f64 / r.run.peak_weight_bytes.max(1) as f64;
                println!(
                    "{model} {task} target={t:.0}ms budget={}MB metric={} drop={} p50={:.1}ms p95={:.1}ms weights={:.2}MB mem_ratio={ratio:.1}",
                    opt(r.budget_mb, 1),
                    opt(r.metric, 4),
                    opt(r.drop(), 4),
                    r.run.p50_ms,
                    r.run.p95_ms,
                    r.run.peak_weight_bytes as f64 / 1e6
                );
                let is_head = (model == "minilm" && task == "stsb") || headline.is_none();
                if (t - headline_ms).abs() < 1e-9 && is_head {
                    headline = Some((ratio, r.drop().unwrap_or(f64::NAN), t));
                }
            }
        }
    }
    match headline {
        Some((ratio, drop, t)) => println!(
            "sti mem_ratio_vs_resident={ratio:.1} accuracy_drop={drop:.3} at target_ms={t:.0}"
        ),
        None => println!(
            "sti mem_ratio_vs_resident=nan accuracy_drop=nan at target_ms={headline_ms:.0} (no STI configuration ran at that target)"
        ),
    }
}
