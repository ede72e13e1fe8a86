//! The cloud server: accepts many devices, validates and admits their requests, and feeds
//! one shared-model batch worker running on its own compute thread.
//!
//! ```text
//! Listener --accept--> connection task (tokio)                      compute thread (std)
//!                        read side: Hello -> Welcome                  Worker<BatchPolicy,
//!                          InferRequest -> check_request                     ModelExecutor>
//!                            -> admission (capacity) ---- Job ---->   enqueue / step / answer
//!                        write side <------------ InferResponse ----  (Shared::finish)
//! ```
//!
//! - every accepted request ends in exactly one answer: a prediction or a typed error
//!   (`DeadlineMissed`, `Failed`); refusals (`Invalid`, `Overloaded`, `ShuttingDown`) are
//!   answered at once; protocol violations end the session with a typed `Goodbye`;
//! - admission control bounds what the server holds: at most `capacity` requests are queued
//!   or running; one more is answered `Overloaded` (never a silent queue);
//! - a retry of a request still held (same device, same request id, e.g. after a
//!   reconnect) is not queued twice: its one answer goes to the newest connection;
//! - [`ServerHandle::shutdown`] stops taking work, answers everything accepted, flushes and
//!   closes every session; [`ServerHandle::kill`] emulates a crash;
//! - [`serve_http`] exposes `/healthz` and `/metrics`: Prometheus families `collab_*` for the
//!   queue length per split, batch size, latency by outcome, deadline misses, overload
//!   refusals, in-flight requests and open connections;
//! - `tracing` logs: sessions at `info`, each request at `debug`, violations at `warn`.
//!
//! The binary `collab-server` is [`cli::main`].

mod accept;
pub mod board;
pub mod cli;
mod compute;
mod config;
mod connection;
mod error;
mod handle;
mod http;
mod limits;
mod log_limit;
mod metrics;
mod session;
pub(crate) mod state;
mod stats;
mod timing;
mod writer;

pub use config::ServerConfig;
pub use error::ServerError;
pub use handle::{Health, Server, ServerHandle, ServerMonitor};
pub use http::{HttpReply, MAX_HEAD, MAX_HTTP_CONNECTIONS, READ_TIMEOUT, route, serve_http};
pub use stats::ServerStats;

#[cfg(test)]
mod tests;
