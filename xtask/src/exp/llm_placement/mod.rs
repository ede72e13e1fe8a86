//! `cargo xtask exp llm-placement`: simulated TTFT, TPOT and cloud cost per request of
//! operator-level device–cloud placement (SPEC §7) for LLaMA-2-7B fp16, over prompt and decode
//! lengths, for Group-L (V100S + Jetson Nano) and Group-H (A100 + Snapdragon 8s Gen 3),
//! against device-only and cloud-only. Writes `results/llm-placement/{requests.csv,
//! fig6-latency-*.png, fig7-cost-*.png}` and prints
//! `group-L cost_reduction=0.XXX group-H cost_reduction=0.XXX sla_met=true|false` last.
//!
//! The cost reduction of a group is `1 - Σ cost(exact) / Σ cost(cloud-only)` over its
//! requests; `sla_met` says that every exact plan meets TTFT and TPOT.

mod report;

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Result, bail};
use collab_core::graph::{DecoderConfig, LayerGraph};
use collab_policies::operator::{
    Everything, Exact, Greedy, Group, Link, PlacementPolicy, Pricing, RequestPlan, Roofline, Side,
    Sla, plan_request,
};

use super::results_dir;

/// Arguments.
#[derive(clap::Args, Debug)]
pub(crate) struct Args {
    /// Decoder preset.
    #[arg(long, default_value = "llama2-7b")]
    model: String,
    /// Prompt lengths swept with `--fixed` decode tokens.
    #[arg(long, value_delimiter = ',', default_values_t = vec![32, 64, 128, 256, 512, 1024, 2048])]
    prompts: Vec<usize>,
    /// Decode lengths swept with a `--fixed`-token prompt.
    #[arg(long, value_delimiter = ',', default_values_t = vec![32, 64, 128, 256, 512, 1024, 2048])]
    decodes: Vec<usize>,
    /// The length held fixed in each sweep.
    #[arg(long, default_value_t = 128)]
    fixed: usize,
    /// Link bandwidth in Mbit/s, each way.
    #[arg(long, default_value_t = 100.0)]
    bandwidth_mbps: f64,
    /// Link round-trip time in milliseconds.
    #[arg(long, default_value_t = 10.0)]
    rtt_ms: f64,
    /// TTFT target in milliseconds.
    #[arg(long, default_value_t = 400.0)]
    ttft_ms: f64,
    /// TPOT target in milliseconds.
    #[arg(long, default_value_t = 100.0)]
    tpot_ms: f64,
    /// Output folder (default `results/llm-placement`).
    #[arg(long)]
    out: Option<PathBuf>,
}

/// One planned request of one policy in one group.
#[derive(Debug, Clone)]
pub(crate) struct Row {
    pub(crate) group: String,
    pub(crate) prompt: usize,
    pub(crate) decode: usize,
    pub(crate) policy: &'static str,
    pub(crate) plan: RequestPlan,
}

pub(crate) const POLICIES: [&str; 4] = ["device-only", "cloud-only", "greedy", "exact"];

pub(crate) fn run(args: Args) -> Result<()> {
    let started = Instant::now();
    let cfg = DecoderConfig::preset(&args.model)?;
    let layers = LayerGraph::decoder(&cfg)?;
    let link = Link {
        bandwidth: args.bandwidth_mbps * 1e6 / 8.0,
        rtt: args.rtt_ms * 1e-3,
    };
    link.validate()?;
    let sla = Sla {
        ttft: args.ttft_ms * 1e-3,
        tpot: args.tpot_ms * 1e-3,
    };
    if args.prompts.contains(&0) || args.decodes.contains(&0) || args.fixed == 0 {
        bail!("prompt and decode lengths must be positive");
    }
    let mut requests: Vec<(usize, usize)> = args.prompts.iter().map(|&p| (p, args.fixed)).collect();
    requests.extend(args.decodes.iter().map(|&d| (args.fixed, d)));
    requests.sort_unstable();
    requests.dedup();
    let policies: [&dyn PlacementPolicy; 4] = [
        &Everything(Side::Device),
        &Everything(Side::Cloud),
        &Greedy,
        &Exact,
    ];
    println!(
        "{} ({:.2}B parameters, {} bytes/element); link {} Mbit/s, RTT {} ms; SLA TTFT < {} ms, TPOT < {} ms",
        cfg.name,
        cfg.parameters() as f64 / 1e9,
        cfg.dtype_bytes,
        args.bandwidth_mbps,
        args.rtt_ms,
        args.ttft_ms,
        args.tpot_ms
    );
    let mut rows = Vec::new();
    for group in [Group::low(), Group::high()] {
        let device = Roofline::new(group.device.clone())?;
        let cloud = Roofline::new(group.cloud.clone())?;
        let pricing = Pricing {
            device: &device,
            cloud: &cloud,
            cloud_price: group.cloud.price_per_second,
            link,
        };
        for &(prompt, decode) in &requests {
            for policy in policies {
                let plan = plan_request(policy, &layers, prompt, decode, sla, &pricing)?;
                rows.push(Row {
                    group: group.name.clone(),
                    prompt,
                    decode,
                    policy: policy.name(),
                    plan,
                });
            }
        }
    }
    let out = match args.out {
        Some(p) => p,
        None => results_dir()?.join("llm-placement"),
    };
    std::fs::create_dir_all(&out)?;
    report::table(&rows);
    report::csv(&out.join("requests.csv"), &rows)?;
    report::figures(&out, &rows, args.fixed)?;
    let mut summary = Vec::new();
    let mut all_met = true;
    for group in [Group::low(), Group::high()] {
        let sum = |policy: &str| -> f64 {
            rows.iter()
                .filter(|r| r.group == group.name && r.policy == policy)
                .map(|r| r.plan.cost)
                .sum()
        };
        let exact: Vec<&Row> = rows
            .iter()
            .filter(|r| r.group == group.name && r.policy == "exact")
            .collect();
        all_met &= exact.iter().all(|r| r.plan.met);
        let reduction = 1.0 - sum("exact") / sum("cloud-only");
        let greedy = 1.0 - sum("greedy") / sum("cloud-only");
        println!(
            "{}: cost reduction vs cloud-only: exact {reduction:.3}, greedy {greedy:.3}",
            group.name
        );
        report::greedy_gaps(&rows, &group.name);
        summary.push(format!("{} cost_reduction={reduction:.3}", group.name));
    }
    println!(
        "wrote {} ({:.1} s)",
        out.display(),
        started.elapsed().as_secs_f64()
    );
    println!("{} sla_met={all_met}", summary.join(" "));
    Ok(())
}
