//! collab-net: device and cloud as separate processes over a real network.
//!
//! - [`auth`]: who may open a session (a shared secret or a token per device), compared in
//!   constant time and never printed;
//! - [`wire`]: versioned, length-delimited frames of postcard-encoded messages, and the
//!   validation a server applies to each request;
//! - [`tls`]: TLS on device <-> cloud (rustls), certificates from PEM files;
//! - [`transport`]: TCP, in-process pipes, and [`transport::Shaped`] links with their own
//!   bandwidth, RTT, jitter and loss;
//! - [`server`]: the cloud server (accepts many devices, admission control, a compute thread
//!   driving the shared-model batch worker, metrics, health, graceful shutdown);
//! - [`client`]: the device client (runs the head part, measures the link, picks the split,
//!   sends, reconnects);
//! - [`dashboard`]: the live web page of a server (charts by server-sent events, an
//!   operator's controls that reach the devices);
//! - [`pipeline`]: one TOML file naming everything a deployment needs: model, backend per side,
//!   batch policy, codecs, split strategy, limits, addresses.
//!
//! Async lives here and only here (DESIGN.md): compute stays synchronous and runs on its own
//! threads.

pub mod auth;
pub mod client;
pub mod dashboard;
pub mod nats;
pub mod pipeline;
pub mod server;
pub mod testing;
pub mod tls;
pub mod transport;
pub mod wire;
