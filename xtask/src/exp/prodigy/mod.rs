//! `cargo xtask exp prodigy`: PRODIGY's warm-up fine-tuning, planner and ensembles (SPEC §5)
//! against serving an unwarmed model, a model warmed only at r_max, and a model warmed at every
//! number (Figures 4.7 and 4.8), on DeiT-Tiny and the digits and animal tasks of
//! `exp token-train`.
//!
//! Per task, in one run on the same images:
//! 1. the task model ("Unwarmed"): a linear probe, then every parameter fine-tuned at r = 0;
//! 2. the planner's inputs, measured: the task model's accuracy at every number on profile
//!    images held out from fine-tuning, and timed warm-up steps at each candidate in
//!    [r_mid, r_max] scaled to the training set; Alg. 4 under a storage budget of `--models`
//!    checkpoints and a time budget of `--time-fraction` of all candidates' estimated time;
//! 3. every model Exhaustive (each number of `--exhaustive`, all by default, r = 0 included:
//!    the task model fine-tuned further, a convergence control) or the plan needs, warmed up
//!    once with ToMe in every forward pass and saved;
//! 4. the offline table: every PRODIGY model profiled at every number; Alg. 5's ensemble for
//!    each number not fine-tuned, kept by the knapsack within `--ensembles` checkpoints;
//! 5. the five schemes scored on the test images.
//!
//! Writes `results/prodigy/` (per task `-accuracy.csv/.png`, `-models.csv`, `-ensembles.csv`,
//! `-repository.json`; `schemes.csv`), saves each task's table and checkpoints under
//! `<models>/prodigy/<task>/` for `exp otas`, and prints last
//! `prodigy mean_gain=X models=N time_vs_exhaustive=Y storage_vs_exhaustive=Z`.

mod report;
mod schemes;
mod warmed;

use std::collections::BTreeMap;
use std::time::Instant;

use anyhow::{Result, bail};
use collab_core::model::NamedTensors;
use collab_policies::prodigy::ensemble::{average, ensemble_weights, knapsack};
use collab_policies::prodigy::planner::{Budgets, Candidate, Plan, plan};
use collab_policies::prodigy::serving::{ModelSource, WarmedRepository};
use collab_policies::train::TrainConfig;

use super::otas::backbone::{TASKS, TaskData};
use report::{EnsembleRow, ModelRowCsv, TaskReport};
use schemes::{Scheme, Scorer, Set, grid_model, repository_models};
use warmed::{Be, Settings, Store};

/// Arguments.
#[derive(clap::Args, Debug)]
pub(crate) struct Args {
    /// Tasks (of `exp token-train`).
    #[arg(long, value_delimiter = ',', default_values_t = ["digits".to_string(), "animal".to_string()])]
    tasks: Vec<String>,
    /// Serving merging numbers (tokens merged per block); default the paper's 0..25 and 30,
    /// 40, 50, 100.
    #[arg(long, value_delimiter = ',')]
    rs: Vec<usize>,
    /// Numbers Exhaustive fine-tunes (default: every serving number).
    #[arg(long, value_delimiter = ',')]
    exhaustive: Vec<usize>,
    /// The planner's r_mid (always fine-tuned).
    #[arg(long, default_value_t = 20)]
    r_mid: usize,
    /// The planner's r_max (always fine-tuned; Maxprune's model).
    #[arg(long, default_value_t = 100)]
    r_max: usize,
    /// Storage budget beta, in checkpoints.
    #[arg(long, default_value_t = 6)]
    models: usize,
    /// Time budget alpha, as a share of the estimated time to fine-tune every candidate in
    /// [r_mid, r_max].
    #[arg(long, default_value_t = 0.5)]
    time_fraction: f64,
    /// Storage budget of the ensembles, in checkpoints.
    #[arg(long, default_value_t = 4)]
    ensembles: usize,
    /// Fine-tuning images per task (the first of the training split).
    #[arg(long, default_value_t = 192)]
    train_examples: usize,
    /// Profile images per task (the last of the training split, never fine-tuned on).
    #[arg(long, default_value_t = 64)]
    profile_examples: usize,
    /// Test images per task (the first of the test split).
    #[arg(long, default_value_t = 128)]
    test_examples: usize,
    /// Epochs of each warm-up.
    #[arg(long, default_value_t = 1)]
    epochs: usize,
    /// Epochs of the task model's fine-tuning at r = 0.
    #[arg(long, default_value_t = 3)]
    task_epochs: usize,
    /// Epochs of the task model's linear probe.
    #[arg(long, default_value_t = 30)]
    head_epochs: usize,
    /// Mini-batch size of every fine-tuning.
    #[arg(long, default_value_t = 8)]
    batch: usize,
    /// AdamW learning rate of the full fine-tunings (1e-4 ruined the task model: 0.39 on
    /// digits).
    #[arg(long, default_value_t = 1e-5)]
    lr: f64,
    /// Optimisation steps timed per candidate to estimate its fine-tuning time.
    #[arg(long, default_value_t = 2)]
    probe_steps: usize,
    /// Load checkpoints whose settings match instead of training them again.
    #[arg(long)]
    reuse: bool,
}

