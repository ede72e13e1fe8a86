//! `llm-plan`: places an LLM's operators between a device and a cloud (SPEC §7) and prints
//! the placement per layer and operator, TTFT, TPOT and cloud cost, with the cloud-only and
//! device-only baselines.
//!
//! ```text
//! cargo run --release -p collab-examples --bin llm-plan -- --model llama2-7b --cloud a100 \
//!     --device snapdragon-8s-gen3 --prompt 512 --decode 128
//! ```

use std::path::PathBuf;

use anyhow::Result;
use clap::Parser;
use collab_core::cost::CostModel;
use collab_core::graph::{DecoderConfig, LayerGraph, Stage};
use collab_policies::operator::{
    Calibration, DeviceSpec, Everything, Exact, Greedy, Link, PlacementPolicy, Pricing,
    RequestPlan, Roofline, Side, Sla, placement_lines, plan_request,
};

#[derive(Parser, Debug)]
#[command(about = "Place an LLM's operators between a device and a cloud at the least cloud cost")]
struct Args {
    /// Decoder preset (llama2-7b, llama-small, llama-tiny).
    #[arg(long, default_value = "llama2-7b")]
    model: String,
    /// Cloud preset (v100s, a100, jetson-nano, snapdragon-8s-gen3).
    #[arg(long, default_value = "a100")]
    cloud: String,
    /// Device preset.
    #[arg(long, default_value = "snapdragon-8s-gen3")]
    device: String,
    /// Prompt tokens.
    #[arg(long, default_value_t = 512)]
    prompt: usize,
    /// Generated tokens.
    #[arg(long, default_value_t = 128)]
    decode: usize,
    /// Planner: exact (Pareto dynamic programming) or greedy (SPEC §7).
    #[arg(long, default_value = "exact")]
    policy: String,
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
    /// Price the device with a measured calibration (`cargo xtask exp calibrate-cost-model`
    /// writes one) instead of the `--device` preset.
    #[arg(long)]
    device_calibration: Option<PathBuf>,
    /// Price the cloud with a measured calibration (its `price_per_second` is the cloud price)
    /// instead of the `--cloud` preset.
    #[arg(long)]
    cloud_calibration: Option<PathBuf>,
}

/// The cost model of one side and its price per second: a preset's roofline, or the
/// calibrated roofline fitted from a calibration file.
fn machine(
    preset: &str,
    calibration: Option<&PathBuf>,
) -> Result<(Box<dyn CostModel>, String, f64)> {
    Ok(match calibration {
        Some(path) => {
            let cal = Calibration::load(path)?;
            let price = cal.price_per_second;
            let model = cal.fit()?;
            let name = model.name();
            (Box::new(model), name, price)
        }
        None => {
            let spec = DeviceSpec::preset(preset)?;
            let price = spec.price_per_second;
            let name = spec.name.clone();
            (Box::new(Roofline::new(spec)?), name, price)
        }
    })
}

fn summary(name: &str, r: &RequestPlan) {
    println!(
        "{name:<12} TTFT {:>8.1} ms  TPOT {:>7.1} ms  cloud cost ${:.3e}  SLA {}",
        r.ttft * 1e3,
        r.tpot * 1e3,
        r.cost,
        if r.met { "met" } else { "missed" }
    );
}

fn main() -> Result<()> {
    let args = Args::parse();
    let cfg = DecoderConfig::preset(&args.model)?;
    let layers = LayerGraph::decoder(&cfg)?;
    let (cloud, cloud_name, cloud_price) = machine(&args.cloud, args.cloud_calibration.as_ref())?;
    let (device, device_name, _) = machine(&args.device, args.device_calibration.as_ref())?;
    println!(
        "{}: device {device_name}, cloud {cloud_name} (${cloud_price:.2e}/s)",
        cfg.name
    );
    let link = Link {
        bandwidth: args.bandwidth_mbps * 1e6 / 8.0,
        rtt: args.rtt_ms * 1e-3,
    };
    link.validate()?;
    let pricing = Pricing {
        device: device.as_ref(),
        cloud: cloud.as_ref(),
        cloud_price,
        link,
    };
    let sla = Sla {
        ttft: args.ttft_ms * 1e-3,
        tpot: args.tpot_ms * 1e-3,
    };
    let policy: &dyn PlacementPolicy = match args.policy.as_str() {
        "exact" => &Exact,
        "greedy" => &Greedy,
        other => anyhow::bail!("unknown policy `{other}`; use exact or greedy"),
    };
    let plan = plan_request(policy, &layers, args.prompt, args.decode, sla, &pricing)?;
    let stages = [
        (
            "prefill",
            Stage::Prefill {
                prompt: args.prompt,
            },
            &plan.prefill,
        ),
        (
            "decode (last step)",
            Stage::Decode {
                past: args.prompt + args.decode - 1,
            },
            &plan.decode,
        ),
    ];
    for (name, stage, placed) in stages {
        let graph = layers.lower(stage);
        println!(
            "== {name}: {:.1} ms, {} transfers ({} bytes), {:.1} ms of cloud compute",
            placed.plan.latency * 1e3,
            placed.plan.transfers(),
            placed.plan.transfer_bytes(),
            placed.plan.cloud_seconds * 1e3
        );
        for line in placement_lines(&graph, &placed.plan.sides) {
            println!("  {line}");
        }
    }
    println!("KV cache: {:?}", plan.kv);
    summary(policy.name(), &plan);
    let cloud_only = plan_request(
        &Everything(Side::Cloud),
        &layers,
        args.prompt,
        args.decode,
        sla,
        &pricing,
    )?;
    summary("cloud-only", &cloud_only);
    let device_only = plan_request(
        &Everything(Side::Device),
        &layers,
        args.prompt,
        args.decode,
        sla,
        &pricing,
    )?;
    summary("device-only", &device_only);
    println!(
        "cost reduction vs cloud-only: {:.3}",
        1.0 - plan.cost / cloud_only.cost
    );
    Ok(())
}
