//! `cargo xtask exp collabtrans-throughput`: the shared-model server against Graft-style
//! per-split batching and server-only batching (SPEC §2, the paper's Figure 3).
//!
//! Five device profiles mimic Jetson power modes: the server's per-block profile (measured on
//! this machine, or replayed from `--profile FILE`) scaled by a factor, each with its own
//! bandwidth, RTT and share of the arrivals. Each device picks its split with the SPEC §1
//! selector (deadline = factor x its own on-device latency, device-only excluded). Device
//! compute and transfer times come from the profiles; the server computes real batches of the
//! real model, or with `--profile` nothing is computed and each step costs what the profile
//! says (collab_bench::serving). For each scheme, the highest rate at which at
//! least 90% of requests meet their deadline is found by bisection over the rate, each rate
//! judged on several seeded arrival traces pooled (`--seeds`), a near miss looked at twice on
//! fresh seeds (see `collab_bench::search`); the three searches advance in lockstep (each round runs
//! every seed of every scheme, seeds outermost) so that this shared machine's slow spells
//! fall on all of them alike. Each trial reports the server's compute
//! per answered request and its utilisation, the measurements that say where a gain comes
//! from.
//!
//! The device slowdowns (`--slowdowns`, default 10x to 40x this machine) stand for Jetson
//! power modes against a GPU server. Session 2 used 2x to 8x: a server barely faster than the
//! devices, whose deadlines then leave no room to queue or batch.

use std::io::Write;
use std::sync::Arc;

use anyhow::Result;
use collab_backends::any::BackendTask;
use collab_bench::search::RateSearch;
use collab_bench::serving::{
    DevicePlan, Load, ProfileClock, ReplayExecutor, StepClock, Trial, WallClock, capacity_guess,
    device_seconds, remaining, run_trial,
};
use collab_core::cost::{CostModel, MeasuredProfile, ProfileSpec, Scaled, Workload, profile_model};
use collab_core::model::weights::SeededRandom;
use collab_core::model::{Input, ModelConfig, Transformer};
use collab_core::split::Conditions;
use collab_core::{Backend, fixtures};
use collab_policies::batch::{Executor, ModelExecutor, Payload, PerSplit, ServerOnly, SharedModel};
use collab_policies::split::{AccuracyTable, SelectorConfig, SplitSelector};

use super::plot::{Series, line_chart};

/// The seed of the first arrival trace at every rate.
const FIRST_SEED: u64 = 7;

/// A device profile: (label, uplink bytes/s, RTT s, arrival share). Its slowdown against this
/// machine comes from `--slowdowns`, in the same order.
const DEVICES: [(&str, f64, f64, f64); 5] = [
    ("agx-maxn", 40e6, 0.005, 0.30),
    ("agx-30w", 20e6, 0.010, 0.25),
    ("nx-15w", 10e6, 0.010, 0.20),
    ("nano-10w", 5e6, 0.020, 0.15),
    ("nano-5w", 2.5e6, 0.020, 0.10),
];