/// The paper's serving numbers: 0..25 and 30, 40, 50, 100.
fn paper_rs() -> Vec<usize> {
    (0..=25).chain([30, 40, 50, 100]).collect()
}

pub(crate) fn run(args: Args) -> Result<()> {
    let rs = if args.rs.is_empty() {
        paper_rs()
    } else {
        let mut rs = args.rs.clone();
        rs.sort_unstable();
        rs.dedup();
        rs
    };
    if !rs.contains(&args.r_mid) || !rs.contains(&args.r_max) || args.r_mid >= args.r_max {
        bail!(
            "--r-mid {} and --r-max {} must be serving numbers with r_mid < r_max",
            args.r_mid,
            args.r_max
        );
    }
    let grid = if args.exhaustive.is_empty() {
        rs.clone()
    } else {
        let mut g = args.exhaustive.clone();
        g.sort_unstable();
        g.dedup();
        g
    };
    let data = TaskData::load()?;
    let mut reports = Vec::new();
    for task in &args.tasks {
        let t = TASKS
            .iter()
            .position(|n| n == task)
            .ok_or_else(|| anyhow::anyhow!("unknown task `{task}` (digits, animal)"))?;
        let Some(split) = &data.train[t] else {
            bail!("task `{task}` has no training split (digits, animal)");
        };
        if args.train_examples + args.profile_examples > split.len() {
            bail!(
                "{task}: {} fine-tuning + {} profile images, the training split has {}",
                args.train_examples,
                args.profile_examples,
                split.len()
            );
        }
        let train = split.subset(&(0..args.train_examples).collect::<Vec<_>>());
        let profile =
            split.subset(&(split.len() - args.profile_examples..split.len()).collect::<Vec<_>>());
        let n_test = args.test_examples.min(data.test[t].len());
        let test = data.test[t].subset(&(0..n_test).collect::<Vec<_>>());
        println!(
            "\n== {task}: {} fine-tuning, {} profile, {} test images; serving numbers {rs:?}",
            train.len(),
            profile.len(),
            test.len()
        );
        reports.push(run_task(&args, task, &rs, &grid, &train, &profile, &test)?);
    }
    report::write_all(&reports, &rs)?;
    Ok(())
}

