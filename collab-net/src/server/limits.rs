//! Fair admission of connections: how many may be open, how many may still be in their
//! handshake, and how many of each one peer address may hold.
//!
//! A connection takes two slots when it is accepted: an *open* slot, held until it closes,
//! and a *handshake* slot, given back once its `Hello` is accepted (or it closes). Each is
//! counted server-wide and per peer address (the IP, without the port), against
//! [`ServerConfig`](super::ServerConfig)'s `max_connections` / `max_handshaking` and
//! `max_per_address` / `max_handshaking_per_address`. A peer that opens connections and never
//! says `Hello` thus fills its own few handshake slots for at most `hello_timeout` each, and
//! cannot keep devices at other addresses out (issue 31: 300 such connections in a loop had
//! kept 19 of 20 new devices out).
//!
//! Refusals are remembered: [`Limits::refusing`] says whether new connections were refused
//! recently, which `/healthz` reports as degraded.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use super::config::ServerConfig;

/// How long after a refusal `/healthz` still reports degraded.
pub(crate) const DEGRADED_FOR: Duration = Duration::from_secs(10);

/// Which limit refused a connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Refusal {
    /// `max_connections` open.
    Connections,
    /// `max_handshaking` connections in their handshake.
    Handshaking,
    /// `max_per_address` open from this address.
    Address,
    /// `max_handshaking_per_address` in their handshake from this address.
    AddressHandshaking,
}

impl Refusal {
    /// The metric label and log word.
    pub(crate) fn label(self) -> &'static str {
        match self {
            Refusal::Connections => "max_connections",
            Refusal::Handshaking => "max_handshaking",
            Refusal::Address => "max_per_address",
            Refusal::AddressHandshaking => "max_handshaking_per_address",
        }
    }
}

#[derive(Debug, Default)]
struct Counts {
    open: usize,
    handshaking: usize,
}

#[derive(Debug, Default)]
struct Inner {
    total: Counts,
    by_address: HashMap<String, Counts>,
}

/// The connection slots (see the module docs).
#[derive(Debug)]
pub(crate) struct Limits {
    max_open: usize,
    max_handshaking: usize,
    max_per_address: usize,
    max_handshaking_per_address: usize,
    inner: Mutex<Inner>,
    origin: Instant,
    /// Milliseconds after `origin` of the last refusal, plus one (0: never).
    last_refusal: AtomicU64,
    refused: AtomicU64,
}

