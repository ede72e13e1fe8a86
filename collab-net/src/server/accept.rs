//! The accept loop: takes connections from the [`Listener`] while the server runs, refuses
//! those over a connection limit ([`super::limits`]: open, in handshake, per address) with
//! `Goodbye(Overloaded)`, and owns every connection task, so that shutdown can wait for them
//! (graceful) or drop them (kill). At most [`MAX_REFUSING`] refusals are being written at
//! once; past that a refused connection is closed without a word.

use std::io;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::task::JoinSet;
use tracing::{info, warn};

use super::connection::{self, Counted};
use super::state::{Phase, Shared};
use super::stats::bump;
use crate::transport::Listener;
use crate::wire::RemoteError;

/// Time to tell a refused connection why, at most.
const REFUSE_TIMEOUT: Duration = Duration::from_secs(1);

/// Refused connections being told why at once, at most.
pub(crate) const MAX_REFUSING: usize = 64;

/// Pause after a failed accept (out of file descriptors, say) before the next.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);

/// Accepts until the server leaves [`Phase::Running`], then waits for every connection task
/// to end (aborting them all if the server is killed).
pub(crate) async fn accept_loop(mut listener: impl Listener, shared: Arc<Shared>) {
    let mut conns = JoinSet::new();
    let mut refusals = JoinSet::new();
    let mut phase = shared.subscribe();
    let mut accepting = true;
    while shared.phase() == Phase::Running {
        tokio::select! {
            biased;
            changed = phase.changed() => {
                if changed.is_err() {
                    break;
                }
            }
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
            Some(_) = refusals.join_next(), if !refusals.is_empty() => {}
            accepted = listener.accept(), if accepting => match accepted {
                Ok((stream, peer)) => match shared.limits.admit(&peer) {
                    Ok(slots) => {
                        let counted = Counted::new(&shared);
                        conns.spawn(connection::serve(stream, peer, shared.clone(), counted, slots));
                    }
                    Err(refusal) => {
                        bump(&shared.counters.connections_refused);
                        let limit = refusal.label();
                        shared.metrics.connections_refused.get_or_create(&[("limit", limit)]).inc();
                        if shared.log.allow() {
                            warn!(%peer, limit, "connection refused");
                        }
                        // Over TLS a clear-text Goodbye would not be read: just close.
                        if refusals.len() < MAX_REFUSING && shared.config.tls.is_none() {
                            let open = shared.counters.connections.load(Ordering::Relaxed);
                            let n = |v: u64| u32::try_from(v).unwrap_or(u32::MAX);
                            let reason = RemoteError::Overloaded {
                                in_flight: n(open),
                                capacity: n(shared.config.max_connections as u64),
                            };
                            let limit = shared.config.frame_timeout.min(REFUSE_TIMEOUT);
                            refusals.spawn(connection::refuse(stream, peer, reason, limit));
                        }
                    }
                },
                Err(e) if e.kind() == io::ErrorKind::NotConnected => {
                    info!("listener closed ({e}); no new connections");
                    accepting = false;
                }
                Err(e) => {
                    warn!("accept failed: {e}");
                    tokio::time::sleep(ACCEPT_BACKOFF).await;
                }
            },
        }
    }
    drop(listener);
    refusals.abort_all();
    let mut aborted = false;
    loop {
        tokio::select! {
            biased;
            _ = phase.wait_for(|p| *p == Phase::Killed), if !aborted => {
                conns.abort_all();
                aborted = true;
            }
            next = conns.join_next() => {
                if next.is_none() {
                    break;
                }
            }
        }
    }
}
