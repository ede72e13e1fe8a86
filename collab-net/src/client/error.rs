//! The typed errors a device client answers with: every call ends in exactly one result or one
//! of these.

use std::time::Duration;

use crate::wire::RemoteError;

/// Why a client call has no result.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
pub enum ClientError {
    /// The server answered with a typed error (overloaded, deadline missed, invalid request,
    /// compute failure, shutting down). [`crate::client::Device`] also answers
    /// `Remote(DeadlineMissed { budget_ms: 0 })` without sending when the device's own part
    /// already used up the deadline.
    #[error("server: {0}")]
    Remote(RemoteError),
    /// The server refused the session (wrong auth token, model or protocol version): retrying
    /// cannot help, so the client stops.
    #[error("refused by the server: {0}; check --token, the model id and the protocol version")]
    Refused(RemoteError),
    /// No answer within the caller's timeout.
    #[error("no answer within {} ms", after.as_millis())]
    Timeout {
        /// The timeout that passed.
        after: Duration,
    },
    /// The client could not (re)connect: `attempts` consecutive attempts failed.
    #[error("server unreachable after {attempts} connection attempts: {last}")]
    Unreachable {
        /// Attempts made.
        attempts: u32,
        /// The last attempt's failure.
        last: String,
    },
    /// The server broke the protocol (an unexpected message, a frame that does not decode).
    #[error("protocol violation by the server: {0}")]
    Protocol(String),
    /// A device-side failure: preprocessing, compute, encoding, a request too large to send,
    /// or a split choice the device cannot carry out.
    #[error("device-side failure: {0}")]
    Local(String),
}

impl ClientError {
    /// A short machine-readable kind, as the device process prints it: `deadline_missed`,
    /// `overloaded`, `invalid`, `failed`, `timeout`, `unreachable`, `refused`, `protocol` or
    /// `local`. A server shutting down counts as `unreachable` (it serves no more).
    pub fn kind(&self) -> &'static str {
        match self {
            ClientError::Remote(r) => match r {
                RemoteError::DeadlineMissed { .. } => "deadline_missed",
                RemoteError::Overloaded { .. } => "overloaded",
                RemoteError::Invalid(_) => "invalid",
                RemoteError::Failed(_) => "failed",
                RemoteError::ShuttingDown => "unreachable",
                RemoteError::Unauthorized
                | RemoteError::WrongModel { .. }
                | RemoteError::UnsupportedVersion { .. } => "refused",
                RemoteError::FrameTooLarge { .. } | RemoteError::Protocol(_) => "protocol",
            },
            ClientError::Refused(_) => "refused",
            ClientError::Timeout { .. } => "timeout",
            ClientError::Unreachable { .. } => "unreachable",
            ClientError::Protocol(_) => "protocol",
            ClientError::Local(_) => "local",
        }
    }

    /// Whether a new attempt may succeed (everything but a refusal, an invalid request and a
    /// protocol violation).
    pub fn is_retryable(&self) -> bool {
        !matches!(
            self,
            ClientError::Refused(_)
                | ClientError::Protocol(_)
                | ClientError::Remote(RemoteError::Invalid(_))
        )
    }
}

impl From<collab_core::Error> for ClientError {
    fn from(e: collab_core::Error) -> Self {
        ClientError::Local(e.to_string())
    }
}
