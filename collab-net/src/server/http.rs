//! Health and metrics over HTTP/1.1 on their own port: `GET /healthz` answers `200 ok`
//! while the server serves, `503 degraded: ...` while a connection limit is refusing new
//! devices (within the last 10 s), and `503 shutting down` once it shuts down; `GET /metrics` answers the
//! Prometheus (OpenMetrics) text; anything else is `404` (`400` for what is not a request
//! line, `405` for other methods on those paths). One request per connection.
//!
//! A hand-written responder rather than hyper/axum: two fixed GET routes do not justify
//! about 40 more crates to build on a 2-core CI. It reads at most [`MAX_HEAD`] bytes for at
//! most [`READ_TIMEOUT`], looks only at the request line, answers with `Connection: close`
//! and never panics on what it is sent.

use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tracing::{debug, warn};

use super::connection::linger;
use super::handle::{Health, ServerMonitor};

/// Bytes of request head read at most.
pub const MAX_HEAD: usize = 8 << 10;

/// Time a client has to send its request head.
pub const READ_TIMEOUT: Duration = Duration::from_secs(2);

/// HTTP connections answered at once, at most; one more is closed unanswered.
pub const MAX_HTTP_CONNECTIONS: usize = 32;

/// Time the answer has to be written.
const WRITE_TIMEOUT: Duration = Duration::from_secs(5);

/// One HTTP answer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HttpReply {
    /// Status line code and reason, e.g. `200 OK`.
    pub status: &'static str,
    /// The `Content-Type`.
    pub content_type: &'static str,
    /// The body.
    pub body: String,
    /// Whether the body is left out (a `HEAD` request); `Content-Length` still counts it.
    pub head_only: bool,
}

impl HttpReply {
    fn text(status: &'static str, body: &str) -> Self {
        Self {
            status,
            content_type: "text/plain; charset=utf-8",
            body: body.to_owned(),
            head_only: false,
        }
    }

    /// The whole response, head and body.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = format!(
            "HTTP/1.1 {}\r\nContent-Type: {}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            self.status,
            self.content_type,
            self.body.len()
        )
        .into_bytes();
        if !self.head_only {
            out.extend_from_slice(self.body.as_bytes());
        }
        out
    }
}

/// The answer to a request whose head starts with `head` (only the request line is read).
pub fn route(head: &[u8], monitor: &ServerMonitor) -> HttpReply {
    let line_end = head.iter().position(|&b| b == b'\n').unwrap_or(head.len());
    let line = String::from_utf8_lossy(&head[..line_end]);
    let mut parts = line.split_whitespace();
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return HttpReply::text("400 Bad Request", "bad request line\n");
    };
    if !version.starts_with("HTTP/") {
        return HttpReply::text("400 Bad Request", "bad request line\n");
    }
    let path = target.split(['?', '#']).next().unwrap_or(target);
    let known = matches!(path, "/healthz" | "/metrics");
    let head_only = method == "HEAD";
    if known && method != "GET" && !head_only {
        return HttpReply::text("405 Method Not Allowed", "only GET and HEAD\n");
    }
    let mut reply = match path {
        "/healthz" => match monitor.health() {
            Health::Serving => HttpReply::text("200 OK", "ok\n"),
            Health::Degraded(why) => {
                HttpReply::text("503 Service Unavailable", &format!("degraded: {why}\n"))
            }
            Health::ShuttingDown => HttpReply::text("503 Service Unavailable", "shutting down\n"),
        },
        "/metrics" => HttpReply {
            status: "200 OK",
            content_type: "application/openmetrics-text; version=1.0.0; charset=utf-8",
            body: monitor.metrics_text(),
            head_only: false,
        },
        _ => HttpReply::text("404 Not Found", "not found; try /healthz or /metrics\n"),
    };
    reply.head_only = head_only;
    reply
}

/// Serves health and metrics on `listener` until the monitored server has stopped, at most
/// [`MAX_HTTP_CONNECTIONS`] at once.
pub async fn serve_http(listener: TcpListener, monitor: ServerMonitor) {
    let permits = Arc::new(Semaphore::new(MAX_HTTP_CONNECTIONS));
    loop {
        tokio::select! {
            () = monitor.stopped() => return,
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    let Ok(permit) = permits.clone().try_acquire_owned() else {
                        debug!(%peer, "http: at {MAX_HTTP_CONNECTIONS} connections; closed");
                        continue;
                    };
                    let monitor = monitor.clone();
                    tokio::spawn(async move {
                        if let Err(e) = answer(stream, &monitor).await {
                            debug!(%peer, "http: {e}");
                        }
                        drop(permit);
                    });
                }
                Err(e) => {
                    warn!("http accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
        }
    }
}

/// Reads one request head (to its blank line, [`MAX_HEAD`] bytes, EOF or [`READ_TIMEOUT`]),
/// answers it and closes.
async fn answer(mut stream: TcpStream, monitor: &ServerMonitor) -> std::io::Result<()> {
    let mut head = Vec::with_capacity(512);
    let mut buf = [0u8; 1024];
    let until = tokio::time::Instant::now() + READ_TIMEOUT;
    while head.len() < MAX_HEAD && !head.windows(4).any(|w| w == b"\r\n\r\n") {
        match tokio::time::timeout_at(until, stream.read(&mut buf)).await {
            Ok(Ok(0)) | Err(_) => break,
            Ok(Ok(n)) => head.extend_from_slice(&buf[..n]),
            Ok(Err(e)) => return Err(e),
        }
    }
    if head.is_empty() {
        return Ok(());
    }
    let reply = route(&head, monitor);
    tokio::time::timeout(WRITE_TIMEOUT, async {
        stream.write_all(&reply.to_bytes()).await?;
        stream.shutdown().await
    })
    .await
    .unwrap_or_else(|_| Err(std::io::ErrorKind::TimedOut.into()))?;
    // Read what is left of the request before closing, so the close is not a reset that
    // could destroy the answer on its way.
    linger(&mut stream).await;
    Ok(())
}
