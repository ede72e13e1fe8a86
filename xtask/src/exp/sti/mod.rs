//! `cargo xtask exp sti`: elastic on-device execution under a memory budget (SPEC §3, STI).
//!
//! For each model (MiniLM on STS-B and SST-2, DeiT-Tiny on ImageNet images) it profiles shard
//! importance on a profiling split, measures this machine's compute per shard, then for each
//! target latency and memory budget plans a sub-model, scores it on a disjoint test split and
//! streams real requests through the executor with the loader throttled to a flash-like IO
//! bandwidth. Baselines: hold-everything (the f32 model resident), load-on-demand layer by
//! layer, a naive pipeline of full-fidelity layers, uniform quantisation at each width.
//!
//! Accuracy is computed with the executor's layer code on shard bytes held in memory (batched:
//! the streamed runs compute the same numbers one request at a time; a test checks that);
//! latency and memory come from the streamed runs. Writes `results/sti/<model>/runs.csv`,
//! `importance-<task>.json`, `costs.json` and `memory-<task>.png`; the last line is
//! `sti mem_ratio_vs_resident=XX accuracy_drop=0.0XX at target_ms=NNN` for MiniLM on STS-B.

mod measure;
mod report;
mod tasks;

use std::collections::HashMap;
use std::sync::Arc;

use anyhow::{Context, Result};
use clap::ValueEnum;
use collab_backends::candle::CandleBackend;
use collab_core::fixtures;
use collab_core::model::Input;
use collab_policies::shard::exec::{ExecConfig, Executor, ShardCache, uniform};
use collab_policies::shard::file::{ShardFile, expected_resident};
use collab_policies::shard::plan::{PlanInput, plan};
use collab_policies::shard::{FIDELITIES, Fidelity, QUANT_BITS, ShardKey};

use super::accuracy::bar;
use report::Row;

type Be = CandleBackend;

/// Per layer, the shards run and their fidelity.
type SubModelOwned = Vec<Vec<(usize, Fidelity)>>;

/// A model of the experiment.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub(crate) enum Model {
    /// all-MiniLM-L6-v2 (STS-B, SST-2).
    Minilm,
    /// DeiT-Tiny/16 (ImageNet sample images).
    DeitTiny,
}

/// Arguments.
#[derive(clap::Args, Debug)]
pub(crate) struct Args {
    /// Models to run.
    #[arg(long, value_enum, value_delimiter = ',', default_values_t = [Model::Minilm, Model::DeitTiny])]
    models: Vec<Model>,
    /// Target latencies in ms.
    #[arg(long, value_delimiter = ',', default_values_t = [50.0, 100.0, 200.0, 300.0, 400.0])]
    targets_ms: Vec<f64>,
    /// Memory budgets (peak weight bytes) in MB (10^6 bytes).
    #[arg(long, value_delimiter = ',', default_values_t = [1.5, 2.0, 3.0, 4.0, 6.0, 8.0, 12.0])]
    budgets_mb: Vec<f64>,
    /// The device's flash IO bandwidth in MB/s (the loader is throttled to it).
    #[arg(long, default_value_t = 50.0)]
    io_mbps: f64,
    /// Preload buffer in KB (10^3 bytes).
    #[arg(long, default_value_t = 512.0)]
    preload_kb: f64,
    /// Requests streamed per configuration (after one warm-up).
    #[arg(long, default_value_t = 8)]
    requests: usize,
    /// STS-B pairs for profiling (the first ones) and for testing (the next ones).
    #[arg(long, default_value_t = 300)]
    stsb_profile: usize,
    /// STS-B test pairs.
    #[arg(long, default_value_t = 1200)]
    stsb_test: usize,
    /// Skip SST-2 for MiniLM.
    #[arg(long)]
    no_sst2: bool,
    /// ImageNet sample images for profiling (the first ones).
    #[arg(long, default_value_t = 100)]
    images_profile: usize,
    /// ImageNet sample images for testing (the next ones).
    #[arg(long, default_value_t = 300)]
    images_test: usize,
    /// Shards computed at once by the executor.
    #[arg(long, default_value_t = 1)]
    chunk: usize,
    /// Reuse importance tables saved by an earlier run.
    #[arg(long)]
    reuse_importance: bool,
    /// The target whose result makes the last line.
    #[arg(long, default_value_t = 200.0)]
    headline_ms: f64,
}

pub(crate) fn run(args: Args) -> Result<()> {
    let mut rows = Vec::new();
    for &model in &args.models {
        rows.extend(run_model(&args, model)?);
    }
    report::summary(&rows, &args.targets_ms, args.headline_ms);
    Ok(())
}

fn model_name(m: Model) -> &'static str {
    match m {
        Model::Minilm => "minilm",
        Model::DeitTiny => "deit-tiny",
    }
}

