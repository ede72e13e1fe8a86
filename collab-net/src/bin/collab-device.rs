//! `collab-device`: one device process. It classifies ImageNet sample images with DeiT-Tiny
//! split between itself and a `collab` server, and prints one JSON line per request (see
//! `collab_net::client::cli`).
//!
//! ```text
//! cargo run --release -p collab-net --bin collab-device -- --server 127.0.0.1:7070 \
//!     --mbit 20 --rtt-ms 35 --images 20
//! ```

use clap::Parser;
use collab_net::client::cli::{DeviceArgs, main as device_main};

/// A device process.
#[derive(Parser, Debug)]
#[command(
    name = "collab-device",
    about = "A device of the collab demo: split inference over the network"
)]
struct Cli {
    #[command(flatten)]
    args: DeviceArgs,
}

fn main() -> anyhow::Result<()> {
    device_main(Cli::parse().args)
}
