//! A device: collab's device command line, with this crate linked in.

use clap::Parser;
use collab_net::client::cli::{DeviceArgs, main as device_main};

/// A {{name}} device.
#[derive(Debug, Parser)]
#[command(name = "device", about = "A {{name}} device")]
struct Cli {
    #[command(flatten)]
    args: DeviceArgs,
}

fn main() -> anyhow::Result<()> {
    {{crate}}::register();
    device_main(Cli::parse().args)
}
