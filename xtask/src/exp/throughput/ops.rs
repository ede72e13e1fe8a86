//! `exp forward-throughput --per-op`: where a forward's time goes, per primitive, on each
//! backend, side by side.
//!
//! Each model is loaded a second time on `collab_backends::profiled::Profiled` around the
//! backend, run once to warm up, then `repeats` times with every primitive timed. The time per
//! forward of each primitive is printed per model and batch with one column per backend, and
//! written to `results/forward-ops.csv` and `results/forward-ops.md` (the tables of
//! `collab-backends/README.md`).

use std::fmt::Write as _;
use std::time::Instant;

use anyhow::Result;
use collab_backends::profiled::Profiled;
use collab_core::Backend;
use collab_core::model::{ModelConfig, Transformer};

use super::super::results_dir;
use super::{Run, images};

/// The profile of one model at one batch size on one backend.
pub(super) struct OpsRow {
    pub model: &'static str,
    pub batch: usize,
    /// Wall time of one forward, profiled (ms).
    pub forward_ms: f64,
    /// `(primitive, ms per forward, calls per forward)`, most time first.
    pub ops: Vec<(&'static str, f64, f64)>,
}

/// Profiles `model` (loaded on `be`) at each batch size.
pub(super) fn profile<B: Backend>(
    name: &'static str,
    model: &Transformer<Profiled<B>>,
    be: &Profiled<B>,
    batches: &[usize],
    repeats: usize,
) -> Result<Vec<OpsRow>> {
    let ModelConfig::Vit(v) = model.config() else {
        anyhow::bail!("forward-throughput measures ViT models");
    };
    let repeats = repeats.max(1);
    let mut rows = vec![];
    for &b in batches {
        let input = images(be, b, v.image_size)?;
        model.forward(&input)?;
        be.synchronize()?;
        be.reset();
        let start = Instant::now();
        for _ in 0..repeats {
            model.forward(&input)?;
        }
        be.synchronize()?;
        let forward_ms = start.elapsed().as_secs_f64() * 1e3 / repeats as f64;
        let ops = be
            .report()
            .into_iter()
            .map(|o| {
                (
                    o.op,
                    o.total.as_secs_f64() * 1e3 / repeats as f64,
                    o.calls as f64 / repeats as f64,
                )
            })
            .collect();
        rows.push(OpsRow {
            model: name,
            batch: b,
            forward_ms,
            ops,
        });
    }
    Ok(rows)
}

/// Prints the side-by-side tables and writes the CSV and markdown files.
pub(super) fn report(runs: &[Run]) -> Result<()> {
    let Some(first) = runs.first() else {
        return Ok(());
    };
    let mut md = String::new();
    let mut csv = String::from("backend,model,batch,op,ms_per_forward,calls_per_forward,share\n");
    for run in runs {
        for r in &run.ops {
            for &(op, ms, calls) in &r.ops {
                writeln!(
                    csv,
                    "{},{},{},{op},{ms:.4},{calls:.1},{:.4}",
                    run.name,
                    r.model,
                    r.batch,
                    ms / r.forward_ms
                )?;
            }
        }
    }
    for base in &first.ops {
        let cols: Vec<Option<&OpsRow>> = runs
            .iter()
            .map(|run| {
                run.ops
                    .iter()
                    .find(|r| r.model == base.model && r.batch == base.batch)
            })
            .collect();
        // Every primitive any backend called, in the first backend's order of time.
        let mut names: Vec<&'static str> = base.ops.iter().map(|o| o.0).collect();
        for r in cols.iter().flatten() {
            for o in &r.ops {
                if !names.contains(&o.0) {
                    names.push(o.0);
                }
            }
        }
        writeln!(
            md,
            "\n**{} batch {}** (ms per forward, share)\n",
            base.model, base.batch
        )?;
        let header: Vec<String> = runs.iter().map(|r| r.name.clone()).collect();
        writeln!(md, "| primitive | {} |", header.join(" | "))?;
        writeln!(md, "| --- |{}", " --- |".repeat(runs.len()))?;
        for name in names {
            let cells: Vec<String> = cols
                .iter()
                .map(
                    |r| match r.and_then(|r| r.ops.iter().find(|o| o.0 == name).map(|o| (r, o))) {
                        Some((r, o)) => format!("{:.2} ({:.0}%)", o.1, 100.0 * o.1 / r.forward_ms),
                        None => "-".into(),
                    },
                )
                .collect();
            writeln!(md, "| {name} | {} |", cells.join(" | "))?;
        }
        let totals: Vec<String> = cols
            .iter()
            .map(|r| r.map_or("-".into(), |r| format!("{:.2}", r.forward_ms)))
            .collect();
        writeln!(md, "| whole forward | {} |", totals.join(" | "))?;
    }
    print!("{md}");
    let dir = results_dir()?;
    std::fs::write(dir.join("forward-ops.csv"), csv)?;
    std::fs::write(dir.join("forward-ops.md"), &md)?;
    println!("wrote {}", dir.join("forward-ops.md").display());
    Ok(())
}