/// Arguments.
#[derive(clap::Args, Debug)]
pub(crate) struct Args {
    /// The server's backend (`candle-cpu`, `tch-cpu`, `candle-cuda`, `tch-cuda`, ...; see
    /// collab-backends). Device-side times always come from the scaled server profile.
    #[arg(long, default_value = "candle-cpu")]
    backend: String,
    /// Models: deit-tiny (real weights) and/or vit-b16 (seeded weights, compute cost only).
    #[arg(long, value_delimiter = ',', default_values_t = ["deit-tiny".to_string(), "vit-b16".to_string()])]
    models: Vec<String>,
    /// Deadline factors (deadline = factor x the device's own on-device latency).
    #[arg(long, value_delimiter = ',', default_values_t = [0.5, 0.6, 0.7, 0.8, 0.9, 1.0])]
    factors: Vec<f64>,
    /// Deadline factors for vit-b16 (its trials are 15x costlier).
    #[arg(long, value_delimiter = ',', default_values_t = [0.9])]
    vitb_factors: Vec<f64>,
    /// Per device profile (in `DEVICES` order), how many times slower than this machine (the
    /// server) it computes a block. The default spans 10x to 40x: a GPU server against Jetson
    /// power modes from AGX MAXN down to a 5 W Nano. Session 2 ran 2,3,4,6,8.
    #[arg(long, value_delimiter = ',', default_values_t = [10.0, 15.0, 20.0, 30.0, 40.0])]
    slowdowns: Vec<f64>,
    /// Budget batch size B of every policy.
    #[arg(long, default_value_t = 8)]
    budget: usize,
    /// Requests per trial (deit-tiny; vit-b16 uses a third).
    #[arg(long, default_value_t = 240)]
    requests: usize,
    /// Bisection steps of the rate search.
    #[arg(long, default_value_t = 7)]
    steps: usize,
    /// Seeded arrival traces per tried rate; the rate's fraction on time pools them (total met
    /// over total counted). One trace cannot separate schemes whose rates differ by less than
    /// this machine's trial-to-trial noise.
    #[arg(long, default_value_t = 3)]
    seeds: u64,
    /// No search: run every seed of every scheme at this one rate (requests per second) and
    /// report it (to replay a trial; `--seeds` traces from seed [`FIRST_SEED`] on).
    #[arg(long)]
    rate: Option<f64>,
    /// Queueing the devices' selectors assume, in passes of the server at the budget batch.
    #[arg(long, default_value_t = 0.5)]
    queue_passes: f64,
    /// Accuracy-loss limit for the split selector.
    #[arg(long, default_value_t = 0.01)]
    max_loss: f64,
    /// Accuracy table for deit-tiny (default: results/svd-accuracy/deit-tiny*/table.json).
    #[arg(long)]
    table: Option<std::path::PathBuf>,
    /// Replay this per-block cost profile (a `MeasuredProfile` JSON: `exp block-profile` on
    /// the server's machine, or an estimate such as collab-bench/profiles/*.json) instead of
    /// measuring and computing here: the server's steps cost what the profile says and nothing
    /// is computed. `--models` and `--backend` are then unused; the profile names the model.
    #[arg(long)]
    profile: Option<std::path::PathBuf>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Scheme {
    Shared,
    PerSplit,
    ServerOnly,
}

impl Scheme {
    const ALL: [Scheme; 3] = [Scheme::Shared, Scheme::PerSplit, Scheme::ServerOnly];
    fn name(self) -> &'static str {
        match self {
            Scheme::Shared => "shared",
            Scheme::PerSplit => "per-split",
            Scheme::ServerOnly => "server-only",
        }
    }
}

struct Row {
    model: String,
    factor: f64,
    scheme: Scheme,
    /// The 90% crossing, interpolated (see [`RateSearch::crossing`]).
    rate: f64,
    /// The highest rate tried and sustained; the other measurements are its trial's.
    sustained: f64,
    met: f64,
    mean_batch: f64,
    busy_ms: f64,
    utilisation: f64,
    splits: Vec<usize>,
}

pub(crate) fn run(args: Args) -> Result<()> {
    let dir = super::results_dir()?.join("collabtrans-throughput");
    std::fs::create_dir_all(&dir)?;
    let mut rows = vec![];
    let mut source = format!("measured here on {}", args.backend);
    if let Some(path) = &args.profile {
        let profile = MeasuredProfile::load(path)?;
        source = profile.provenance();
        println!("replaying {} ({source})", path.display());
        rows.extend(replay(&args, profile, &dir)?);
    } else {
        let backend = super::throughput::open(&args.backend)?;
        for name in &args.models {
            rows.extend(backend.run(ModelRun {
                args: &args,
                name,
                dir: &dir,
            })?);
        }
    }
    let mut csv = std::fs::File::create(dir.join("throughput.csv"))?;
    writeln!(
        csv,
        "model,deadline_factor,scheme,max_rate_rps,sustained_rate_rps,met_at_sustained,mean_batch,server_ms_per_request,utilisation,splits"
    )?;
    for r in &rows {
        writeln!(
            csv,
            "{},{},{},{:.2},{:.2},{:.3},{:.2},{:.4},{:.3},{}",
            r.model,
            r.factor,
            r.scheme.name(),
            r.rate,
            r.sustained,
            r.met,
            r.mean_batch,
            r.busy_ms,
            r.utilisation,
            r.splits
                .iter()
                .map(|k| k.to_string())
                .collect::<Vec<_>>()
                .join(" ")
        )?;
    }
    println!("wrote {}", dir.display());
    // "n/a" when a scheme was not measured, or sustained no rate at all (nothing to divide by).
    let ratio = |model: &str, factor: f64, a: Scheme, b: Scheme| -> String {
        let get = |s| {
            rows.iter()
                .find(|r| r.model == model && (r.factor - factor).abs() < 1e-9 && r.scheme == s)
                .map(|r| r.rate)
        };
        match (get(a), get(b)) {
            (Some(x), Some(y)) if y > 0.0 => format!("{:.2}", x / y),
            _ => "n/a".into(),
        }
    };
    let model = if rows
        .iter()
        .any(|r| r.model == "vit-b16" && (r.factor - 0.9).abs() < 1e-9)
    {
        "vit-b16"
    } else {
        rows.first().map_or("deit-tiny", |r| r.model.as_str())
    };
    println!(
        "shared/per-split={} shared/server-only={} ({model}, deadline factor 0.9; server profile {source})",
        ratio(model, 0.9, Scheme::Shared, Scheme::PerSplit),
        ratio(model, 0.9, Scheme::Shared, Scheme::ServerOnly)
    );
    Ok(())
}

