//! Experiment drivers. Each prints its table, writes it under `results/`, and prints one
//! summary line last.

mod accuracy;
mod arm_quant;
mod calibrate;
mod collabtrans;
mod distill;
mod estimate;
mod live_tokens;
mod llm_placement;
mod net_overhead;
mod otas;
mod plot;
mod prodigy;
mod profile;
mod scale_out;
mod soak;
mod stats;
mod sti;
mod svd_accuracy;
mod throughput;

use anyhow::Result;
use clap::Subcommand;

/// The experiments.
#[derive(Subcommand, Debug)]
pub(crate) enum Exp {
    /// Accuracy of a real checkpoint on its fixture data.
    Accuracy(accuracy::Args),
    /// Selective feature distillation (SPEC §6): AllDistill against random, similarity and
    /// prototype selection per client (Table 5.2).
    Distill(distill::Args),
    /// Forward throughput against the machine's dense matmul peak.
    ForwardThroughput(throughput::Args),
    /// Per-block latency profile (the measured CostModel), saved as JSON.
    BlockProfile(profile::Args),
    /// Shared-model server vs per-split and server-only batching (SPEC §2, Figure 3).
    CollabtransThroughput(collabtrans::Args),
    /// A per-block cost profile of a model on an H100, estimated from a roofline (not measured).
    EstimateProfile(estimate::Args),
    /// Accuracy loss of every activation codec at every split point and ratio (SPEC §1).
    SvdAccuracy(svd_accuracy::Args),
    /// Calibrated-roofline cost model of this CPU: held-out error per operator (SPEC §7).
    CalibrateCostModel(calibrate::Args),
    /// Operator-level LLM placement between device and cloud: TTFT, TPOT, cost (SPEC §7).
    LlmPlacement(llm_placement::Args),
    /// Token merging on the live server: throughput and accuracy per gamma over TCP.
    LiveTokens(live_tokens::Args),
    /// Server throughput over TCP against the in-process batch worker at the same load.
    NetOverhead(net_overhead::Args),
    /// On-device elastic execution under a memory budget: STI against its baselines (SPEC §3).
    Sti(sti::Args),
    /// Iterative prompt learning on frozen DeiT-Tiny (SPEC §4): digits and animal-vs-not tasks.
    TokenTrain(otas::train::Args),
    /// Accuracy and latency per gamma and batch size, and the merge schedules (SPEC §4).
    TokenProfile(otas::ProfileArgs),
    /// Trace-driven serving: OTAS against fixed gamma, PetS-like and model switching (SPEC §4).
    Otas(otas::Args),
    /// PRODIGY (SPEC §5): warm-up fine-tuning with token merging, the planner and ensembles
    /// against Unwarmed, Maxprune and Exhaustive (Figures 4.7, 4.8).
    Prodigy(prodigy::Args),
    /// DeiT-Tiny on the quantised device backend at f32/q8/q4: accuracy, agreement, memory.
    ArmQuant(arm_quant::Args),
    /// Many requests from several devices with disconnects, stalls, restarts and malformed
    /// frames injected: every request answered exactly once?
    Soak(soak::Args),
    /// 1, 2 and 4 workers behind a real nats-server (GPU time emulated): sustainable
    /// throughput, p99, and requests lost or duplicated when a worker is killed.
    ScaleOut(scale_out::Args),
}

pub(crate) fn run(exp: Exp) -> Result<()> {
    match exp {
        Exp::Accuracy(a) => accuracy::run(a),
        Exp::Distill(a) => distill::run(a),
        Exp::ForwardThroughput(a) => throughput::run(a),
        Exp::BlockProfile(a) => profile::run(a),
        Exp::EstimateProfile(a) => estimate::run(a),
        Exp::SvdAccuracy(a) => svd_accuracy::run(a),
        Exp::CollabtransThroughput(a) => collabtrans::run(a),
        Exp::CalibrateCostModel(a) => calibrate::run(a),
        Exp::LlmPlacement(a) => llm_placement::run(a),
        Exp::LiveTokens(a) => live_tokens::run(a),
        Exp::NetOverhead(a) => net_overhead::run(a),
        Exp::Sti(a) => sti::run(a),
        Exp::TokenTrain(a) => otas::train::run(a),
        Exp::TokenProfile(a) => otas::run_profile(a),
        Exp::Otas(a) => otas::run(a),
        Exp::Prodigy(a) => prodigy::run(a),
        Exp::ArmQuant(a) => arm_quant::run(a),
        Exp::Soak(a) => soak::run(a),
        Exp::ScaleOut(a) => scale_out::run(a),
    }
}

/// The results folder, created if needed.
pub(crate) fn results_dir() -> Result<std::path::PathBuf> {
    let dir = std::path::PathBuf::from("results");
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}
