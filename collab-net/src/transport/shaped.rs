//! A link emulator: any [`Transport`] behind a link with its own bandwidth, RTT, jitter and
//! loss per direction, so each device of a test or the demo sees its own network on loopback.
//!
//! Each direction is a pump between the caller's end of an in-memory pipe and the real stream.
//! The pump reads up to [`SEGMENT`] bytes at a time and models the link as a queue:
//! - *serialisation*: a segment occupies the link for `bytes / bandwidth` after the previous
//!   one left; the pump reads the next segment only then, so a fast writer is held back as TCP's
//!   send buffer would hold it;
//! - *propagation*: it is delivered `rtt / 2` later, plus a uniform jitter in `[0, jitter]`;
//! - *loss*: a reliable stream does not lose bytes, it retransmits them; a segment lost with
//!   probability `loss` arrives one retransmission timeout ([`Link::rto`]) late, and holds back
//!   every segment behind it (delivery stays in order, as TCP's does).

use std::io;
use std::sync::{Arc, PoisonError, RwLock};
use std::time::Duration;

use futures_util::FutureExt;
use futures_util::future::BoxFuture;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;
use tokio::time::{Instant, sleep_until};

use super::{BoxStream, Transport};

/// Bytes the link moves as one unit (and loses as one unit).
pub const SEGMENT: usize = 16 * 1024;

/// Buffer of the pipe between the caller and the pump, bytes.
const PIPE_BUFFER: usize = 256 * 1024;

/// One link's properties, the same in both directions.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Link {
    /// Bytes per second each way (`f64::INFINITY`: no limit).
    pub bandwidth: f64,
    /// Round-trip time, seconds (each direction adds half).
    pub rtt: f64,
    /// Extra one-way delay, uniform in `[0, jitter]` seconds, per segment.
    pub jitter: f64,
    /// Probability that a segment is lost and retransmitted.
    pub loss: f64,
}

impl Link {
    /// No shaping at all.
    pub const IDEAL: Link = Link {
        bandwidth: f64::INFINITY,
        rtt: 0.0,
        jitter: 0.0,
        loss: 0.0,
    };

    /// A link of `mbit` megabits per second and `rtt_ms` milliseconds round trip.
    pub fn mbit(mbit: f64, rtt_ms: f64) -> Self {
        Self {
            bandwidth: mbit * 1e6 / 8.0,
            rtt: rtt_ms / 1e3,
            jitter: 0.0,
            loss: 0.0,
        }
    }

    /// The delay a lost segment adds: Linux's retransmission timeout, `max(200 ms, 2 rtt)`.
    pub fn rto(&self) -> f64 {
        (2.0 * self.rtt).max(0.2)
    }

    fn sane(&self) -> Link {
        let pos = |v: f64| if v.is_finite() && v > 0.0 { v } else { 0.0 };
        Link {
            bandwidth: if self.bandwidth > 0.0 {
                self.bandwidth
            } else {
                f64::INFINITY
            },
            rtt: pos(self.rtt),
            jitter: pos(self.jitter),
            loss: pos(self.loss).min(1.0),
        }
    }
}

/// The link an emulator runs at, changeable while it runs: every clone sees the same link,
/// and each direction reads it again for every segment (what is already on the way keeps
/// the timing it was sent with).
#[derive(Clone, Debug)]
pub struct LinkControl(Arc<RwLock<Link>>);

impl LinkControl {
    /// A control starting at `link`.
    pub fn new(link: Link) -> Self {
        Self(Arc::new(RwLock::new(link.sane())))
    }

    /// The link now.
    pub fn get(&self) -> Link {
        *self.0.read().unwrap_or_else(PoisonError::into_inner)
    }

    /// Changes the link (made sane: a non-positive bandwidth is unlimited, negative delays
    /// are 0, loss is at most 1).
    pub fn set(&self, link: Link) {
        *self.0.write().unwrap_or_else(PoisonError::into_inner) = link.sane();
    }
}

/// A transport whose connections cross an emulated [`Link`].
#[derive(Debug)]
pub struct Shaped<T> {
    inner: T,
    link: LinkControl,
    seed: u64,
}

impl<T: Transport> Shaped<T> {
    /// `inner` behind `link`; `seed` makes jitter and loss repeatable.
    pub fn new(inner: T, link: Link, seed: u64) -> Self {
        Self {
            inner,
            link: LinkControl::new(link),
            seed,
        }
    }

    /// The link now.
    pub fn link(&self) -> Link {
        self.link.get()
    }

    /// The control of its link: a change applies to its open connections and later ones.
    pub fn control(&self) -> LinkControl {
        self.link.clone()
    }
}

impl<T: Transport> Transport for Shaped<T> {
    fn connect(&self) -> BoxFuture<'_, io::Result<BoxStream>> {
        async move {
            let stream = self.inner.connect().await?;
            Ok(shape_with(stream, self.link.clone(), self.seed))
        }
        .boxed()
    }

    fn describe(&self) -> String {
        let l = self.link.get();
        format!(
            "{} shaped to {:.1} Mbit/s, rtt {:.1} ms, jitter {:.1} ms, loss {:.3}",
            self.inner.describe(),
            l.bandwidth * 8.0 / 1e6,
            l.rtt * 1e3,
            l.jitter * 1e3,
            l.loss
        )
    }
}

/// Puts `stream` behind `link` (both directions); the returned stream is the caller's end.
/// Must be called inside a tokio runtime (it spawns the two pumps).
pub fn shape(stream: BoxStream, link: Link, seed: u64) -> BoxStream {
    shape_with(stream, LinkControl::new(link), seed)
}

