//! OTAS experiments (SPEC §4): `exp token-train` (prompt learning), `exp token-profile`
//! (accuracy and latency per gamma) and `exp otas` (trace-driven serving against baselines).
//!
//! `exp otas` serves two traces with every scheme on the real DeiT-Tiny backbone, one after
//! another in one run: OTAS (adaptive batching + DP token allocation with the load-based rule as
//! fallback, its rate table profiled on this machine; also, as a variant and not a baseline,
//! with the published table scaled by the throughput ratio), fixed merging at gamma = -5..-20, fixed prompting at 2, 4, 8, gamma = 0 with the
//! shared backbone and task heads (PetS-like) and model switching (INFaaS-like, see
//! [`switch`]), and PRODIGY's reduction scheduler over the warmed repositories of
//! `exp prodigy` (and over its unwarmed task models; see [`prodigy`]). Arrival rates are the paper's scaled by this machine's measured throughput (the
//! factor is printed); latency budgets and batching thresholds are the paper's, in seconds.
//! Writes `results/otas/serving.csv`, `gamma-<trace>.png` and prints
//! `otas/best-baseline utility=X.XX` last.

pub(crate) mod backbone;
mod prodigy;
mod profile;
mod report;
mod serve;
mod switch;
pub(crate) mod train;

pub(crate) use profile::Args as ProfileArgs;
pub(crate) use profile::run as run_profile;

use anyhow::Result;
use collab_core::adaptive::{Gamma, TokenAllocator, TokenProfile};
use collab_policies::prodigy::serving::ReductionScheduler;
use collab_policies::token::allocate::{DpAllocator, DpParams};
use collab_policies::token::batching::{AdaptiveBatcher, BatchingParams};
use collab_policies::token::fixed::FixedGamma;
use collab_policies::token::load_rule::{LoadRule, RateTable};
use collab_policies::token::repo::PromptRepository;
use collab_policies::token::serve::{BatchExecutor, ServeConfig, serve};

use backbone::{Backbone, TaskData, repo_dir};
use collab_bench::traces;
use prodigy::ProdigyExecutor;
use serve::{BackboneExecutor, SwitchingExecutor, Workload};
use switch::Switcher;

/// Share of a gamma's measured throughput up to which the profiled rate table maps to it.
const RATE_HEADROOM: f64 = 0.9;

/// The paper's gamma = 0 capacity (queries/s): the load-based table maps q < 380 to gamma 0.
const PAPER_GAMMA0_RATE: f64 = 380.0;

/// Arguments.
#[derive(clap::Args, Debug)]
pub(crate) struct Args {
    /// Seconds of each trace (this machine's time).
    #[arg(long, default_value_t = 60.0)]
    seconds: f64,
    /// Traces to serve.
    #[arg(long, value_delimiter = ',', default_values_t = ["poisson".to_string(), "bursty".to_string()])]
    traces: Vec<String>,
    /// Seed of traces and query draws.
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// Test examples per task (as profiled).
    #[arg(long, default_value_t = 600)]
    test_examples: usize,
    /// Multiplies the paper's times (latency budgets 0.6/1 s, batching thresholds delta and
    /// eta 0.5 s). 1 keeps them; rates are scaled to this machine's throughput either way.
    #[arg(long, default_value_t = 1.0)]
    time_scale: f64,
    /// Only these schemes (default: all).
    #[arg(long, value_delimiter = ',')]
    schemes: Vec<String>,
}

/// A scheme of the comparison.
#[derive(Clone, Debug, PartialEq)]
enum Scheme {
    /// DP allocation with the load rule on a rate table profiled on this machine.
    Otas,
    /// The same with the published rate table scaled by the throughput ratio.
    OtasPublishedTable,
    Fixed(Gamma),
    Switching,
    /// PRODIGY: the reduction scheduler with each task's warmed repository.
    Prodigy,
    /// The same scheduler with each task's model fine-tuned without merging.
    ProdigyUnwarmed,
}

impl Scheme {
    fn name(&self) -> String {
        match self {
            Scheme::Otas => "otas".into(),
            Scheme::OtasPublishedTable => "otas-published-table".into(),
            Scheme::Fixed(g) if *g < 0 => format!("merge{g}"),
            Scheme::Fixed(g) if *g > 0 => format!("prompt+{g}"),
            Scheme::Fixed(_) => "pets-like-gamma0".into(),
            Scheme::Switching => "infaas-like-switching".into(),
            Scheme::Prodigy => "prodigy".into(),
            Scheme::ProdigyUnwarmed => "prodigy-unwarmed".into(),
        }
    }