/// [`run_model`] on whichever backend `--backend` names.
struct ModelRun<'a> {
    args: &'a Args,
    name: &'a str,
    dir: &'a std::path::Path,
}

impl BackendTask for ModelRun<'_> {
    type Output = Result<Vec<Row>>;
    fn run<B: Backend>(self, backend: &B) -> Result<Vec<Row>> {
        println!("{}: server on {}", self.name, backend.name());
        run_model(
            self.args,
            self.name,
            load(backend.clone(), self.name)?,
            self.dir,
        )
    }
}

fn load<B: Backend>(be: B, name: &str) -> Result<Transformer<B>> {
    Ok(match name {
        "deit-tiny" => fixtures::deit_tiny(be)?,
        "vit-b16" => {
            println!("vit-b16 uses seeded random weights (compute cost only)");
            Transformer::new(
                be,
                ModelConfig::preset("vit_base_patch16_224")?,
                &SeededRandom::new(0),
            )?
        }
        other => anyhow::bail!("unknown model `{other}` (deit-tiny, vit-b16)"),
    })
}

/// Measures the server profile of `model` here, then runs the searches with the real model's
/// batched compute on the wall clock.
fn run_model<B: Backend>(
    args: &Args,
    name: &str,
    model: Transformer<B>,
    dir: &std::path::Path,
) -> Result<Vec<Row>> {
    let model = Arc::new(model);
    let be = model.backend().clone();
    let tokens = 197;
    let spec = ProfileSpec {
        batches: vec![1, 2, 4, 8, 16],
        tokens: vec![tokens],
        repeats: 7,
        per_layer: false,
    };
    let make = |b: usize| -> collab_core::Result<Input<B>> {
        Ok(Input::Images(be.zeros(&[b, 3, 224, 224])?))
    };
    let profile = Arc::new(profile_model(&model, name, &spec, &make)?);
    print_batch_costs(name, &profile, &spec.batches, tokens);
    let image = be.from_vec(
        (0..3 * 224 * 224)
            .map(|i| ((i % 251) as f32 / 125.0) - 1.0)
            .collect(),
        &[1, 3, 224, 224],
    )?;
    let payload = |split: usize| -> Result<Payload<B>> {
        Ok(if split == 0 {
            Payload::Input(Input::Images(image.clone()))
        } else {
            let h = model.embed(&Input::Images(image.clone()))?;
            Payload::Hidden(model.run_blocks(h, 0..split)?)
        })
    };
    let sync_be = be.clone();
    let mut clock = WallClock::new(move || sync_be.synchronize());
    let facts = Facts {
        name,
        layers: model.num_blocks(),
        features: model.config().encoder().hidden,
        tokens,
    };
    search_all(
        args,
        &facts,
        &profile,
        &payload,
        &|| ModelExecutor::new(model.clone()),
        &mut clock,
        dir,
    )
}

