//! One device connection: the stream split into a read side ([`super::session`]: handshake,
//! requests, pings, load pushes) and a write side ([`super::writer`]), joined in one task.
//!
//! Two channels feed the writer: a bounded one from the read side (Welcome, Pong, refusals,
//! ServerLoad, Goodbye), so a device that sends faster than it reads is slowed down by TCP
//! rather than buffered, and an unbounded one from the compute thread for answers, which
//! admission control bounds (at most `capacity` requests are held server-wide). Answers for
//! a connection that has closed are dropped; the device retries with the same request id.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use futures_util::SinkExt;
use tokio::io::{AsyncRead, AsyncReadExt, ReadBuf};
use tokio::sync::mpsc;
use tokio_util::codec::{FramedRead, FramedWrite};
use tracing::debug;

use super::limits::{HandshakeSlot, OpenSlot};
use super::session;
use super::state::Shared;
use super::stats::bump;
use super::writer;
use crate::transport::BoxStream;
use crate::wire::{FrameCodec, Message, RemoteError};

/// Messages the read side may queue ahead of the writer.
const CONTROL_QUEUE: usize = 64;

/// How long a closing connection keeps reading (and discarding) what the peer still sends,
/// so the close is a FIN after our Goodbye rather than a reset that could destroy it.
pub(crate) const LINGER: Duration = Duration::from_secs(1);

/// Bytes a closing connection discards at most while lingering.
const LINGER_BYTES: usize = 1 << 20;

/// A reader that remembers when it last received bytes and when the bytes of the frame being
/// read began to arrive (the stall and slow-frame detectors read them).
#[derive(Debug)]
pub(crate) struct ProgressRead<R> {
    inner: R,
    last: Instant,
    frame_start: Option<Instant>,
}

impl<R> ProgressRead<R> {
    /// Wraps `inner`; "last progress" starts now, no frame has begun.
    pub(crate) fn new(inner: R) -> Self {
        Self {
            inner,
            last: Instant::now(),
            frame_start: None,
        }
    }

    /// When bytes last arrived.
    pub(crate) fn last_progress(&self) -> Instant {
        self.last
    }

    /// When the first bytes of the frame being read arrived, if any have.
    pub(crate) fn frame_start(&self) -> Option<Instant> {
        self.frame_start
    }

    /// A frame was decoded: the next one begins now if `more_buffered` (its first bytes came
    /// with the last read), else with the next bytes that arrive.
    pub(crate) fn frame_done(&mut self, more_buffered: bool) {
        self.frame_start = more_buffered.then(Instant::now);
    }
}

impl<R: AsyncRead + Unpin> AsyncRead for ProgressRead<R> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        if buf.filled().len() > before {
            let now = Instant::now();
            self.last = now;
            self.frame_start.get_or_insert(now);
        }
        polled
    }
}

/// Reads and discards what `stream` still sends, until it closes, [`LINGER`] passes or
/// [`LINGER_BYTES`] went by.
pub(crate) async fn linger(stream: &mut (impl AsyncRead + Unpin)) {
    let until = tokio::time::Instant::now() + LINGER;
    let mut buf = [0u8; 4096];
    let mut seen = 0;
    while seen < LINGER_BYTES {
        match tokio::time::timeout_at(until, stream.read(&mut buf)).await {
            Ok(Ok(n)) if n > 0 => seen += n,
            _ => return,
        }
    }
}

/// Counts an open connection for as long as it lives.
#[derive(Debug)]
pub(crate) struct Counted {
    shared: Arc<Shared>,
}

impl Counted {
    /// Counts one more open connection.
    pub(crate) fn new(shared: &Arc<Shared>) -> Self {
        bump(&shared.counters.connections);
        bump(&shared.counters.connections_total);
        shared.metrics.connections.inc();
        Self {
            shared: shared.clone(),
        }
    }
}

impl Drop for Counted {
    fn drop(&mut self) {
        self.shared
            .counters
            .connections
            .fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
        self.shared.metrics.connections.dec();
    }
}

/// Serves one device connection until it closes (see the module docs); `slots` are its
/// open and handshake slots, given back as it ends (the handshake one after its `Hello`).
pub(crate) async fn serve(
    stream: BoxStream,
    peer: String,
    shared: Arc<Shared>,
    counted: Counted,
    (open, handshake): (OpenSlot, HandshakeSlot),
) {
    let stream = match &shared.config.tls {
        None => stream,
        Some(tls) => {
            let limit = shared.config.hello_timeout;
            match tokio::time::timeout(limit, crate::tls::accept(tls.clone(), stream)).await {
                Ok(Ok(s)) => s,
                failed => {
                    bump(&shared.counters.handshakes_refused);
                    shared.metrics.handshakes_refused.inc();
                    if shared.log.allow() {
                        let why = match failed {
                            Ok(Err(e)) => e.to_string(),
                            _ => format!("not done within {} ms", limit.as_millis()),
                        };
                        tracing::info!(%peer, "TLS handshake failed: {why}");
                    }
                    return;
                }
            }
        }
    };
    let (read, write) = tokio::io::split(stream);
    // Until the Hello is accepted only a small frame is read: raised by the handshake.
    let reader = FramedRead::new(
        ProgressRead::new(read),
        FrameCodec::new(shared.config.hello_max_frame),
    );
    // What this side writes is small (answers, pongs); the device's limit applies to it.
    let sink = FramedWrite::new(write, FrameCodec::new(usize::MAX));
    let (control, control_rx) = mpsc::channel(CONTROL_QUEUE);
    let (answers, answers_rx) = mpsc::unbounded_channel();
    debug!(%peer, "connection opened");
    tokio::join!(
        session::read_side(reader, control, answers, &shared, &peer, handshake),
        writer::write_side(sink, control_rx, answers_rx, &shared, &peer),
    );
    debug!(%peer, "connection closed");
    drop(counted);
    drop(open);
}

/// Tells a connection over the limit why it is refused, and closes it.
pub(crate) async fn refuse(stream: BoxStream, peer: String, reason: RemoteError, limit: Duration) {
    debug!(%peer, %reason, "connection refused");
    let mut sink = FramedWrite::new(stream, FrameCodec::new(usize::MAX));
    let sent = tokio::time::timeout(limit, async {
        sink.send(Message::Goodbye(reason)).await?;
        sink.close().await
    })
    .await;
    if matches!(sent, Ok(Ok(()))) {
        linger(sink.get_mut()).await;
    }
}