impl Limits {
    /// The limits of `config`.
    pub(crate) fn new(config: &ServerConfig) -> Self {
        Self {
            max_open: config.max_connections,
            max_handshaking: config.max_handshaking,
            max_per_address: config.max_per_address,
            max_handshaking_per_address: config.max_handshaking_per_address,
            inner: Mutex::new(Inner::default()),
            origin: Instant::now(),
            last_refusal: AtomicU64::new(0),
            refused: AtomicU64::new(0),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // Plain counters: a panic elsewhere cannot leave them half-updated.
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Takes an open slot and a handshake slot for a connection from `peer`, or says which
    /// limit refuses it (and remembers the refusal).
    pub(crate) fn admit(
        self: &Arc<Self>,
        peer: &str,
    ) -> Result<(OpenSlot, HandshakeSlot), Refusal> {
        let address = address_of(peer);
        let mut inner = self.lock();
        let here = inner.by_address.get(&address);
        let (open_here, handshaking_here) = here.map_or((0, 0), |c| (c.open, c.handshaking));
        let refusal = if inner.total.open >= self.max_open {
            Some(Refusal::Connections)
        } else if open_here >= self.max_per_address {
            Some(Refusal::Address)
        } else if handshaking_here >= self.max_handshaking_per_address {
            Some(Refusal::AddressHandshaking)
        } else if inner.total.handshaking >= self.max_handshaking {
            Some(Refusal::Handshaking)
        } else {
            None
        };
        if let Some(r) = refusal {
            drop(inner);
            let ms = u64::try_from(self.origin.elapsed().as_millis()).unwrap_or(u64::MAX - 1);
            self.last_refusal.store(ms + 1, Ordering::Relaxed);
            self.refused.fetch_add(1, Ordering::Relaxed);
            return Err(r);
        }
        inner.total.open += 1;
        inner.total.handshaking += 1;
        let c = inner.by_address.entry(address.clone()).or_default();
        c.open += 1;
        c.handshaking += 1;
        drop(inner);
        let open = OpenSlot {
            limits: self.clone(),
            address: address.clone(),
        };
        let handshake = HandshakeSlot {
            limits: Some(self.clone()),
            address,
        };
        Ok((open, handshake))
    }

    fn release(&self, address: &str, open: bool) {
        let mut inner = self.lock();
        let field = |c: &mut Counts| {
            let f = if open {
                &mut c.open
            } else {
                &mut c.handshaking
            };
            *f = f.saturating_sub(1);
        };
        field(&mut inner.total);
        if let Some(c) = inner.by_address.get_mut(address) {
            field(c);
            if c.open == 0 && c.handshaking == 0 {
                inner.by_address.remove(address);
            }
        }
    }

    /// If new connections were refused within [`DEGRADED_FOR`]: how long ago, and how many
    /// have been refused since the start.
    pub(crate) fn refusing(&self) -> Option<(Duration, u64)> {
        let last = self.last_refusal.load(Ordering::Relaxed);
        if last == 0 {
            return None;
        }
        let ago = self
            .origin
            .elapsed()
            .saturating_sub(Duration::from_millis(last - 1));
        (ago < DEGRADED_FOR).then(|| (ago, self.refused.load(Ordering::Relaxed)))
    }

    /// Connections in their handshake now, server-wide (the `collab_handshaking` gauge).
    pub(crate) fn handshaking(&self) -> usize {
        self.lock().total.handshaking
    }
}

/// The address a peer label counts against: the IP of `ip:port`, else the whole label (an
/// in-process peer).
pub(crate) fn address_of(peer: &str) -> String {
    peer.parse::<SocketAddr>()
        .map_or_else(|_| peer.to_owned(), |a| a.ip().to_string())
}

/// A connection's open slot, given back when dropped.
#[derive(Debug)]
pub(crate) struct OpenSlot {
    limits: Arc<Limits>,
    address: String,
}

impl Drop for OpenSlot {
    fn drop(&mut self) {
        self.limits.release(&self.address, true);
    }
}

/// A connection's handshake slot, given back by [`HandshakeSlot::release`] once its `Hello`
/// is accepted, or when dropped.
#[derive(Debug)]
pub(crate) struct HandshakeSlot {
    limits: Option<Arc<Limits>>,
    address: String,
}

impl HandshakeSlot {
    /// Gives the slot back now (the handshake is over).
    pub(crate) fn release(&mut self) {
        if let Some(limits) = self.limits.take() {
            limits.release(&self.address, false);
        }
    }
}

impl Drop for HandshakeSlot {
    fn drop(&mut self) {
        self.release();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(open: usize, handshaking: usize, per: usize, per_handshaking: usize) -> Arc<Limits> {
        Arc::new(Limits::new(&ServerConfig {
            max_connections: open,
            max_handshaking: handshaking,
            max_per_address: per,
            max_handshaking_per_address: per_handshaking,
            ..ServerConfig::default()
        }))
    }

    #[test]
    fn one_address_cannot_take_every_handshake_slot() {
        let l = limits(100, 10, 50, 2);
        let a1 = l.admit("10.0.0.1:1000").expect("first");
        let _a2 = l.admit("10.0.0.1:1001").expect("second");
        assert_eq!(
            l.admit("10.0.0.1:1002").err(),
            Some(Refusal::AddressHandshaking)
        );
        assert!(l.refusing().is_some());
        // Another address is still let in.
        let _b = l.admit("10.0.0.2:1000").expect("other address");
        // A finished handshake frees its handshake slot but keeps the open one.
        let (open, mut hs) = a1;
        hs.release();
        let _a3 = l.admit("10.0.0.1:1003").expect("after a handshake");
        assert_eq!(l.handshaking(), 3);
        drop(open);
        drop(hs);
        assert_eq!(l.handshaking(), 3);
    }

    #[test]
    fn every_limit_refuses_and_slots_come_back() {
        let l = limits(3, 2, 2, 2);
        let a = l.admit("1.1.1.1:1").expect("a");
        let b = l.admit("1.1.1.1:2").expect("b");
        assert_eq!(l.admit("1.1.1.1:3").err(), Some(Refusal::Address));
        assert_eq!(l.admit("2.2.2.2:1").err(), Some(Refusal::Handshaking));
        let (_open_a, mut hs_a) = a;
        hs_a.release();
        let c = l.admit("2.2.2.2:1").expect("c");
        assert_eq!(l.admit("3.3.3.3:1").err(), Some(Refusal::Connections));
        drop((b, c));
        assert!(l.admit("3.3.3.3:1").is_ok());
        assert_eq!(address_of("[::1]:80"), "::1");
        assert_eq!(address_of("in-process #3"), "in-process #3");
    }
}