/// Replays `profile` (measured elsewhere, or estimated) with nothing computed.
fn replay(args: &Args, profile: MeasuredProfile, dir: &std::path::Path) -> Result<Vec<Row>> {
    let config = ModelConfig::preset(&profile.model).map_err(|e| {
        anyhow::anyhow!(
            "the profile's model `{}` must be a preset name: {e}",
            profile.model
        )
    })?;
    let tokens = match &config {
        ModelConfig::Vit(v) => v.num_tokens(),
        ModelConfig::Bert(_) => anyhow::bail!("collabtrans-throughput replays image models"),
    };
    let name = match profile.model.as_str() {
        "deit_tiny_patch16_224" => "deit-tiny",
        "vit_base_patch16_224" => "vit-b16",
        other => other,
    }
    .to_string();
    let batches: Vec<usize> = {
        let mut b: Vec<usize> = profile.points.iter().map(|p| p.work.batch()).collect();
        b.sort_unstable();
        b.dedup();
        b
    };
    let profile = Arc::new(profile);
    print_batch_costs(&name, &profile, &batches, tokens);
    let mut clock = ProfileClock::new(profile.clone(), tokens);
    let facts = Facts {
        name: &name,
        layers: profile.layers,
        features: config.encoder().hidden,
        tokens,
    };
    let layers = profile.layers;
    search_all(
        args,
        &facts,
        &profile,
        &|_| Ok(()),
        &|| ReplayExecutor::new(layers),
        &mut clock,
        dir,
    )
}

/// What batching buys on the server: a block's time per request at each profiled batch.
fn print_batch_costs(name: &str, profile: &MeasuredProfile, batches: &[usize], tokens: usize) {
    let per_request: Vec<String> = batches
        .iter()
        .map(|&b| {
            let t = profile.blocks_seconds(0..1, b, tokens).unwrap_or(f64::NAN);
            format!("b={b} {:.3}", t * 1e3 / b as f64)
        })
        .collect();
    println!(
        "{name}: one block, ms per request: {}",
        per_request.join(", ")
    );
}

/// The served model's sizes.
struct Facts<'a> {
    name: &'a str,
    layers: usize,
    features: usize,
    tokens: usize,
}