/// The whole comparison on one task.
fn run_task(
    args: &Args,
    task: &str,
    rs: &[usize],
    grid: &[usize],
    train: &collab_policies::token::tasks::LabelledImages,
    profile: &collab_policies::token::tasks::LabelledImages,
    test: &collab_policies::token::tasks::LabelledImages,
) -> Result<TaskReport> {
    let settings = Settings {
        task: task.to_string(),
        warm: TrainConfig {
            epochs: args.epochs,
            batch: args.batch,
            lr: args.lr,
            weight_decay: 1e-4,
            seed: 11,
            progress: true,
        },
        task_epochs: args.task_epochs,
        head_epochs: args.head_epochs,
        train_examples: train.len(),
    };
    let mut store = Store::new(settings, args.reuse)?;
    let task_seconds = store.task_model(train)?;
    let bytes = std::fs::metadata(store.path(ModelSource::Unwarmed))?.len();
    let mut scorer = Scorer::new(&store, profile, test);

    // 2. The planner's inputs, measured.
    let planning = Instant::now();
    let unwarmed = scorer.curve(Set::Profile, ModelSource::Unwarmed, rs)?;
    let mut candidates = Vec::new();
    for (&r, &accuracy) in rs.iter().zip(&unwarmed) {
        if r < args.r_mid || r > args.r_max {
            continue;
        }
        let per_image = store.probe_seconds_per_image(train, r, args.probe_steps)?;
        candidates.push(Candidate {
            r,
            finetune_seconds: per_image * train.len() as f64 * args.epochs as f64,
            bytes,
            accuracy,
        });
    }
    let all: f64 = candidates.iter().map(|c| c.finetune_seconds).sum();
    let budgets = Budgets {
        seconds: args.time_fraction * all,
        bytes: bytes.saturating_mul(args.models as u64),
    };
    let the_plan: Plan = plan(&candidates, args.r_mid, args.r_max, budgets)?;
    let planning_seconds = planning.elapsed().as_secs_f64();
    println!(
        "{task}: plan {:?} (stopped: {:?}), estimated {:.0} s of {:.0} s budget; Exhaustive grid {grid:?}",
        the_plan.sorted(),
        the_plan.stop,
        the_plan.seconds,
        budgets.seconds
    );

    // 3. Every model a scheme needs, warmed up once.
    let mut needed: Vec<usize> = grid.iter().chain(&the_plan.chosen).copied().collect();
    needed.push(args.r_max);
    needed.sort_unstable();
    needed.dedup();
    let mut seconds = BTreeMap::new();
    for &r in &needed {
        let s = store.warmed(train, r)?;
        println!("{task}: warmed at r={r} ({s:.0} s)");
        seconds.insert(r, s);
    }

    // 4. The offline table: PRODIGY's models profiled at every number, then the ensembles.
    let profiling = Instant::now();
    let chosen = the_plan.sorted();
    let mut profiled = vec![(ModelSource::Unwarmed, unwarmed.clone())];
    for &c in &chosen {
        let source = ModelSource::Warmed { r: c };
        profiled.push((source, scorer.curve(Set::Profile, source, rs)?));
    }
    let plain = WarmedRepository::from_profiled(task, rs, &profiled)?;
    let params = chosen
        .iter()
        .map(|&c| {
            scorer
                .model(ModelSource::Warmed { r: c })?
                .named_parameters()
                .map_err(anyhow::Error::from)
        })
        .collect::<Result<Vec<_>>>()?;
    let config = scorer.model(ModelSource::Unwarmed)?.config().clone();
    let mut ensemble_rows = Vec::new();
    let mut items = Vec::new();
    for (i, &r) in rs.iter().enumerate() {
        if chosen.contains(&r) {
            continue;
        }
        let accs: Vec<f64> = profiled[1..].iter().map(|(_, a)| a[i]).collect();
        let weights = ensemble_weights(&accs)?;
        let avg = average(&params, &weights)?;
        let model = collab_core::model::Transformer::new(
            Be::cpu(),
            config.clone(),
            &NamedTensors::new(avg),
        )?;
        let source = ModelSource::Ensemble { r };
        scorer.insert(source, model);
        let accuracy = scorer.accuracy(Set::Profile, source, r)?;
        let best = plain.best(r).map_or(0.0, |row| row.accuracy);
        items.push((accuracy - best, bytes));
        ensemble_rows.push(EnsembleRow {
            r,
            weights,
            accuracy,
            best_single: best,
            kept: false,
        });
    }
    let budget = bytes.saturating_mul(args.ensembles as u64);
    for k in knapsack(&items, budget, bytes.max(1))? {
        ensemble_rows[k].kept = true;
    }
    let mut with_ensembles = profiled.clone();
    for row in &ensemble_rows {
        let source = ModelSource::Ensemble { r: row.r };
        if row.kept {
            let model = scorer.model(source)?;
            model.save_safetensors(&store.path(source))?;
            let curve = rs
                .iter()
                .map(|&r| if r == row.r { row.accuracy } else { 0.0 })
                .collect();
            with_ensembles.push((source, curve));
        } else {
            scorer.remove(source);
        }
    }
    let repo = WarmedRepository::from_profiled(task, rs, &with_ensembles)?;
    repo.save(&store.dir.join("repository.json"))?;
    // `exp otas` serves the task model alone with this one (what the warm-up adds).
    WarmedRepository::from_profiled(task, rs, &[(ModelSource::Unwarmed, unwarmed.clone())])?
        .save(&store.dir.join("unwarmed-repository.json"))?;
    let ensemble_seconds = profiling.elapsed().as_secs_f64();

    // 5. The schemes on the test images.
    let chosen_seconds: f64 = chosen.iter().map(|r| seconds[r]).sum();
    let grid_seconds: f64 = grid.iter().map(|r| seconds[r]).sum();
    let served = vec![
        scorer.serve(
            Scheme::Unwarmed,
            rs,
            vec![ModelSource::Unwarmed; rs.len()],
            0.0,
        )?,
        scorer.serve(
            Scheme::Maxprune,
            rs,
            vec![ModelSource::Warmed { r: args.r_max }; rs.len()],
            seconds[&args.r_max],
        )?,
        scorer.serve(
            Scheme::Exhaustive,
            rs,
            rs.iter()
                .map(|&r| ModelSource::Warmed {
                    r: grid_model(grid, r),
                })
                .collect(),
            grid_seconds,
        )?,
        scorer.serve(
            Scheme::Prodigy,
            rs,
            repository_models(&plain, rs),
            chosen_seconds,
        )?,
        scorer.serve(
            Scheme::ProdigyEnsembles,
            rs,
            repository_models(&repo, rs),
            chosen_seconds,
        )?,
    ];
    let models = needed
        .iter()
        .map(|&r| ModelRowCsv {
            r,
            seconds: seconds[&r],
            estimated: candidates
                .iter()
                .find(|c| c.r == r)
                .map(|c| c.finetune_seconds),
            chosen: chosen.contains(&r),
            exhaustive: grid.contains(&r),
        })
        .collect();
    let overhead = planning_seconds + ensemble_seconds;
    Ok(TaskReport {
        task: task.to_string(),
        plan: the_plan,
        served,
        models,
        ensembles: ensemble_rows,
        repository: repo,
        bytes,
        task_seconds,
        overhead_seconds: overhead,
    })
}
