//! A TCP listener that holds at most a fixed number of connections, and at most a few per
//! peer address: the next accept waits for one to close, a peer over its share is closed at
//! once, and a connection that neither reads nor writes for [`IDLE`] is closed. So browsers (or
//! anything else) cannot exhaust the server's sockets or keep them with silence.

use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::{Instant, Sleep};

/// A connection that moves no byte either way for this long is closed (an event stream
/// writes every second, so only silent ones are).
pub const IDLE: Duration = Duration::from_secs(30);

/// Open connections per peer address, counted.
type PerPeer = Arc<Mutex<HashMap<IpAddr, usize>>>;

/// A listener of at most `max` open connections, `per_peer` from one address.
#[derive(Debug)]
pub(crate) struct BoundedListener {
    inner: TcpListener,
    permits: Arc<Semaphore>,
    per_peer: usize,
    peers: PerPeer,
}

impl BoundedListener {
    pub(crate) fn new(inner: TcpListener, max: usize, per_peer: usize) -> Self {
        Self {
            inner,
            permits: Arc::new(Semaphore::new(max.max(1))),
            per_peer: per_peer.max(1),
            peers: Arc::default(),
        }
    }
}

/// A connection, its place among the open ones and its peer's count (given back when it is
/// dropped), and its idle timer.
#[derive(Debug)]
pub(crate) struct Held {
    stream: TcpStream,
    peer: IpAddr,
    peers: PerPeer,
    idle: Pin<Box<Sleep>>,
    _permit: OwnedSemaphorePermit,
}

impl Drop for Held {
    fn drop(&mut self) {
        let mut peers = self.peers.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(n) = peers.get_mut(&self.peer) {
            *n -= 1;
            if *n == 0 {
                peers.remove(&self.peer);
            }
        }
    }
}

impl axum::serve::Listener for BoundedListener {
    type Io = Held;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Held, SocketAddr) {
        loop {
            let Ok(permit) = self.permits.clone().acquire_owned().await else {
                // The semaphore is never closed; wait rather than spin if it ever were.
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            };
            let (stream, addr) = match self.inner.accept().await {
                Ok(accepted) => accepted,
                // Out of file descriptors and the like: wait a little, as axum's own does.
                Err(e) => {
                    tracing::debug!("dashboard accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            {
                let mut peers = self.peers.lock().unwrap_or_else(PoisonError::into_inner);
                let n = peers.entry(addr.ip()).or_insert(0);
                if *n >= self.per_peer {
                    tracing::debug!(%addr, "dashboard: {} connections from this address; closed", self.per_peer);
                    continue; // dropping the stream closes it; the permit returns
                }
                *n += 1;
            }
            let _ = stream.set_nodelay(true);
            return (
                Held {
                    stream,
                    peer: addr.ip(),
                    peers: self.peers.clone(),
                    idle: Box::pin(tokio::time::sleep(IDLE)),
                    _permit: permit,
                },
                addr,
            );
        }
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        self.inner.local_addr()
    }
}

impl Held {
    /// Bytes moved: the idle timer starts again.
    fn active(&mut self) {
        self.idle.as_mut().reset(Instant::now() + IDLE);
    }

    /// Whether the idle timer ran out (registering the waker while it has not).
    fn timed_out(&mut self, cx: &mut Context<'_>) -> bool {
        self.idle.as_mut().poll(cx).is_ready()
    }
}

fn idle_error() -> io::Error {
    io::Error::new(io::ErrorKind::TimedOut, "dashboard connection idle")
}

impl AsyncRead for Held {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match Pin::new(&mut self.stream).poll_read(cx, buf) {
            Poll::Ready(r) => {
                self.active();
                Poll::Ready(r)
            }
            Poll::Pending if self.timed_out(cx) => Poll::Ready(Err(idle_error())),
            Poll::Pending => Poll::Pending,
        }
    }
}

impl AsyncWrite for Held {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match Pin::new(&mut self.stream).poll_write(cx, buf) {
            Poll::Ready(r) => {
                self.active();
                Poll::Ready(r)
            }
            Poll::Pending if self.timed_out(cx) => Poll::Ready(Err(idle_error())),
            Poll::Pending => Poll::Pending,
        }
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}