/// The three schemes' rate searches at every deadline factor, on any executor and clock.
fn search_all<E: Executor>(
    args: &Args,
    facts: &Facts<'_>,
    profile: &Arc<MeasuredProfile>,
    payload: &dyn Fn(usize) -> Result<E::Payload>,
    executor: &dyn Fn() -> E,
    clock: &mut dyn StepClock,
    dir: &std::path::Path,
) -> Result<Vec<Row>>
where
    E::Payload: Clone,
{
    let (name, tokens) = (facts.name, facts.tokens);
    let table = match (name, &args.table) {
        (_, Some(path)) => AccuracyTable::load(path)?,
        ("deit-tiny", None) => find_table(),
        _ => empty_table(name, tokens, facts.features, facts.layers),
    };
    println!(
        "{name}: server profile ready; accuracy table with {} entries",
        table.entries.len()
    );
    let pass = remaining(profile, tokens)(0, args.budget);
    let factors = if name == "vit-b16" {
        &args.vitb_factors
    } else {
        &args.factors
    };
    let requests = if name == "vit-b16" {
        (args.requests / 3).max(30)
    } else {
        args.requests
    };
    let mut rows = vec![];
    for &factor in factors {
        // Shared and per-split serve the same device choices; server-only sends raw inputs.
        let split_plans = device_plans(args, true, factor, profile, &table, facts, pass, payload)?;
        let raw_plans = device_plans(args, false, factor, profile, &table, facts, pass, payload)?;
        let devices = |scheme| {
            if scheme == Scheme::ServerOnly {
                &raw_plans
            } else {
                &split_plans
            }
        };
        // The three searches advance in lockstep, one trial of each scheme per round, so
        // that this shared machine's slow and fast spells fall on all of them alike.
        let mut searches: Vec<(Scheme, RateSearch)> = Scheme::ALL
            .iter()
            .map(|&scheme| {
                let guess = capacity_guess(profile, tokens, devices(scheme), args.budget);
                let search = match args.rate {
                    Some(rate) => RateSearch::once(rate),
                    None => RateSearch::new(guess, args.steps),
                };
                (scheme, search)
            })
            .collect();
        loop {
            // Per search: the rate to try and its first seed (a second look at a near miss
            // runs on fresh seeds).
            let planned: Vec<Option<(f64, u64)>> = searches
                .iter()
                .map(|(_, s)| {
                    let first = FIRST_SEED + s.look() * args.seeds.max(1);
                    s.next_rate().map(|rate| (rate, first))
                })
                .collect();
            if planned.iter().all(Option::is_none) {
                break;
            }
            // Seeds outermost, so that a slow spell of this machine falls on every scheme.
            let mut pooled = vec![(Trial::default(), vec![]); searches.len()];
            for seed in 0..args.seeds.max(1) {
                for (i, (scheme, _)) in searches.iter().enumerate() {
                    if let Some((rate, first)) = planned[i] {
                        let load = Load {
                            devices: devices(*scheme),
                            rate,
                            requests,
                            seed: first + seed,
                        };
                        let t =
                            scheme_trial(args, *scheme, executor(), profile, tokens, clock, &load)?;
                        pooled[i].0 = pooled[i].0.pooled(t);
                        pooled[i].1.push(t.met());
                    }
                }
            }
            for (i, (scheme, search)) in searches.iter_mut().enumerate() {
                if let Some((rate, _)) = planned[i] {
                    let (t, mets) = &pooled[i];
                    let mets: Vec<String> = mets.iter().map(|m| format!("{m:.2}")).collect();
                    let look = if search.look() == 1 {
                        ", second look"
                    } else {
                        ""
                    };
                    println!(
                        "    {:<11} rate {rate:>7.2} met {:.3} (seeds {}{look}) mean_batch {:.2} server_ms/request {:.3} utilisation {:.2}",
                        scheme.name(),
                        t.met(),
                        mets.join(" "),
                        t.mean_batch(),
                        t.busy_per_done() * 1e3,
                        t.utilisation()
                    );
                    search.record(rate, *t);
                }
            }
        }
        for (scheme, search) in searches {
            let (tried, t) = search.best();
            let rate = search.crossing();
            if search.capped() {
                println!(
                    "    ({} sustained the top of its search: {tried:.2} is a lower bound)",
                    scheme.name()
                );
            }
            let splits = devices(scheme).iter().map(|p| p.split).collect::<Vec<_>>();
            println!(
                "{name} deadline={factor:.1} {:<12} max_rate={rate:>7.2} req/s (sustained {tried:.2} with met={:.3} mean_batch={:.2} server_ms_per_request={:.3} utilisation={:.2}) splits={splits:?}",
                scheme.name(),
                t.met(),
                t.mean_batch(),
                t.busy_per_done() * 1e3,
                t.utilisation()
            );
            rows.push(Row {
                model: name.to_string(),
                factor,
                scheme,
                rate,
                sustained: tried,
                met: t.met(),
                mean_batch: t.mean_batch(),
                busy_ms: t.busy_per_done() * 1e3,
                utilisation: t.utilisation(),
                splits,
            });
        }
    }
    let series: Vec<Series> = Scheme::ALL
        .iter()
        .map(|&s| Series {
            label: s.name().to_string(),
            points: rows
                .iter()
                .filter(|r| r.scheme == s)
                .map(|r| (r.factor, r.rate))
                .collect(),
        })
        .collect();
    line_chart(
        &dir.join(format!("figure3-{name}.png")),
        &format!("{name}: max throughput with >=90% on time vs deadline factor"),
        ("deadline / on-device latency", "requests per second"),
        &series,
    )?;
    Ok(rows)
}

fn find_table() -> AccuracyTable {
    for tag in ["deit-tiny-headline", "deit-tiny"] {
        let path = std::path::Path::new("results/svd-accuracy")
            .join(tag)
            .join("table.json");
        if let Ok(t) = AccuracyTable::load(&path) {
            println!("using accuracy table {}", path.display());
            return t;
        }
    }
    println!(
        "no accuracy table (run `cargo xtask exp svd-accuracy`): devices send f32 activations"
    );
    empty_table("deit-tiny", 197, 192, 12)
}

