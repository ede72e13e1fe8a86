//! `demo`: the end-to-end live demo (the README's main job).
//!
//! Starts one cloud server and several device processes on loopback, each device with its own
//! compute profile and emulated link (bandwidth, RTT, jitter, loss), plus a background load
//! generator. Each device classifies ImageNet sample images with DeiT-Tiny: it measures its
//! link, picks the split point and codec with the SPEC §1 rule (from an accuracy table and cost
//! profiles measured on this machine, embedded in the binary), runs its blocks, and sends the
//! encoded activation over TCP to the server, which batches requests from every split point on
//! one shared model. A live view shows throughput, p50/p95/p99 latency, the deadline-miss rate
//! and the splits each device chose; a summary with accuracy against the labels ends the run.
//!
//! By default the server also serves the web dashboard (`collab_net::dashboard`), whose address
//! the demo prints with this run's operator token: live charts beside the trace of a short
//! server-only run made first (`--compare-images`), and controls that change a running
//! device's link, deadline and loss limit or the background load's rate. `--duration-s N`
//! keeps the devices running for `N` seconds to use them; `--no-dashboard` runs without it.
//!
//! ```text
//! cargo run --release -p collab-examples --bin demo -- --devices 4 --deadline-ms 400
//! ```
//!
//! The same binary is the server, device and load-generator process (hidden subcommands
//! `serve`, `device`, `load`), so `cargo run` builds everything the demo starts.

mod fleet;
mod load;
mod orchestrate;
mod pipeline;
mod stats;
mod summary;
mod view;

use anyhow::Result;
use clap::{Parser, Subcommand};
use collab_net::client::ClientError;
use collab_net::client::cli::DeviceArgs;
use collab_net::server::cli::ServerArgs;

#[derive(Parser, Debug)]
#[command(
    about = "Live demo: a cloud server and several devices on loopback classify ImageNet images \
             with DeiT-Tiny split between them",
    args_conflicts_with_subcommands = true
)]
struct Cli {
    #[command(subcommand)]
    role: Option<Role>,
    #[command(flatten)]
    demo: orchestrate::DemoArgs,
}

#[derive(Subcommand, Debug)]
enum Role {
    /// Runs the cloud server process.
    #[command(hide = true)]
    Serve(ServerArgs),
    /// Runs one device process.
    #[command(hide = true)]
    Device(DeviceArgs),
    /// Runs the background load generator.
    #[command(hide = true)]
    Load(load::LoadArgs),
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    match cli.role {
        Some(Role::Serve(args)) => collab_net::server::cli::main(args),
        Some(Role::Device(args)) => collab_net::client::cli::main(args),
        Some(Role::Load(args)) => load::main(args),
        None => orchestrate::run(cli.demo),
    }
}

/// The machine-readable kind of a client error (the device processes' `error` field).
fn error_kind(e: &ClientError) -> &'static str {
    e.kind()
}
