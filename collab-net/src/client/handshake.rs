//! Opening a session: connect, `Hello` -> `Welcome`, and retrying that with backoff.

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use rand::rngs::StdRng;
use tokio_util::codec::Framed;

use super::config::ClientConfig;
use super::error::ClientError;
use crate::transport::{BoxStream, Transport};
use crate::wire::{FrameCodec, Hello, Message, PROTOCOL_VERSION, Pong, RemoteError, Welcome};

/// An open session's framed stream.
pub(super) type Conn = Framed<BoxStream, FrameCodec>;

/// Why one connection attempt failed.
#[derive(Debug)]
pub(super) enum AttemptError {
    /// Worth another attempt (refused connection, timeout, the server shutting down).
    Retry(String),
    /// The server refused this device for good (token, model, version).
    Refused(RemoteError),
}

/// Whether a `Goodbye` reason refuses the device for good.
pub(super) fn is_refusal(e: &RemoteError) -> bool {
    matches!(
        e,
        RemoteError::Unauthorized
            | RemoteError::WrongModel { .. }
            | RemoteError::UnsupportedVersion { .. }
    )
}

/// One attempt: connects, sends `Hello`, waits for `Welcome`, all within
/// `config.connect_timeout`. On success the stream's frame limit becomes the smaller of the
/// client's and the server's.
pub(super) async fn handshake(
    transport: &dyn Transport,
    config: &ClientConfig,
    instance: u64,
) -> Result<(Conn, Welcome), AttemptError> {
    let attempt = async {
        let stream = transport.connect().await.map_err(|e| {
            AttemptError::Retry(format!("connecting to {}: {e}", transport.describe()))
        })?;
        let mut conn = Framed::new(stream, FrameCodec::new(config.max_frame));
        let hello = Hello {
            device_id: config.device_id.clone(),
            instance,
            model_id: config.model_id.clone(),
            protocol_version: PROTOCOL_VERSION,
            auth_token: config.auth_token.expose().to_owned(),
        };
        conn.send(Message::Hello(hello))
            .await
            .map_err(|e| AttemptError::Retry(format!("sending Hello: {e}")))?;
        loop {
            match conn.next().await {
                Some(Ok(Message::Welcome(w))) => {
                    let limit = usize::try_from(w.max_frame).unwrap_or(usize::MAX);
                    *conn.codec_mut() = FrameCodec::new(config.max_frame.min(limit));
                    return Ok((conn, w));
                }
                Some(Ok(Message::Goodbye(e))) if is_refusal(&e) => {
                    return Err(AttemptError::Refused(e));
                }
                Some(Ok(Message::Goodbye(e))) => {
                    return Err(AttemptError::Retry(format!("server said goodbye: {e}")));
                }
                // A server may push its load or probe us before the Welcome: harmless.
                Some(Ok(Message::ServerLoad(_) | Message::Pong(_))) => {}
                Some(Ok(Message::Ping(p))) => {
                    let _ = conn.send(Message::Pong(Pong { nonce: p.nonce })).await;
                }
                Some(Ok(other)) => {
                    return Err(AttemptError::Retry(format!(
                        "expected Welcome, the server sent {}",
                        other.kind()
                    )));
                }
                Some(Err(e)) => {
                    return Err(AttemptError::Retry(format!("during the handshake: {e}")));
                }
                None => {
                    return Err(AttemptError::Retry(
                        "the server closed the connection during the handshake".into(),
                    ));
                }
            }
        }
    };
    match tokio::time::timeout(config.connect_timeout, attempt).await {
        Ok(r) => r,
        Err(_) => Err(AttemptError::Retry(format!(
            "no Welcome within {} ms",
            config.connect_timeout.as_millis()
        ))),
    }
}

/// Up to `config.max_attempts` (at least 1) handshakes as `instance` (see
/// [`Hello::instance`]), the first at once and each later one after
/// [`super::Backoff::delay`].
///
/// # Errors
/// [`ClientError::Refused`] at the first refusal (not retried); [`ClientError::Unreachable`]
/// with the last failure when every attempt failed.
pub(super) async fn connect_with_backoff(
    transport: &dyn Transport,
    config: &ClientConfig,
    instance: u64,
    rng: &mut StdRng,
) -> Result<(Conn, Welcome), ClientError> {
    let attempts = config.max_attempts.max(1);
    let mut last = String::new();
    for n in 0..attempts {
        if n > 0 {
            let wait: Duration = config.backoff.delay(n - 1, rng);
            tokio::time::sleep(wait).await;
        }
        match handshake(transport, config, instance).await {
            Ok(session) => return Ok(session),
            Err(AttemptError::Refused(e)) => return Err(ClientError::Refused(e)),
            Err(AttemptError::Retry(m)) => {
                tracing::debug!(attempt = n + 1, attempts, "connection attempt failed: {m}");
                last = m;
            }
        }
    }
    Err(ClientError::Unreachable { attempts, last })
}
