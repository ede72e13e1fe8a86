//! In-process pipes: the same server and client code without sockets (tests, and the baseline
//! of `cargo xtask exp net-overhead`).

use std::io;
use std::sync::atomic::{AtomicU64, Ordering};

use futures_util::FutureExt;
use futures_util::future::BoxFuture;
use tokio::io::DuplexStream;
use tokio::sync::mpsc;

use super::{BoxStream, Listener, Transport};

/// Buffer of each pipe direction, bytes (a few frames).
const PIPE_BUFFER: usize = 1 << 20;

/// Connects to an in-process server through its [`InProcessAcceptor`].
#[derive(Debug)]
pub struct InProcess {
    tx: mpsc::Sender<DuplexStream>,
}

/// The server's side of [`InProcess`].
#[derive(Debug)]
pub struct InProcessAcceptor {
    rx: mpsc::Receiver<DuplexStream>,
    next: AtomicU64,
}

/// A connected pair: clients connect with the first, the server accepts from the second.
pub fn in_process() -> (InProcess, InProcessAcceptor) {
    let (tx, rx) = mpsc::channel(64);
    (
        InProcess { tx },
        InProcessAcceptor {
            rx,
            next: AtomicU64::new(0),
        },
    )
}

impl Transport for InProcess {
    fn connect(&self) -> BoxFuture<'_, io::Result<BoxStream>> {
        async move {
            let (client, server) = tokio::io::duplex(PIPE_BUFFER);
            self.tx.send(server).await.map_err(|_| {
                io::Error::new(
                    io::ErrorKind::ConnectionRefused,
                    "in-process server is gone",
                )
            })?;
            Ok(Box::new(client) as BoxStream)
        }
        .boxed()
    }

    fn describe(&self) -> String {
        "in-process".into()
    }
}

impl Listener for InProcessAcceptor {
    fn accept(&mut self) -> BoxFuture<'_, io::Result<(BoxStream, String)>> {
        async move {
            let stream = self.rx.recv().await.ok_or_else(|| {
                io::Error::new(
                    io::ErrorKind::NotConnected,
                    "every in-process client is gone",
                )
            })?;
            let n = self.next.fetch_add(1, Ordering::Relaxed);
            Ok((Box::new(stream) as BoxStream, format!("in-process#{n}")))
        }
        .boxed()
    }
}