/// The whole f32 model's weight bytes: every shard at f32 and every resident tensor.
fn hold_all_bytes(file: &ShardFile) -> Result<u64> {
    let g = file.geometry();
    let one = file.shard_len(ShardKey { layer: 0, shard: 0 }, Fidelity::F32)?;
    let mut bytes = g.keys().count() as u64 * one;
    for (name, _) in expected_resident(file.model_config()) {
        bytes += file.tensor_len(&name)?;
    }
    Ok(bytes)
}

fn run_model(args: &Args, model: Model) -> Result<Vec<Row>> {
    let name = model_name(model);
    let dir = super::results_dir()?.join("sti").join(name);
    std::fs::create_dir_all(&dir)?;
    let path = crate::shard::default_path(name);
    if !path.exists() {
        println!("{name}: writing the shard file {}", path.display());
        crate::shard::write(name, &path)?;
    }
    let be = CandleBackend::cpu();
    let file = Arc::new(ShardFile::open(&path)?);
    let io = args.io_mbps * 1e6;
    let mut exec = Executor::open(
        be.clone(),
        Arc::clone(&file),
        ExecConfig {
            io_bytes_per_s: Some(io),
            buffer_bytes: u64::MAX,
            chunk: args.chunk,
        },
    )?;
    let cache = ShardCache::load(&file, &FIDELITIES)?;
    let g = file.geometry().clone();
    // Accuracy and importance run batched from memory, a whole layer's shards at once (the
    // streamed runs compute the same sums shard by shard; they differ in float rounding only).
    let scorer = Executor::open(
        be.clone(),
        Arc::clone(&file),
        ExecConfig {
            io_bytes_per_s: None,
            buffer_bytes: u64::MAX,
            chunk: g.heads,
        },
    )?;
    let hold_all = hold_all_bytes(&file)?;
    let mut shard_bytes = [0u64; 7];
    for f in FIDELITIES {
        shard_bytes[f.index()] = file.shard_len(ShardKey { layer: 0, shard: 0 }, f)?;
    }
    println!(
        "{name}: {} layers x {} shards; one shard {} B at f32 .. {} B at 2 bits; whole f32 model {:.1} MB; IO {} MB/s",
        g.layers,
        g.heads,
        shard_bytes[6],
        shard_bytes[0],
        hold_all as f64 / 1e6,
        args.io_mbps
    );
    let (resident_model, tasks_list) = match model {
        Model::Minilm => {
            let (m, tok) =
                fixtures::minilm(be.clone()).context("run `cargo xtask fetch-models` first")?;
            let mut list = vec![tasks::stsb(
                &be,
                &tok,
                args.stsb_profile,
                args.stsb_test,
                args.requests,
            )?];
            if !args.no_sst2 {
                let (t, train_acc) = tasks::sst2(&be, &tok, &scorer, &cache, args.requests)?;
                println!(
                    "{name}: SST-2 probe trained on 400 sentences, train accuracy {train_acc:.3}"
                );
                list.push(t);
            }
            (m, list)
        }
        Model::DeitTiny => (
            fixtures::deit_tiny(be.clone())?,
            vec![tasks::imagenet(
                &be,
                args.images_profile,
                args.images_test,
                args.requests,
            )?],
        ),
    };
    let mut rows = Vec::new();
    for task in &tasks_list {
        rows.extend(run_task(
            args,
            name,
            task,
            (&mut exec, &scorer),
            &cache,
            &resident_model,
            hold_all,
            shard_bytes,
            &dir,
        )?);
    }
    report::write(&dir, &rows)?;
    Ok(rows)
}