/// [`shape`] with a link that `control` can change while the stream is open.
pub fn shape_with(stream: BoxStream, control: LinkControl, seed: u64) -> BoxStream {
    let link = control;
    let (user, mid) = tokio::io::duplex(PIPE_BUFFER);
    let (mid_read, mid_write) = tokio::io::split(mid);
    let (real_read, real_write) = tokio::io::split(stream);
    tokio::spawn(pump(mid_read, real_write, link.clone(), seed));
    tokio::spawn(pump(
        real_read,
        mid_write,
        link,
        seed ^ 0x9e37_79b9_7f4a_7c15,
    ));
    Box::new(user)
}

/// Moves bytes from `from` to `to` through one direction of `link` (see the module docs).
async fn pump<R, W>(mut from: R, mut to: W, control: LinkControl, seed: u64)
where
    R: AsyncRead + Unpin + Send + 'static,
    W: AsyncWrite + Unpin + Send + 'static,
{
    let (tx, mut rx) = mpsc::unbounded_channel::<(Instant, Vec<u8>)>();
    let deliver = tokio::spawn(async move {
        while let Some((at, segment)) = rx.recv().await {
            sleep_until(at).await;
            if to.write_all(&segment).await.is_err() {
                break;
            }
        }
        let _ = to.shutdown().await;
    });
    let mut rng = StdRng::seed_from_u64(seed);
    let mut link_free = Instant::now();
    let mut last_delivery = Instant::now();
    let mut buf = vec![0u8; SEGMENT];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        let link = control.get();
        let depart = link_free.max(Instant::now()) + secs(n as f64 / link.bandwidth);
        link_free = depart;
        let mut delay = link.rtt / 2.0 + link.jitter * rng.random::<f64>();
        if link.loss > 0.0 && rng.random::<f64>() < link.loss {
            delay += link.rto();
        }
        let at = (depart + secs(delay)).max(last_delivery);
        last_delivery = at;
        if tx.send((at, buf[..n].to_vec())).is_err() {
            break;
        }
        sleep_until(depart).await;
    }
    drop(tx);
    let _ = deliver.await;
}

fn secs(s: f64) -> Duration {
    if s.is_finite() && s > 0.0 {
        Duration::from_secs_f64(s)
    } else {
        Duration::ZERO
    }
}

#[cfg(test)]
mod tests {
    use std::time::Instant as StdInstant;

    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;
    use crate::transport::{Listener, in_process};

    async fn echo_time(link: Link, bytes: usize) -> f64 {
        let (client, mut acceptor) = in_process();
        let shaped = Shaped::new(client, link, 1);
        let server = tokio::spawn(async move {
            let (mut s, _) = acceptor.accept().await.expect("accept");
            let mut buf = vec![0u8; bytes];
            s.read_exact(&mut buf).await.expect("read");
            s.write_all(&[1]).await.expect("write");
            s.flush().await.expect("flush");
        });
        let mut c = shaped.connect().await.expect("connect");
        let t = StdInstant::now();
        c.write_all(&vec![7u8; bytes]).await.expect("write");
        let mut one = [0u8; 1];
        c.read_exact(&mut one).await.expect("read");
        server.await.expect("server");
        t.elapsed().as_secs_f64()
    }

    #[tokio::test]
    async fn rtt_and_bandwidth_shape_a_round_trip() {
        // 40 ms RTT: a 1-byte round trip takes at least that.
        let t = echo_time(Link::mbit(1000.0, 40.0), 1).await;
        assert!(t >= 0.039, "{t}");
        // 400 KB over 16 Mbit/s (2 MB/s) takes at least 0.2 s plus the RTT.
        let t = echo_time(Link::mbit(16.0, 10.0), 400_000).await;
        assert!(t >= 0.2, "{t}");
        // An ideal link adds nothing measurable to an in-process pipe.
        let t = echo_time(Link::IDEAL, 1000).await;
        assert!(t < 0.1, "{t}");
    }

    #[tokio::test]
    async fn a_link_changed_while_open_shapes_what_follows() {
        let (client, mut acceptor) = in_process();
        let shaped = Shaped::new(client, Link::mbit(1000.0, 2.0), 1);
        let control = shaped.control();
        let server = tokio::spawn(async move {
            let (mut s, _) = acceptor.accept().await.expect("accept");
            let mut buf = [0u8; 1];
            while s.read_exact(&mut buf).await.is_ok() {
                s.write_all(&buf).await.expect("write");
            }
        });
        let mut c = shaped.connect().await.expect("connect");
        let mut round_trip = async || {
            let t = StdInstant::now();
            c.write_all(&[1]).await.expect("write");
            let mut one = [0u8; 1];
            c.read_exact(&mut one).await.expect("read");
            t.elapsed().as_secs_f64()
        };
        let fast = round_trip().await;
        control.set(Link::mbit(1000.0, 80.0));
        let slow = round_trip().await;
        assert!(fast < 0.05, "{fast}");
        assert!(slow >= 0.079, "{slow}");
        assert_eq!(shaped.link().rtt, 0.08);
        drop(c);
        server.abort();
    }

    #[tokio::test]
    async fn loss_delays_by_retransmission_timeouts() {
        let lossy = Link {
            loss: 1.0,
            ..Link::mbit(1000.0, 2.0)
        };
        let t = echo_time(lossy, 10).await;
        // One lost segment each way: two RTOs of 200 ms.
        assert!(t >= 0.4, "{t}");
    }
}
