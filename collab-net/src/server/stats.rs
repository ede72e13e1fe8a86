//! The server's counters: atomics updated from the connection tasks and the compute thread,
//! read as one [`ServerStats`] snapshot.

use std::sync::atomic::{AtomicU64, Ordering};

use serde::{Deserialize, Serialize};

/// What a server has done since it started (a snapshot; see `ServerHandle::stats`).
///
/// After a graceful shutdown every accepted request has been answered:
/// `accepted == done + deadline_missed + failed + undecodable`. Refusals (`invalid` less
/// `undecodable`, `overloaded`, `shutting_down`) are answered at once and never accepted.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServerStats {
    /// Requests admitted and handed to the compute thread (a retry of a request still held
    /// is not counted again).
    pub accepted: u64,
    /// Requests answered with a prediction.
    pub done: u64,
    /// Requests answered `DeadlineMissed` (not computed).
    pub deadline_missed: u64,
    /// Accepted requests answered with another error: their compute failed (`Failed`), or
    /// the worker refused them (which the connection's checks make unreachable).
    pub failed: u64,
    /// Requests answered `Invalid`: refused at once (bad split, codec id, budget...), or
    /// accepted and then found `undecodable`.
    pub invalid: u64,
    /// Accepted requests whose payload did not decode to what the model expects (answered
    /// `Invalid` by the compute thread, which decodes; also counted in `invalid`).
    pub undecodable: u64,
    /// Requests refused by admission control (answered `Overloaded`).
    pub overloaded: u64,
    /// Requests refused because the server was shutting down.
    pub shutting_down: u64,
    /// Requests that arrived again (same device and request id) while still held: answered
    /// once, on the newest connection.
    pub retries: u64,
    /// Answers not delivered because their connection had closed (the device retries).
    pub dropped: u64,
    /// Requests accepted and not yet answered, now.
    pub in_flight: u64,
    /// Device connections open now.
    pub connections: u64,
    /// Device connections accepted since the start.
    pub connections_total: u64,
    /// Connections refused over `max_connections`.
    pub connections_refused: u64,
    /// Handshakes refused (wrong version, token or model; no Hello in time).
    pub handshakes_refused: u64,
    /// Sessions closed for a protocol violation (bad frame, unexpected message, stall).
    pub protocol_errors: u64,
    /// The largest batch the worker ran.
    pub max_batch: u64,
    /// Passes (batches) the worker began.
    pub passes: u64,
}

/// The live counters behind [`ServerStats`] (`in_flight` is kept by admission control).
#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub(crate) accepted: AtomicU64,
    pub(crate) done: AtomicU64,
    pub(crate) deadline_missed: AtomicU64,
    pub(crate) failed: AtomicU64,
    pub(crate) undecodable: AtomicU64,
    pub(crate) invalid: AtomicU64,
    pub(crate) overloaded: AtomicU64,
    pub(crate) shutting_down: AtomicU64,
    pub(crate) retries: AtomicU64,
    pub(crate) dropped: AtomicU64,
    pub(crate) connections: AtomicU64,
    pub(crate) connections_total: AtomicU64,
    pub(crate) connections_refused: AtomicU64,
    pub(crate) handshakes_refused: AtomicU64,
    pub(crate) protocol_errors: AtomicU64,
    pub(crate) max_batch: AtomicU64,
    pub(crate) passes: AtomicU64,
}

/// Adds one to `counter`.
pub(crate) fn bump(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}

impl Counters {
    /// A snapshot, with `in_flight` supplied by the caller.
    pub(crate) fn snapshot(&self, in_flight: u64) -> ServerStats {
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        ServerStats {
            accepted: get(&self.accepted),
            done: get(&self.done),
            deadline_missed: get(&self.deadline_missed),
            failed: get(&self.failed),
            invalid: get(&self.invalid),
            undecodable: get(&self.undecodable),
            overloaded: get(&self.overloaded),
            shutting_down: get(&self.shutting_down),
            retries: get(&self.retries),
            dropped: get(&self.dropped),
            in_flight,
            connections: get(&self.connections),
            connections_total: get(&self.connections_total),
            connections_refused: get(&self.connections_refused),
            handshakes_refused: get(&self.handshakes_refused),
            protocol_errors: get(&self.protocol_errors),
            max_batch: get(&self.max_batch),
            passes: get(&self.passes),
        }
    }
}
