//! How to reach the broker, and the streams' settings.

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use super::subjects::Subjects;

/// What went wrong talking to the broker.
#[derive(Debug, thiserror::Error)]
pub enum NatsError {
    /// The config cannot be used (a bad name or number, a missing secret).
    #[error("nats config: {0}")]
    Config(String),
    /// Connecting failed (unreachable, refused credentials, a TLS failure).
    #[error("connecting to nats at {url}: {message}")]
    Connect {
        /// The broker's address.
        url: String,
        /// What the client said.
        message: String,
    },
    /// A JetStream call failed (no JetStream, a permission the credentials lack).
    #[error("jetstream: {0}")]
    JetStream(String),
    /// The server side failed to start.
    #[error(transparent)]
    Server(#[from] crate::server::ServerError),
}

/// `[nats]` of a pipeline config, and the options of [`super::NatsWorker`] and
/// [`crate::client::DeviceClient::connect_nats`].
///
/// Every field but `url` is optional. Credentials: `user` with the password in the
/// environment variable `password_env` (never in the file). TLS: `tls_ca`, the CA that signed
/// the broker's certificate; TLS is then required.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NatsConfig {
    /// The broker, `nats://host:port` (a comma-separated list for a cluster).
    pub url: String,
    /// The NATS user (for a device, its id is the default).
    pub user: Option<String>,
    /// The environment variable holding the user's password.
    pub password_env: Option<String>,
    /// The password itself, for programs that hold it (never read from a file).
    #[serde(skip)]
    pub password: Option<String>,
    /// The CA certificates (PEM) that the broker's TLS certificate must chain to.
    pub tls_ca: Option<PathBuf>,
    /// The first token of every subject (default `collab`).
    #[serde(default = "default_prefix")]
    pub prefix: String,
    /// Seconds a worker may hold a request without a word before the broker redelivers it
    /// (default 2); workers say they are alive every third of it.
    #[serde(default = "default_ack_wait", rename = "ack_wait_s")]
    pub ack_wait_s: f64,
    /// How many requests a worker holds at most (its pull budget; default: its batch
    /// policy's budget, the server's capacity at most).
    pub max_held: Option<usize>,
    /// Seconds within which a re-published request or a second answer is de-duplicated
    /// (default 120).
    #[serde(default = "default_window", rename = "duplicate_window_s")]
    pub duplicate_window_s: f64,
    /// Deliveries of one request at most (default 5): a request that kills every worker it
    /// reaches cannot circulate for ever. The last delivery is answered `Failed`.
    #[serde(default = "default_max_deliver")]
    pub max_deliver: i64,
    /// Copies of each stream in a JetStream cluster (default 1; 3 on a three-node cluster
    /// keeps the queue through the loss of a broker). Used when a worker creates the streams.
    #[serde(default = "default_replicas")]
    pub replicas: usize,
}

fn default_replicas() -> usize {
    1
}

fn default_prefix() -> String {
    "collab".into()
}
fn default_ack_wait() -> f64 {
    2.0
}
fn default_window() -> f64 {
    120.0
}
fn default_max_deliver() -> i64 {
    5
}

impl NatsConfig {
    /// A config for the broker at `url` with every default.
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            user: None,
            password_env: None,
            password: None,
            tls_ca: None,
            prefix: default_prefix(),
            ack_wait_s: default_ack_wait(),
            max_held: None,
            duplicate_window_s: default_window(),
            max_deliver: default_max_deliver(),
            replicas: default_replicas(),
        }
    }

    /// With `user` and `password`.
    #[must_use]
    pub fn with_credentials(
        mut self,
        user: impl Into<String>,
        password: impl Into<String>,
    ) -> Self {
        self.user = Some(user.into());
        self.password = Some(password.into());
        self
    }

    /// With TLS required, trusting the CA certificates in `ca` (PEM).
    #[must_use]
    pub fn with_tls_ca(mut self, ca: impl Into<PathBuf>) -> Self {
        self.tls_ca = Some(ca.into());
        self
    }

    /// The ack wait.
    ///
    /// # Errors
    /// Not a positive number of seconds.
    pub fn ack_wait(&self) -> Result<Duration, NatsError> {
        let wait = seconds("ack_wait_s", self.ack_wait_s)?;
        if wait < Duration::from_millis(100) {
            return Err(NatsError::Config(format!(
                "ack_wait_s = {}: at least 0.1 s",
                self.ack_wait_s
            )));
        }
        Ok(wait)
    }

    /// The duplicate window.
    ///
    /// # Errors
    /// Not a positive number of seconds.
    pub fn duplicate_window(&self) -> Result<Duration, NatsError> {
        seconds("duplicate_window_s", self.duplicate_window_s)
    }

    /// The subjects under `prefix`.
    ///
    /// # Errors
    /// A prefix that is not one subject token.
    pub fn subjects(&self) -> Result<Subjects, NatsError> {
        Subjects::new(&self.prefix)
    }

    /// Connects as `user` (else `default_user`), with the password from `password` or
    /// `password_env`, TLS if `tls_ca` is set, and the reply inboxes under `inbox` (a device
    /// may read only its own).
    ///
    /// # Errors
    /// [`NatsError::Config`] for an unset password variable; [`NatsError::Connect`].
    pub(crate) async fn connect(
        &self,
        default_user: Option<&str>,
        inbox: Option<String>,
    ) -> Result<async_nats::Client, NatsError> {
        let mut options = async_nats::ConnectOptions::new()
            .connection_timeout(Duration::from_secs(5))
            .name(default_user.unwrap_or("collab"));
        let password = match (&self.password, &self.password_env) {
            (Some(p), _) => Some(p.clone()),
            (None, Some(var)) => Some(
                std::env::var(var)
                    .map_err(|_| NatsError::Config(format!("password_env: ${var} is not set")))?,
            ),
            (None, None) => None,
        };
        if let Some(password) = password {
            let user = self
                .user
                .as_deref()
                .or(default_user)
                .ok_or_else(|| NatsError::Config("a password needs a user".into()))?;
            options = options.user_and_password(user.into(), password);
        }
        if let Some(ca) = &self.tls_ca {
            options = options.require_tls(true).add_root_certificates(ca.clone());
        }
        if let Some(inbox) = inbox {
            options = options.custom_inbox_prefix(inbox);
        }
        let who = default_user.unwrap_or("collab").to_owned();
        options = options.event_callback(move |event| {
            let who = who.clone();
            async move {
                match event {
                    async_nats::Event::ServerError(e) => {
                        tracing::warn!(client = %who, "nats server: {e}");
                    }
                    other => tracing::debug!(client = %who, "nats: {other}"),
                }
            }
        });
        let servers: Vec<&str> = self
            .url
            .split(',')
            .map(str::trim)
            .filter(|u| !u.is_empty())
            .collect();
        options
            .connect(servers)
            .await
            .map_err(|e| NatsError::Connect {
                url: self.url.clone(),
                message: e.to_string(),
            })
    }
}

fn seconds(key: &str, s: f64) -> Result<Duration, NatsError> {
    Duration::try_from_secs_f64(s)
        .ok()
        .filter(|d| !d.is_zero())
        .ok_or_else(|| NatsError::Config(format!("{key} = {s}: a positive number of seconds")))
}
