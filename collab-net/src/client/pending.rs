//! What a connection task has not answered yet: requests and personalisations by id, probes by
//! nonce.

use std::collections::{BTreeMap, HashMap};

use tokio::time::Instant;

use super::connection::{Command, InferReply, PersonaliseReply, PingReply};
use super::error::ClientError;
use crate::wire::{InferRequest, PersonaliseRequest};

/// A probe in flight: its padding, when it was written (`None` while disconnected) and the
/// caller.
#[derive(Debug)]
pub(super) struct PendingPing {
    pub(super) pad: usize,
    pub(super) sent: Option<Instant>,
    pub(super) reply: PingReply,
}

/// Everything not yet answered.
#[derive(Debug, Default)]
pub(super) struct Book {
    pub(super) requests: BTreeMap<u64, (InferRequest, InferReply)>,
    pub(super) pings: HashMap<u64, PendingPing>,
    pub(super) personalise: BTreeMap<u64, (PersonaliseRequest, PersonaliseReply)>,
    pub(super) next_nonce: u64,
}

impl Book {
    pub(super) fn is_empty(&self) -> bool {
        self.requests.is_empty() && self.pings.is_empty() && self.personalise.is_empty()
    }

    pub(super) fn fail_all(&mut self, err: &ClientError) {
        for (_, (_, reply)) in std::mem::take(&mut self.requests) {
            let _ = reply.send(Err(err.clone()));
        }
        for (_, p) in std::mem::take(&mut self.pings) {
            let _ = p.reply.send(Err(err.clone()));
        }
        for (_, (_, reply)) in std::mem::take(&mut self.personalise) {
            let _ = reply.send(Err(err.clone()));
        }
    }

    /// Records a command while there is no connection; `false` for `Close`.
    pub(super) fn queue(&mut self, cmd: Option<Command>) -> bool {
        match cmd {
            None | Some(Command::Close) => return false,
            Some(Command::Infer { request, reply }) => {
                self.requests.insert(request.request_id, (request, reply));
            }
            Some(Command::Cancel(id)) => {
                self.requests.remove(&id);
                self.personalise.remove(&id);
            }
            Some(Command::Ping { pad, reply }) => {
                self.add_ping(pad, reply);
            }
            Some(Command::Personalise { request, reply }) => {
                self.personalise
                    .insert(request.request_id, (request, reply));
            }
            // Telemetry is not worth keeping across a reconnect.
            Some(Command::Report(_)) => {}
        }
        true
    }

    /// Records a probe not yet written; returns its nonce.
    pub(super) fn add_ping(&mut self, pad: usize, reply: PingReply) -> u64 {
        let nonce = self.next_nonce;
        self.next_nonce = self.next_nonce.wrapping_add(1);
        let sent = None;
        self.pings.insert(nonce, PendingPing { pad, sent, reply });
        nonce
    }
}