#[allow(clippy::too_many_arguments)]
fn run_task(
    args: &Args,
    name: &str,
    task: &tasks::Task,
    (exec, scorer): (&mut Executor<Be>, &Executor<Be>),
    cache: &ShardCache,
    resident_model: &collab_core::model::Transformer<Be>,
    hold_all: u64,
    shard_bytes: [u64; 7],
    dir: &std::path::Path,
) -> Result<Vec<Row>> {
    let g = exec.file().geometry().clone();
    let imp_path = dir.join(format!("importance-{}.json", task.name));
    let importance = if args.reuse_importance && imp_path.exists() {
        collab_policies::shard::importance::ImportanceTable::load(&imp_path)?
    } else {
        let pb = bar(
            g.layers * (g.heads + FIDELITIES.len() - 1),
            &format!("{name} {} importance", task.name),
        );
        let m = scorer.measure_importance(
            cache,
            &task.profile.batches,
            &*task.profile.metric,
            &|d, _| pb.set_position(d as u64),
        )?;
        pb.finish_and_clear();
        let t = m.table(name, task.metric_name);
        t.save(&imp_path)?;
        collab_core::json::save(&m, &dir.join(format!("importance-{}-raw.json", task.name)))?;
        t
    };
    // Compute costs at the longest request (conservative for the others).
    let longest = task
        .requests
        .iter()
        .max_by_key(|r| match r {
            Input::Tokens(s) => s.iter().map(Vec::len).max().unwrap_or(0),
            Input::Images(_) => 0,
        })
        .context("no requests")?;
    let (profile, costs) = collab_bench::sti::compute_costs(exec, cache, longest, 9)?;
    profile.save(&dir.join(format!("profile-{}.json", task.name)))?;
    collab_core::json::save(&costs, &dir.join(format!("costs-{}.json", task.name)))?;
    let resident_bytes = exec.meter().current();
    println!(
        "{name} {}: compute embed {:.1} ms, layer {:.2} ms + per shard {:.2} ms (2 bits) .. {:.2} ms (f32), head {:.2} ms; working set {:.0} KB; resident {:.0} KB",
        task.name,
        costs.embed_s * 1e3,
        costs.per_layer_s * 1e3,
        costs.per_shard_s[0] * 1e3,
        costs.per_shard_s[6] * 1e3,
        costs.head_s * 1e3,
        costs.working_bytes as f64 / 1e3,
        resident_bytes as f64 / 1e3
    );
    // Each distinct sub-model is scored once (the full model, the baselines and the plans
    // repeat each other).
    let mut scores: HashMap<SubModelOwned, f64> = HashMap::new();
    let mut score = |sub: &SubModelOwned| -> Result<f64> {
        if let Some(&m) = scores.get(sub) {
            return Ok(m);
        }
        let m = tasks::score(scorer, cache, sub, &task.test)?;
        scores.insert(sub.clone(), m);
        Ok(m)
    };
    let full = uniform(g.layers, g.heads, Fidelity::F32);
    let full_metric = score(&full)?;
    let mut rows = Vec::new();
    let base = Row::new(name, task.name, task.metric_name, full_metric);
    // hold-everything: the f32 Transformer resident, no IO (the first request warms up).
    let mut lat = Vec::new();
    for r in task.requests.iter().cycle().take(task.requests.len() + 1) {
        let t = std::time::Instant::now();
        resident_model.forward(r)?;
        lat.push(t.elapsed().as_secs_f64() * 1e3);
    }
    let resident_run = measure::Streamed::resident(&lat[1..], hold_all);
    rows.push(base.streamed(
        "hold-everything",
        None,
        None,
        full_metric,
        &resident_run,
        None,
    ));
    let layer_bytes = |f: Fidelity| g.heads as u64 * shard_bytes[f.index()];
    let mut baselines: Vec<(String, SubModelOwned, u64)> = vec![
        (
            "load-on-demand".into(),
            full.clone(),
            layer_bytes(Fidelity::F32),
        ),
        (
            "pipeline-f32".into(),
            full.clone(),
            2 * layer_bytes(Fidelity::F32),
        ),
    ];
    for b in QUANT_BITS {
        let f = Fidelity::Bits(b);
        baselines.push((
            format!("pipeline-q{b}"),
            uniform(g.layers, g.heads, f),
            2 * layer_bytes(f),
        ));
    }
    for (scheme, sub, buffer) in &baselines {
        let metric = score(sub)?;
        let s = measure::stream(exec, sub, &[], *buffer, &task.requests, None)?;
        rows.push(base.streamed(scheme, None, None, metric, &s, None));
    }
    let pb = bar(
        args.targets_ms.len() * args.budgets_mb.len(),
        &format!("{name} {} sti", task.name),
    );
    for &target_ms in &args.targets_ms {
        for &budget_mb in &args.budgets_mb {
            pb.inc(1);
            let budget = (budget_mb * 1e6) as u64;
            let input = PlanInput {
                geometry: &g,
                importance: &importance,
                shard_bytes,
                resident_bytes,
                compute: costs.clone(),
                io_bytes_per_s: args.io_mbps * 1e6,
                target_s: target_ms / 1e3,
                memory_budget: budget,
                preload_budget: ((args.preload_kb * 1e3) as u64).min(budget / 4),
            };
            let p = match plan(&input) {
                Ok(p) => p,
                Err(e) => {
                    rows.push(base.infeasible(target_ms, budget_mb, &e.to_string()));
                    continue;
                }
            };
            let preload = p.preloaded();
            let preload_bytes: u64 = preload.iter().map(|(_, f)| shard_bytes[f.index()]).sum();
            let buffer =
                budget.saturating_sub(resident_bytes + preload_bytes + costs.working_bytes);
            let metric = score(&p.layers)?;
            let planned = p.planned_starts(&costs);
            let s = measure::stream(
                exec,
                &p.layers,
                &preload,
                buffer.max(1),
                &task.requests,
                Some(&planned),
            )?;
            rows.push(base.streamed(
                "sti",
                Some(target_ms),
                Some(budget_mb),
                metric,
                &s,
                Some(&p),
            ));
        }
    }
    pb.finish_and_clear();
    report::print(&rows);
    Ok(rows)
}
