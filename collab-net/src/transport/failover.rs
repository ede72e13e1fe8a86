//! A list of servers tried in turn: the device's way to the next address when its server
//! is gone or restarting.

use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use futures_util::future::BoxFuture;

use super::{BoxStream, Transport};

/// Connects to the first of several servers that answers, starting from the one that
/// answered last; so a device stays with its server while it is up and moves to the next
/// address when it is not (a [`crate::client::DeviceClient`] re-sends what it holds there).
#[derive(Debug)]
pub struct Failover {
    transports: Vec<Arc<dyn Transport>>,
    current: AtomicUsize,
}

impl Failover {
    /// Tries `transports` in order, from the first.
    ///
    /// # Errors
    /// [`io::ErrorKind::InvalidInput`] for an empty list.
    pub fn new(transports: Vec<Arc<dyn Transport>>) -> io::Result<Self> {
        if transports.is_empty() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "a failover list needs at least one server",
            ));
        }
        Ok(Self {
            transports,
            current: AtomicUsize::new(0),
        })
    }

    /// The position in the list of the server that answered last (0 at the start).
    pub fn current(&self) -> usize {
        self.current.load(Ordering::Relaxed)
    }
}

impl Transport for Failover {
    fn connect(&self) -> BoxFuture<'_, io::Result<BoxStream>> {
        Box::pin(async move {
            let n = self.transports.len();
            let start = self.current();
            let mut last = None;
            for k in 0..n {
                let i = (start + k) % n;
                match self.transports[i].connect().await {
                    Ok(stream) => {
                        self.current.store(i, Ordering::Relaxed);
                        return Ok(stream);
                    }
                    Err(e) => {
                        last = Some(io::Error::new(
                            e.kind(),
                            format!("{}: {e}", self.transports[i].describe()),
                        ));
                    }
                }
            }
            Err(last.unwrap_or_else(|| io::Error::other("no server to connect to")))
        })
    }

    fn describe(&self) -> String {
        let all: Vec<String> = self.transports.iter().map(|t| t.describe()).collect();
        format!("failover [{}]", all.join(", "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::transport::{Listener, Tcp, TcpAcceptor};

    #[tokio::test]
    async fn connects_to_the_first_server_that_answers_and_stays_there() {
        // A port nothing listens on: bind one, note it, close it.
        let dead = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
            l.local_addr().expect("addr")
        };
        let mut live = TcpAcceptor::bind("127.0.0.1:0".parse().expect("addr"))
            .await
            .expect("bind");
        let addr = live.local_addr().expect("addr");
        let f =
            Failover::new(vec![Arc::new(Tcp::new(dead)), Arc::new(Tcp::new(addr))]).expect("list");
        let accepting = tokio::spawn(async move {
            for _ in 0..2 {
                live.accept().await.expect("accept");
            }
        });
        f.connect().await.expect("the second answers");
        assert_eq!(f.current(), 1);
        f.connect().await.expect("again");
        assert_eq!(f.current(), 1);
        accepting.await.expect("accepted both");
        assert!(f.describe().contains(&addr.to_string()));
        assert!(Failover::new(vec![]).is_err());
    }
}
