//! `cargo xtask exp token-profile`: accuracy per (task, gamma) on the held-out test splits and
//! per-sample latency per (gamma, batch size) on this machine (SPEC §4, "Profiles"), plus the
//! layer-wise merge schedule of each gamma < 0 chosen by profiling accuracy on the training
//! splits (never the test splits). Writes `results/otas/token-profile.json` (read by
//! `cargo xtask exp otas`), `accuracy.csv`, `latency.csv` and two PNGs like the paper's
//! Figs. 3.3-3.4.

use std::collections::BTreeMap;
use std::io::Write;
use std::time::Instant;

use anyhow::{Context, Result};
use collab_core::adaptive::{Gamma, ProfileTable};
use collab_policies::token::repo::PromptRepository;
use collab_policies::token::saved::SavedTokenProfile;
use collab_policies::token::schedule::{MergeSchedule, ScheduleKind};
use collab_policies::token::tasks::LabelledImages;

use super::backbone::{Backbone, TASKS, TaskData, repo_dir};
use crate::exp::accuracy::bar;
use crate::exp::plot::{Series, line_chart};
use crate::exp::results_dir;

/// The gammas of SPEC §4.
pub(crate) const GAMMAS: [Gamma; 8] = [-20, -15, -10, -5, 0, 2, 4, 8];
/// The profiled batch sizes.
pub(crate) const BATCH_SIZES: [usize; 7] = [1, 2, 4, 8, 16, 32, 64];

/// Where the profile run saves its file and the serving run loads it.
pub(crate) fn saved_path() -> Result<std::path::PathBuf> {
    Ok(results_dir()?.join("otas").join("token-profile.json"))
}

/// Loads the profile run's file, saying how to make it when it is missing.
pub(crate) fn load_saved() -> Result<SavedTokenProfile> {
    let p = saved_path()?;
    SavedTokenProfile::load(&p).with_context(|| {
        format!(
            "no token profile at {}: run `cargo xtask exp token-profile`",
            p.display()
        )
    })
}

/// Arguments.
#[derive(clap::Args, Debug)]
pub(crate) struct Args {
    /// Test examples per task (ImageNet-1k has 1000, digits 1197, animal 500).
    #[arg(long, default_value_t = 600)]
    test_examples: usize,
    /// Training-split examples per trained task used to choose merge schedules.
    #[arg(long, default_value_t = 150)]
    profile_examples: usize,
    /// Evaluation batch size.
    #[arg(long, default_value_t = 32)]
    batch: usize,
}

/// Accuracy of `backbone` on `set` (rows of task `task`) at `gamma`.
pub(crate) fn accuracy(
    backbone: &Backbone,
    task: usize,
    set: &LabelledImages,
    gamma: Gamma,
    batch: usize,
) -> Result<f64> {
    let mut correct = 0usize;
    for chunk in (0..set.len()).collect::<Vec<_>>().chunks(batch.max(1)) {
        let rows: Vec<(usize, &[f32])> = chunk
            .iter()
            .map(|&i| (task, set.images[i].as_slice()))
            .collect();
        let preds = backbone.predict(&rows, gamma)?;
        correct += chunk
            .iter()
            .zip(&preds)
            .filter(|&(&i, &p)| set.labels[i] == p)
            .count();
    }
    Ok(correct as f64 / set.len().max(1) as f64)
}

/// Candidate schedules of one gamma: constant, linear and front-loaded over 4, 6 and 8 layers.
fn candidates(gamma: Gamma, layers: usize, tokens: usize) -> Result<Vec<MergeSchedule>> {
    let kinds = [
        ScheduleKind::Constant,
        ScheduleKind::Linear,
        ScheduleKind::FrontLoaded { depth: 4 },
        ScheduleKind::FrontLoaded { depth: 6 },
        ScheduleKind::FrontLoaded { depth: 8 },
    ];
    Ok(kinds
        .iter()
        .map(|&k| MergeSchedule::for_gamma(gamma, k, layers, tokens, 1))
        .collect::<collab_core::Result<_>>()?)
}

