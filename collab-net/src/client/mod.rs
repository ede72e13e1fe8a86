//! The device client.
//!
//! Two levels:
//! - [`DeviceClient`]: a session with the cloud server. It handshakes, sends requests
//!   pipelined and matches answers by id, measures the link ([`DeviceClient::probe`]), keeps
//!   the server's latest pushed [`crate::wire::ServerLoad`], and reconnects with backoff,
//!   re-sending every unanswered request with its same id so that the server can deduplicate
//!   the retry. Every call ends with one result or one typed [`ClientError`].
//! - [`Device`]: the head part of a split model on the device (any backend). For each image
//!   it picks the split point and codec with its [`collab_core::split::SplitStrategy`] from
//!   the measured link and the server's load, runs the embedding and the first blocks on a
//!   blocking thread, encodes with its codec registry, sends with the remaining budget and
//!   reports what it did.
//!
//! [`cli`] is the device process (`collab-device`, and the demo's `device` subcommand).

mod arrivals;
pub mod cli;
mod config;
pub(crate) mod connection;
mod device;
mod error;
mod handle;
mod handshake;
mod head;
mod pending;
mod plan;

pub use arrivals::{Arrivals, Tick};
pub use config::{Backoff, ClientConfig};
pub use device::{Classified, Device, DeviceConfig};
pub use error::ClientError;
pub use handle::{DeviceClient, LinkEstimate, Outgoing};
pub use head::DeviceInput;
pub use plan::{Plan, plan_for, queue_estimate, server_budget, top_k};

#[cfg(test)]
mod tests;