    fn is_prodigy(&self) -> bool {
        matches!(self, Scheme::Prodigy | Scheme::ProdigyUnwarmed)
    }
}

fn schemes() -> Vec<Scheme> {
    let mut s = vec![Scheme::Otas, Scheme::OtasPublishedTable];
    s.extend([-5, -10, -15, -20, 2, 4, 8, 0].map(Scheme::Fixed));
    s.push(Scheme::Switching);
    s.extend([Scheme::Prodigy, Scheme::ProdigyUnwarmed]);
    s
}

pub(crate) fn run(args: Args) -> Result<()> {
    let saved = profile::load_saved()?;
    let mut data = TaskData::load()?;
    let repo = PromptRepository::open(repo_dir())?;
    let mut backbone = Backbone::load(&repo)?;
    backbone.schedules = saved.schedules.clone();
    let profile = &saved.table;
    let mut wanted: Vec<Scheme> = schemes()
        .into_iter()
        .filter(|s| args.schemes.is_empty() || args.schemes.contains(&s.name()))
        .collect();
    // PRODIGY needs `exp prodigy`'s tables: without them its schemes are left out, unless
    // named.
    let prodigy = if wanted.iter().any(Scheme::is_prodigy) {
        match prodigy::Prodigy::load(&backbone, &data, args.test_examples)? {
            Ok(p) => {
                p.print();
                Some(p)
            }
            Err(why) if args.schemes.is_empty() => {
                println!("PRODIGY schemes left out: {why}");
                wanted.retain(|s| !s.is_prodigy());
                None
            }
            Err(why) => anyhow::bail!("{why}"),
        }
    } else {
        None
    };
    for set in &mut data.test {
        let n = args.test_examples.min(set.len());
        *set = set.subset(&(0..n).collect::<Vec<_>>());
    }

    // Scale: this machine's gamma = 0 throughput at batch 32 over the paper's.
    let t0 = profile
        .per_sample_time(1, 0, 32)
        .ok_or_else(|| anyhow::anyhow!("the profile has no gamma 0 time"))?;
    let scale = (1.0 / t0) / PAPER_GAMMA0_RATE;
    println!(
        "rate scale: this machine serves {:.1} queries/s at gamma 0 (batch 32), the paper {PAPER_GAMMA0_RATE}: arrival rates = paper rates x {scale:.4}",
        1.0 / t0
    );
    let tiny_acc: Vec<f64> = (0..3)
        .map(|t| profile.accuracy(t, 0).unwrap_or(0.0))
        .collect();
    let mut switcher = Switcher::new(&backbone.model, &tiny_acc, args.seed)?;
    println!(
        "model switching: DeiT-Tiny {:.1}/s, DeiT-Small-sized {:.1}/s (batch 16); Small's accuracy ASSUMED = Tiny's + {:.3}",
        switcher.throughput.0,
        switcher.throughput.1,
        switch::ASSUMED_GAP
    );
    let table = RateTable::profiled(profile, 1, RATE_HEADROOM)?;
    println!(
        "profiled rate table (queries/s -> gamma): {} else {}",
        table
            .thresholds
            .iter()
            .map(|(t, g)| format!("<{t:.1}->{g}"))
            .collect::<Vec<_>>()
            .join(" "),
        table.otherwise
    );
    let mut rows = Vec::new();
    for name in &args.traces {
        let tr = match name.as_str() {
            "poisson" => {
                traces::poisson_moving(args.seconds, args.seconds / 12.0, scale, args.seed)?
            }
            "bursty" => traces::bursty(args.seconds, scale, args.seed + 1)?,
            other => anyhow::bail!("unknown trace `{other}` (poisson, bursty)"),
        };
        let (below, peak) = tr.stats(300.0);
        println!(
            "\ntrace {}: {} queries in {:.0} s; paper-unit rate: {:.0}% of seconds below 300/s, peak {:.0}/s",
            tr.name,
            tr.arrivals.len(),
            args.seconds,
            below * 100.0,
            peak
        );
        let work = Workload::new(&tr, &data, args.time_scale, args.seed + 7);
        // No scheme can earn more than every query answered in time at the accuracy of its
        // task's best gamma.
        let bound: f64 = work
            .queries
            .iter()
            .map(|q| {
                let best = profile
                    .gammas()
                    .iter()
                    .filter_map(|&g| profile.accuracy(q.task, g))
                    .fold(0.0, f64::max);
                q.utility * best
            })
            .sum();
        println!("utility upper bound (all in time at each task's best accuracy): {bound:.2}");
        report::Row::header();
        for scheme in &wanted {
            let mut params = BatchingParams::published();
            params.delta *= args.time_scale;
            params.eta *= args.time_scale;
            let mut former = AdaptiveBatcher::new(params)?;
            let mut allocator: Box<dyn TokenAllocator> = match scheme {
                Scheme::Otas | Scheme::OtasPublishedTable => {
                    let table = if *scheme == Scheme::Otas {
                        RateTable::profiled(profile, 1, RATE_HEADROOM)?
                    } else {
                        RateTable::published().scaled(scale)?
                    };
                    let rule = LoadRule::new(table, LoadRule::PUBLISHED_KAPPA)?;
                    Box::new(DpAllocator::new(DpParams::published(), rule)?)
                }
                Scheme::Fixed(g) => Box::new(FixedGamma::new(*g)),
                // Earliest deadline first at gamma 0, on whichever variant is loaded.
                Scheme::Switching => Box::new(FixedGamma::new(0)),
                Scheme::Prodigy | Scheme::ProdigyUnwarmed => {
                    Box::new(ReductionScheduler::new(RATE_HEADROOM)?)
                }
            };
            let exec = BackboneExecutor {
                backbone: &backbone,
                data: &data,
                work: &work,
            };
            let config = ServeConfig::default();
            let started = std::time::Instant::now();
            let (mut switching, mut plain, mut warmed) = (None, None, None);
            let mut plan_with: &dyn TokenProfile = profile;
            let ex: &mut dyn BatchExecutor = match (scheme, &prodigy) {
                (Scheme::Switching, _) => {
                    switcher.reset(args.seed);
                    switching.insert(SwitchingExecutor::new(exec, &mut switcher))
                }
                (Scheme::Prodigy | Scheme::ProdigyUnwarmed, Some(p)) => {
                    let with = if *scheme == Scheme::Prodigy {
                        &p.warmed
                    } else {
                        &p.unwarmed
                    };
                    plan_with = with;
                    warmed.insert(ProdigyExecutor::new(&backbone, &data, &work, p, with))
                }
                (Scheme::Prodigy | Scheme::ProdigyUnwarmed, None) => {
                    anyhow::bail!("PRODIGY's tables were not loaded")
                }
                _ => plain.insert(exec),
            };
            let log = serve(
                &work.queries,
                &mut former,
                allocator.as_mut(),
                plan_with,
                ex,
                &config,
            )?;
            let load_seconds = switching.map_or(0.0, |s| s.load_seconds)
                + warmed.as_ref().map_or(0.0, |w| w.load_seconds);
            if let Some(w) = &warmed {
                println!(
                    "{}: {} checkpoint loads, {:.2} s (charged to their batches)",
                    scheme.name(),
                    w.loads,
                    w.load_seconds
                );
            }
            // Every query ends in exactly one outcome.
            let mut ids: Vec<u64> = log.outcomes.iter().map(|(q, _)| q.id).collect();
            ids.sort_unstable();
            ids.dedup();
            if ids.len() != work.queries.len() || log.outcomes.len() != work.queries.len() {
                anyhow::bail!(
                    "{}: {} outcomes for {} distinct of {} queries",
                    scheme.name(),
                    log.outcomes.len(),
                    ids.len(),
                    work.queries.len()
                );
            }
            let row = report::Row::new(
                &tr.name,
                &scheme.name(),
                &log,
                load_seconds,
                started.elapsed().as_secs_f64(),
            );
            row.print();
            if *scheme == Scheme::Otas {
                report::gamma_plot(&tr, &log, scale)?;
            }
            rows.push(row);
        }
    }
    report::write(&rows)?;
    report::summary(&rows);
    Ok(())
}