fn empty_table(model: &str, tokens: usize, features: usize, layers: usize) -> AccuracyTable {
    AccuracyTable {
        model: model.into(),
        metric: "none".into(),
        baseline: 0.0,
        tokens,
        features,
        layers,
        entries: vec![],
    }
}

/// Each device profile's plan: its split (chosen by the SPEC §1 selector when `offload`, else
/// the raw input), its delays and deadline, and the payload it sends.
#[allow(clippy::too_many_arguments)]
fn device_plans<P>(
    args: &Args,
    offload: bool,
    factor: f64,
    profile: &Arc<MeasuredProfile>,
    table: &AccuracyTable,
    facts: &Facts<'_>,
    pass: f64,
    payload: &dyn Fn(usize) -> Result<P>,
) -> Result<Vec<DevicePlan<P>>> {
    let (layers, d, tokens) = (facts.layers, facts.features, facts.tokens);
    let response_bytes = 4 * d.max(1000);
    let raw = 3 * 224 * 224;
    let mut plans = vec![];
    if args.slowdowns.len() != DEVICES.len()
        || args.slowdowns.iter().any(|&s| s.is_nan() || s <= 0.0)
    {
        anyhow::bail!(
            "--slowdowns needs {} positive factors (one per device profile), got {:?}",
            DEVICES.len(),
            args.slowdowns
        );
    }
    for ((label, bandwidth, rtt, weight), &slow) in DEVICES.into_iter().zip(&args.slowdowns) {
        let device: Arc<dyn CostModel> = Arc::new(Scaled {
            inner: profile.clone(),
            factor: slow,
            label: label.into(),
        });
        let on_device = device_seconds(device.as_ref(), layers, tokens)?
            + device.seconds(&Workload::Head { batch: 1, tokens })?;
        let budget = factor * on_device;
        let back = response_bytes as f64 / bandwidth + rtt / 2.0;
        let (split, to_server) = if !offload {
            (0, raw as f64 / bandwidth + rtt / 2.0)
        } else {
            let config = SelectorConfig {
                layers,
                tokens,
                features: d,
                raw_input_bytes: raw,
                response_bytes,
                device_codec_scale: slow,
                allow_device_only: false,
            };
            let selector =
                SplitSelector::new(device.clone(), profile.clone(), table.clone(), config)?;
            let c = Conditions {
                bandwidth,
                rtt,
                server_queue: args.queue_passes * pass,
                deadline: budget,
                max_loss: args.max_loss,
            };
            match selector.choose_candidate(&c) {
                // `device` is the embedding, blocks 0..k and the encode on this device.
                Ok(x) => (
                    x.choice.split,
                    x.device + x.choice.bytes as f64 / bandwidth + rtt / 2.0,
                ),
                // Nothing meets the deadline even on an idle server: send the raw input.
                Err(collab_core::Error::NoPrediction { .. }) => {
                    (0, raw as f64 / bandwidth + rtt / 2.0)
                }
                Err(e) => return Err(e.into()),
            }
        };
        println!(
            "  {label:<9} x{slow:<4} on-device {:>7.2} ms  deadline {:>7.2} ms  split {split:>2}  at server after {:>7.2} ms",
            on_device * 1e3,
            budget * 1e3,
            to_server * 1e3
        );
        plans.push(DevicePlan {
            weight,
            split,
            to_server,
            back,
            budget,
            payload: payload(split)?,
        });
    }
    Ok(plans)
}

/// One trial of `scheme` on `load`.
fn scheme_trial<E: Executor>(
    args: &Args,
    scheme: Scheme,
    exec: E,
    profile: &Arc<MeasuredProfile>,
    tokens: usize,
    clock: &mut dyn StepClock,
    load: &Load<'_, E::Payload>,
) -> Result<Trial>
where
    E::Payload: Clone,
{
    let rem = remaining(profile, tokens);
    let b = args.budget;
    Ok(match scheme {
        Scheme::Shared => run_trial(SharedModel::new(b)?, exec, rem, clock, load)?,
        Scheme::PerSplit => run_trial(PerSplit::new(b)?, exec, rem, clock, load)?,
        Scheme::ServerOnly => run_trial(ServerOnly::new(b)?, exec, rem, clock, load)?,
    })
}
