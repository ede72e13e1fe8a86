//! The collab cloud server: serves devices over TCP, with health and Prometheus metrics over
//! HTTP, until SIGTERM or Ctrl-C (then a graceful shutdown). See `--help`.

use clap::Parser;
use collab_net::server::cli::{self, ServerArgs};

/// The collab cloud server.
#[derive(Debug, Parser)]
#[command(name = "collab-server", version, about)]
struct Cli {
    #[command(flatten)]
    server: ServerArgs,
}

fn main() -> anyhow::Result<()> {
    cli::main(Cli::parse().server)
}