/// Median per-sample seconds of a batch of `n` rows at `gamma`.
fn per_sample_time(backbone: &Backbone, rows: &[(usize, &[f32])], gamma: Gamma) -> Result<f64> {
    backbone.predict(rows, gamma)?; // warm-up
    let reps = if rows.len() >= 32 { 2 } else { 3 };
    let mut t = Vec::new();
    for _ in 0..reps {
        let t0 = Instant::now();
        backbone.predict(rows, gamma)?;
        t.push(t0.elapsed().as_secs_f64());
    }
    t.sort_by(f64::total_cmp);
    Ok(t[t.len() / 2] / rows.len() as f64)
}

pub(crate) fn run(args: Args) -> Result<()> {
    let mut data = TaskData::load()?;
    for set in &mut data.test {
        let n = args.test_examples.min(set.len());
        *set = set.subset(&(0..n).collect::<Vec<_>>());
    }
    let repo = PromptRepository::open(repo_dir())?;
    let mut backbone = Backbone::load(&repo)?;
    let layers = backbone.model.config().encoder().layers;
    let tokens = backbone.tokens();

    // 1. Layer-wise schedule choice per gamma < 0 on the training splits.
    let mut schedule_scores = BTreeMap::new();
    let profile_sets: Vec<(usize, LabelledImages)> = data
        .train
        .iter()
        .enumerate()
        .filter_map(|(t, s)| s.as_ref().map(|s| (t, s)))
        .map(|(t, s)| {
            let n = args.profile_examples.min(s.len());
            (t, s.subset(&(0..n).collect::<Vec<_>>()))
        })
        .collect();
    for &g in GAMMAS.iter().filter(|&&g| g < 0) {
        let cands = candidates(g, layers, tokens)?;
        let mut scored = Vec::new();
        let pb = bar(cands.len(), &format!("schedules gamma {g}"));
        for c in &cands {
            backbone.schedules.insert(g, c.clone());
            let mut acc = 0.0;
            for (t, set) in &profile_sets {
                acc += accuracy(&backbone, *t, set, g, args.batch)?;
            }
            scored.push((c.name().to_string(), acc / profile_sets.len().max(1) as f64));
            pb.inc(1);
        }
        pb.finish_and_clear();
        let best = (0..cands.len())
            .max_by(|&a, &b| scored[a].1.total_cmp(&scored[b].1).then(b.cmp(&a)))
            .context("no candidate schedules")?;
        println!(
            "gamma {g:>3}: schedule {} ({:.3}); candidates {}",
            cands[best].name(),
            scored[best].1,
            scored
                .iter()
                .map(|(n, s)| format!("{n}={s:.3}"))
                .collect::<Vec<_>>()
                .join(" ")
        );
        backbone.schedules.insert(g, cands[best].clone());
        schedule_scores.insert(g, scored);
    }

    // 2. Accuracy per task and gamma on the test splits.
    let mut acc = vec![vec![None; GAMMAS.len()]; TASKS.len()];
    for (t, set) in data.test.iter().enumerate() {
        let pb = bar(GAMMAS.len(), &format!("accuracy {}", TASKS[t]));
        for (gi, &g) in GAMMAS.iter().enumerate() {
            if backbone.runnable(t, g) {
                acc[t][gi] = Some(accuracy(&backbone, t, set, g, args.batch)?);
            }
            pb.inc(1);
        }
        pb.finish_and_clear();
    }

    // 3. Per-sample latency per gamma and batch size (digits rows: every gamma runs there;
    //    tasks share the backbone, and their heads differ only in the last linear layer).
    let digits = &data.test[1];
    let mut times: BTreeMap<Gamma, Vec<f64>> = BTreeMap::new();
    let pb = bar(GAMMAS.len() * BATCH_SIZES.len(), "latency");
    for &g in &GAMMAS {
        if !backbone.runnable(1, g) {
            pb.inc(BATCH_SIZES.len() as u64);
            continue;
        }
        let mut row = Vec::new();
        for &b in &BATCH_SIZES {
            let rows: Vec<(usize, &[f32])> = (0..b)
                .map(|i| (1, digits.images[i % digits.len()].as_slice()))
                .collect();
            row.push(per_sample_time(&backbone, &rows, g)?);
            pb.inc(1);
        }
        times.insert(g, row);
    }
    pb.finish_and_clear();

    let table = ProfileTable::from_fn(
        GAMMAS.to_vec(),
        BATCH_SIZES.to_vec(),
        TASKS.len(),
        |t, g| {
            let gi = GAMMAS.iter().position(|&x| x == g)?;
            acc[t][gi]
        },
        |t, g, b| {
            if !backbone.runnable(t, g) {
                return None;
            }
            let bi = BATCH_SIZES.iter().position(|&x| x == b)?;
            times.get(&g).map(|r| r[bi])
        },
    )?;
    let saved = SavedTokenProfile {
        table,
        schedules: backbone.schedules.clone(),
        schedule_scores,
        test_examples: data.test.iter().map(LabelledImages::len).collect(),
    };
    write(&saved, &acc, &times)?;
    Ok(())
}

