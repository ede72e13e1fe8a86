//! Connections that fail on purpose: each dies after a random lifetime (reads and writes then
//! fail with `ConnectionReset`) and stalls now and then (its reads pause), for soak and chaos
//! tests of a client and server together (`cargo xtask exp soak`).

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::Duration;

use futures_util::future::BoxFuture;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

use super::{BoxStream, Transport};

/// What goes wrong, and how often.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Faults {
    /// Mean lifetime of a connection (exponentially distributed; `ZERO`: never dies).
    pub mean_life: Duration,
    /// Mean time between read stalls (exponential; `ZERO`: never stalls).
    pub mean_between_stalls: Duration,
    /// How long a stall lasts.
    pub stall: Duration,
}

/// A [`Transport`] whose connections suffer [`Faults`], drawn from a seed.
#[derive(Debug)]
pub struct Faulty {
    inner: Arc<dyn Transport>,
    faults: Faults,
    rng: Mutex<StdRng>,
}

impl Faulty {
    /// `inner`'s connections with `faults`, drawn from `seed`.
    pub fn new(inner: Arc<dyn Transport>, faults: Faults, seed: u64) -> Self {
        Self {
            inner,
            faults,
            rng: Mutex::new(StdRng::seed_from_u64(seed)),
        }
    }
}

/// An exponential draw of mean `mean` (`None` for a zero mean: never).
fn exponential(rng: &mut StdRng, mean: Duration) -> Option<Duration> {
    if mean.is_zero() {
        return None;
    }
    let u: f64 = rng.random_range(1e-9..1.0);
    Some(mean.mul_f64(-u.ln()).min(Duration::from_secs(3600)))
}

impl Transport for Faulty {
    fn connect(&self) -> BoxFuture<'_, io::Result<BoxStream>> {
        Box::pin(async move {
            let stream = self.inner.connect().await?;
            let mut rng = {
                let mut shared = self.rng.lock().unwrap_or_else(PoisonError::into_inner);
                StdRng::seed_from_u64(shared.random())
            };
            let now = Instant::now();
            let death = exponential(&mut rng, self.faults.mean_life)
                .map(|life| Box::pin(tokio::time::sleep_until(now + life)));
            let next_stall = exponential(&mut rng, self.faults.mean_between_stalls)
                .map(|gap| Box::pin(tokio::time::sleep_until(now + gap)));
            let stream: BoxStream = Box::new(FaultyStream {
                inner: stream,
                faults: self.faults,
                rng,
                death,
                next_stall,
                stalled_until: None,
                dead: false,
            });
            Ok(stream)
        })
    }

    fn describe(&self) -> String {
        format!("{} (with faults)", self.inner.describe())
    }
}

struct FaultyStream {
    inner: BoxStream,
    faults: Faults,
    rng: StdRng,
    death: Option<Pin<Box<Sleep>>>,
    next_stall: Option<Pin<Box<Sleep>>>,
    stalled_until: Option<Pin<Box<Sleep>>>,
    dead: bool,
}

impl FaultyStream {
    /// Whether the connection has died (registering a wake-up for its death otherwise).
    fn dead(&mut self, cx: &mut Context<'_>) -> bool {
        if !self.dead
            && let Some(d) = self.death.as_mut()
            && d.as_mut().poll(cx).is_ready()
        {
            self.dead = true;
        }
        self.dead
    }
}

fn reset() -> io::Error {
    io::Error::new(io::ErrorKind::ConnectionReset, "injected disconnect")
}

impl AsyncRead for FaultyStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if self.dead(cx) {
            return Poll::Ready(Err(reset()));
        }
        if let Some(s) = self.stalled_until.as_mut() {
            if s.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
            self.stalled_until = None;
        }
        let stall_now = self
            .next_stall
            .as_mut()
            .is_some_and(|s| s.as_mut().poll(cx).is_ready());
        if stall_now {
            let now = Instant::now();
            let (stall, gap) = (self.faults.stall, self.faults.mean_between_stalls);
            let next = exponential(&mut self.rng, gap).unwrap_or(Duration::from_secs(3600));
            self.next_stall = Some(Box::pin(tokio::time::sleep_until(now + stall + next)));
            let mut until = Box::pin(tokio::time::sleep_until(now + stall));
            if until.as_mut().poll(cx).is_pending() {
                self.stalled_until = Some(until);
                return Poll::Pending;
            }
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for FaultyStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        if self.dead(cx) {
            return Poll::Ready(Err(reset()));
        }
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.dead(cx) {
            return Poll::Ready(Err(reset()));
        }
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;
    use crate::transport::{Listener, in_process};

    #[tokio::test]
    async fn a_connection_dies_after_its_lifetime() {
        let (transport, mut acceptor) = in_process();
        let faults = Faults {
            mean_life: Duration::from_millis(50),
            mean_between_stalls: Duration::ZERO,
            stall: Duration::ZERO,
        };
        let faulty = Faulty::new(Arc::new(transport), faults, 1);
        let server = tokio::spawn(async move {
            let (mut s, _) = acceptor.accept().await.expect("accept");
            let mut buf = [0u8; 1];
            while s.read(&mut buf).await.is_ok_and(|n| n > 0) {}
        });
        let mut c = faulty.connect().await.expect("connect");
        let t = std::time::Instant::now();
        let mut buf = [0u8; 1];
        let e = tokio::time::timeout(Duration::from_secs(5), c.read(&mut buf))
            .await
            .expect("dies before 5 s")
            .expect_err("an injected reset");
        assert_eq!(e.kind(), io::ErrorKind::ConnectionReset);
        assert!(c.write_all(b"x").await.is_err());
        assert!(t.elapsed() < Duration::from_secs(5));
        drop(c);
        server.await.expect("server");
    }
}
