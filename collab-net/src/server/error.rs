//! Why a server did not start.

/// A server could not start: what was wrong and what to do.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// A setting is unusable.
    #[error("server configuration: {0}")]
    Config(String),
    /// The model cannot be served (not a ViT classifier, or a policy failed to build).
    #[error("model: {0}")]
    Model(#[from] collab_core::Error),
    /// `Server::start` was called outside a tokio runtime.
    #[error("the server must be started inside a tokio runtime (call it from async code)")]
    NoRuntime,
    /// The compute thread could not be spawned.
    #[error("cannot spawn the compute thread: {0}")]
    Thread(#[source] std::io::Error),
}