fn write(
    saved: &SavedTokenProfile,
    acc: &[Vec<Option<f64>>],
    times: &BTreeMap<Gamma, Vec<f64>>,
) -> Result<()> {
    let dir = results_dir()?.join("otas");
    std::fs::create_dir_all(&dir)?;
    saved.save(&saved_path()?)?;
    let mut f = std::fs::File::create(dir.join("accuracy.csv"))?;
    writeln!(f, "task,test_examples,gamma,accuracy")?;
    println!("\naccuracy on the test splits");
    print!("{:<11}", "task");
    for g in GAMMAS {
        print!(" {g:>6}");
    }
    println!();
    for (t, row) in acc.iter().enumerate() {
        print!("{:<11}", TASKS[t]);
        for (gi, a) in row.iter().enumerate() {
            match a {
                Some(a) => {
                    print!(" {a:>6.3}");
                    writeln!(
                        f,
                        "{},{},{},{a:.4}",
                        TASKS[t], saved.test_examples[t], GAMMAS[gi]
                    )?;
                }
                None => print!(" {:>6}", "-"),
            }
        }
        println!();
    }
    let mut f = std::fs::File::create(dir.join("latency.csv"))?;
    writeln!(f, "gamma,batch,per_sample_ms,throughput_per_s")?;
    println!("\nper-sample latency (ms) by batch size");
    print!("{:<6}", "gamma");
    for b in BATCH_SIZES {
        print!(" {b:>6}");
    }
    println!();
    for (g, row) in times {
        print!("{g:<6}");
        for (bi, t) in row.iter().enumerate() {
            print!(" {:>6.2}", t * 1e3);
            writeln!(f, "{g},{},{:.4},{:.2}", BATCH_SIZES[bi], t * 1e3, 1.0 / t)?;
        }
        println!();
    }
    let acc_series: Vec<Series> = acc
        .iter()
        .enumerate()
        .map(|(t, row)| Series {
            label: TASKS[t].to_string(),
            points: row
                .iter()
                .enumerate()
                .filter_map(|(gi, a)| a.map(|a| (f64::from(GAMMAS[gi]), a)))
                .collect(),
        })
        .collect();
    line_chart(
        &dir.join("accuracy-vs-gamma.png"),
        "Accuracy vs gamma (DeiT-Tiny, held-out test splits)",
        ("gamma (tokens per layer)", "accuracy"),
        &acc_series,
    )?;
    let thr: Vec<Series> = times
        .iter()
        .map(|(g, row)| Series {
            label: format!("gamma {g}"),
            points: row
                .iter()
                .enumerate()
                .map(|(bi, t)| (BATCH_SIZES[bi] as f64, 1.0 / t))
                .collect(),
        })
        .collect();
    line_chart(
        &dir.join("throughput-vs-batch.png"),
        "Throughput vs batch size per gamma (this machine, CPU)",
        ("batch size", "queries / s"),
        &thr,
    )?;
    let g0 = times
        .get(&0)
        .and_then(|r| r.get(5))
        .copied()
        .unwrap_or(f64::NAN);
    println!(
        "\nwrote {} (gamma 0 throughput at batch 32: {:.1}/s)",
        dir.display(),
        1.0 / g0
    );
    Ok(())
}
