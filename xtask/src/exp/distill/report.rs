//! Tables, CSV files and plots of `exp distill` under `results/distill/`, and its summary line.

use std::fmt::Write as _;
use std::io::Write;
use std::path::Path;

use anyhow::Result;

use super::{Args, CompressRow, Row};
use crate::exp::plot::{Series, line_chart};

fn mean(values: impl Iterator<Item = f64>) -> f64 {
    let v: Vec<f64> = values.collect();
    v.iter().sum::<f64>() / v.len().max(1) as f64
}

fn mean_gain(rows: &[Row], scenario: &str, scheme: &str) -> f64 {
    mean(
        rows.iter()
            .filter(|r| r.scenario == scenario && r.scheme == scheme)
            .map(|r| r.gain),
    )
}

fn mean_upload(rows: &[Row], scheme: &str) -> f64 {
    mean(
        rows.iter()
            .filter(|r| r.scheme == scheme)
            .map(|r| r.upload_bytes as f64),
    )
}

/// Adds `point` to the series named `label`, starting it if there is none.
fn add_point(series: &mut Vec<Series>, label: String, point: (f64, f64)) {
    match series.iter_mut().find(|s| s.label == label) {
        Some(s) => s.points.push(point),
        None => series.push(Series {
            label,
            points: vec![point],
        }),
    }
}

/// Figure 5.12: accuracy and upload per prototype group size.
pub(super) fn figure_5_12(dir: &Path, rows: &[Row]) -> Result<()> {
    let mut csv = std::fs::File::create(dir.join("figure-5-12.csv"))?;
    writeln!(csv, "scenario,client,group_size,upload_bytes,accuracy,gain")?;
    let mut series: Vec<Series> = Vec::new();
    for r in rows {
        let g = r.group.unwrap_or(0);
        writeln!(
            csv,
            "{},{},{g},{},{:.4},{:.4}",
            r.scenario, r.client, r.upload_bytes, r.accuracy, r.gain
        )?;
        add_point(
            &mut series,
            format!("{} client {}", r.scenario, r.client),
            (g as f64, r.accuracy),
        );
    }
    line_chart(
        &dir.join("figure-5-12.png"),
        "Prototype selection: accuracy per group size",
        ("private samples per prototype", "client accuracy"),
        &series,
    )?;
    Ok(())
}

/// Table 5.3: accuracy and bytes per inference per compression ratio.
pub(super) fn table_5_3(dir: &Path, rows: &[CompressRow]) -> Result<()> {
    let mut csv = std::fs::File::create(dir.join("table-5-3.csv"))?;
    writeln!(csv, "scenario,client,ratio,bytes_per_inference,accuracy")?;
    let mut md = String::from(
        "| scenario | client | ratio | bytes / inference | accuracy |\n| --- | --- | --- | --- | --- |\n",
    );
    let mut series: Vec<Series> = Vec::new();
    for r in rows {
        writeln!(
            csv,
            "{},{},{},{},{:.4}",
            r.scenario, r.client, r.ratio, r.bytes, r.accuracy
        )?;
        writeln!(
            md,
            "| {} | {} | {} | {} | {:.3} |",
            r.scenario, r.client, r.ratio, r.bytes, r.accuracy
        )?;
        add_point(
            &mut series,
            format!("{} client {}", r.scenario, r.client),
            (r.ratio, r.accuracy),
        );
    }
    md.push_str("\nRatio 1: the fusion head on the uncompressed features.\n");
    std::fs::write(dir.join("table-5-3.md"), &md)?;
    println!("\n{md}");
    line_chart(
        &dir.join("table-5-3.png"),
        "Compression modules: accuracy per ratio",
        (
            "compression ratio (features / values sent)",
            "client accuracy",
        ),
        &series,
    )?;
    Ok(())
}

/// Table 5.2 and the summary line.
pub(super) fn table_5_2(
    args: &Args,
    dir: &Path,
    rows: &[Row],
    teacher_acc: &[f64],
    latencies: &[(&str, f64, f64)],
) -> Result<()> {
    let mut csv = std::fs::File::create(dir.join("table-5-2.csv"))?;
    writeln!(
        csv,
        "scenario,client,scheme,selected,selected_in_client_classes,upload_bytes,accuracy,gain"
    )?;
    let mut md = String::from(
        "| scenario | client | scheme | selected | in its classes | upload (B) | accuracy | gain |\n\
         | --- | --- | --- | --- | --- | --- | --- | --- |\n",
    );
    for r in rows {
        writeln!(
            csv,
            "{},{},{},{},{:.4},{},{:.4},{:.4}",
            r.scenario,
            r.client,
            r.scheme,
            r.selected,
            r.in_classes,
            r.upload_bytes,
            r.accuracy,
            r.gain
        )?;
        writeln!(
            md,
            "| {} | {} | {} | {} | {:.0}% | {} | {:.3} | {:+.3} |",
            r.scenario,
            r.client,
            r.scheme,
            r.selected,
            100.0 * r.in_classes,
            r.upload_bytes,
            r.accuracy,
            r.gain
        )?;
    }
    writeln!(
        md,
        "\nTeacher accuracy per client: {teacher_acc:.3?}. Students: {}. Settings: {args:?}",
        latencies
            .iter()
            .map(|(s, ms, secs)| format!("{s} {ms:.2} ms at batch 1, AllDistill {secs:.0} s"))
            .collect::<Vec<_>>()
            .join("; ")
    )?;
    std::fs::write(dir.join("table-5-2.md"), &md)?;
    println!("\n{md}");
    let scenarios: Vec<&str> = latencies.iter().map(|l| l.0).collect();
    for s in &scenarios {
        println!(
            "{s}: select_gain={:+.3} cluster_gain={:+.3} random_gain={:+.3}",
            mean_gain(rows, s, "select"),
            mean_gain(rows, s, "cluster"),
            mean_gain(rows, s, "random")
        );
    }
    println!("written: {}", dir.display());
    let first = scenarios.first().copied().unwrap_or("none");
    println!(
        "distill select_gain={:.3} cluster_gain={:.3} upload_ratio={:.3} scenario={first}",
        mean_gain(rows, first, "select"),
        mean_gain(rows, first, "cluster"),
        mean_upload(rows, "cluster") / mean_upload(rows, "select").max(1.0)
    );
    Ok(())
}
