//! The cloud server: collab's server command line, with this crate's policy linked in.

use clap::Parser;
use collab_net::server::cli::{self, ServerArgs};

/// The {{name}} server.
#[derive(Debug, Parser)]
#[command(name = "server", about = "The {{name}} cloud server")]
struct Cli {
    #[command(flatten)]
    server: ServerArgs,
}

fn main() -> anyhow::Result<()> {
    {{crate}}::register();
    cli::main(Cli::parse().server)
}
