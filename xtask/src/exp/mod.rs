//! Experiment drivers. Each prints its table, writes it under `results/`, and prints one
//! summary line last.

mod accuracy;
mod collabtrans;
mod plot;
mod profile;
mod stats;
mod svd_accuracy;
mod throughput;

use anyhow::Result;
use clap::Subcommand;

/// The experiments.
#[derive(Subcommand, Debug)]
pub(crate) enum Exp {
    /// Accuracy of a real checkpoint on its fixture data.
    Accuracy(accuracy::Args),
    /// Forward throughput against the machine's dense matmul peak.
    ForwardThroughput(throughput::Args),
    /// Per-block latency profile (the measured CostModel), saved as JSON.
    BlockProfile(profile::Args),
    /// Shared-model server vs per-split and server-only batching (SPEC §2, Figure 3).
    CollabtransThroughput(collabtrans::Args),
    /// Accuracy loss of every activation codec at every split point and ratio (SPEC §1).
    SvdAccuracy(svd_accuracy::Args),
}

pub(crate) fn run(exp: Exp) -> Result<()> {
    match exp {
        Exp::Accuracy(a) => accuracy::run(a),
        Exp::ForwardThroughput(a) => throughput::run(a),
        Exp::BlockProfile(a) => profile::run(a),
        Exp::SvdAccuracy(a) => svd_accuracy::run(a),
        Exp::CollabtransThroughput(a) => collabtrans::run(a),
    }
}

/// The results folder, created if needed.
pub(crate) fn results_dir() -> Result<std::path::PathBuf> {
    let dir = std::path::PathBuf::from("results");
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}
