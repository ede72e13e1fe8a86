//! One pipeline config file for a deployment: the model, the codecs both sides share, and a
//! section per side. `collab-server --config FILE` reads `[model]`, `[[codecs]]` and
//! `[server]`; `collab-device --config FILE` reads `[model]`, `[[codecs]]` and `[device]`.
//!
//! Every pluggable part is named by its `kind`, registered with `typetag`, so a user's own
//! batch policy, codec factory or split strategy, compiled into their binary, is named exactly
//! as ours are:
//!
//! ```toml
//! [model]
//! id = "deit_tiny_patch16_224"          # what devices announce; also the preset by default
//! # preset = "deit_tiny_patch16_224"    # the architecture, when the id is not a preset
//! # checkpoint = "path/to/model.safetensors"   # default: the fixtures' DeiT-Tiny
//!
//! [[codecs]]                             # codec factories besides the built-in families
//! kind = "top-k"                         # (a user's; both sides must list the same)
//!
//! [server]
//! listen = "127.0.0.1:7878"
//! metrics = "127.0.0.1:9898"
//! backend = "candle-cpu"                 # tch-cuda, candle-cuda:1, ...
//! capacity = 64
//! # bases = "results/svd-accuracy/deit-tiny/bases.bin"
//! [server.batch]
//! kind = "shared"                        # per-split, server-only, or a registered one
//! budget = 8
//! # [server.tokens]                      # token merging per pass (default: none)
//! # kind = "otas"                        # fixed (gamma = -8), prodigy, or a registered one
//! # profile = "results/otas/token-profile.json"
//!
//! [device]
//! server = "127.0.0.1:7878"
//! id = "phone-1"
//! backend = "arm-q8"
//! deadline_ms = 300
//! max_loss = 0.02
//! [device.split]
//! kind = "selector"                      # the SPEC §1 rule, or a registered strategy
//! ```
//!
//! Scale-out: with a `[nats]` section ([`crate::nats::NatsConfig`]) the server runs as a
//! worker on the broker's JetStream work queue (nothing listens for devices) and the device
//! sends through the broker (`[device] server` may then be left out); `deploy/` has the
//! files for several machines:
//!
//! ```toml
//! [nats]
//! url = "tls://nats-1:4222,tls://nats-2:4222"   # one or more brokers of a cluster
//! user = "worker"                                # a device's user is its id by default
//! password_env = "WORKER_PASSWORD"
//! tls_ca = "/etc/collab/ca.pem"
//! # max_held = 64      # a worker's pull budget (default: its capacity)
//! # ack_wait_s = 2     # silence after which a worker's requests go to another
//! ```
//!
//! A bad file is a [`PipelineError`] naming the key, the value and what is allowed (unknown
//! keys are refused, so a misspelt key is never silently ignored).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use collab_backends::any::BackendName;
use collab_core::adaptive::TokenPolicyConfig;
use collab_core::batch::BatchPolicyConfig;
use collab_policies::codec::{CodecFactory, CodecRegistry};
use collab_policies::split::{SelectorStrategy, SplitStrategyConfig};
use serde::{Deserialize, Deserializer};

use crate::client::DeviceConfig;
use crate::server::ServerConfig;

/// Why a pipeline config cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    /// The file could not be read.
    #[error("cannot read pipeline config {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The text is not a valid pipeline config: the TOML error, with the key and line.
    #[error("pipeline config{}: {message}", origin.as_ref().map(|p| format!(" {}", p.display())).unwrap_or_default())]
    Parse {
        /// The file, if the text came from one.
        origin: Option<PathBuf>,
        /// What is wrong, where (TOML's message: line, column, key, allowed values).
        message: String,
    },
    /// A value parsed but cannot be used: the key, the value and what is allowed.
    #[error("pipeline config: `{key}` = {value}: {allowed}")]
    Value {
        /// The key, as a dotted path (`server.capacity`).
        key: String,
        /// The value found.
        value: String,
        /// What is allowed.
        allowed: String,
    },
    /// A section the caller needs is missing.
    #[error("pipeline config has no [{0}] section")]
    Missing(&'static str),
}

/// A whole pipeline config (see the [module docs](self)).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PipelineConfig {
    /// The model both sides run.
    pub model: ModelSection,
    /// Codec factories besides [`CodecRegistry::builtin`], on both sides.
    #[serde(default, deserialize_with = "arc_codecs")]
    pub codecs: Vec<Arc<dyn CodecFactory>>,
    /// The cloud server.
    pub server: Option<ServerSection>,
    /// A device.
    pub device: Option<DeviceSection>,
    /// Scale-out through a NATS broker (see [`crate::nats`]): the server runs as a worker on
    /// its JetStream work queue, and the device sends through it, instead of direct TCP.
    pub nats: Option<crate::nats::NatsConfig>,
}

/// `[model]`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelSection {
    /// The model id devices announce and the server checks.
    pub id: String,
    /// The architecture preset (default: `id`).
    pub preset: Option<String>,
    /// The safetensors checkpoint (default: the fixtures' DeiT-Tiny).
    pub checkpoint: Option<PathBuf>,
}

impl ModelSection {
    /// The architecture preset: `preset`, else `id`.
    pub fn preset(&self) -> &str {
        self.preset.as_deref().unwrap_or(&self.id)
    }
}

/// `[server]`; every key is optional.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerSection {
    /// Address devices connect to (default `127.0.0.1:7878`).
    pub listen: Option<SocketAddr>,
    /// Address of `/healthz` and `/metrics` (default `127.0.0.1:9898`).
    pub metrics: Option<SocketAddr>,
    /// Address of the live dashboard (default none; see [`crate::dashboard`]).
    pub dashboard: Option<SocketAddr>,
    /// The environment variable holding the dashboard's operator token (default
    /// `COLLAB_OPERATOR_TOKEN`; unset: the dashboard is read-only).
    pub operator_token_env: Option<String>,
    /// The backend the server computes on (default `candle-cpu`).
    pub backend: Option<BackendName>,
    /// The batch policy (default `{ kind = "shared", budget = 8 }`).
    #[serde(default, deserialize_with = "arc_policy")]
    pub batch: Option<Arc<dyn BatchPolicyConfig>>,
    /// The token merging of each pass (default none; `{ kind = "fixed", gamma = -8 }`,
    /// `{ kind = "otas", profile = "..." }`, `{ kind = "prodigy", profile = "..." }` or a
    /// registered one), built for the model at start.
    #[serde(default, deserialize_with = "arc_tokens")]
    pub tokens: Option<Arc<dyn TokenPolicyConfig>>,
    /// Admission limit (default 64).
    pub capacity: Option<usize>,
    /// Open connections at most (default 256).
    pub max_connections: Option<usize>,
    /// Connections at most still in their handshake (default 32).
    pub max_handshaking: Option<usize>,
    /// Open connections at most from one address (default 32).
    pub max_per_address: Option<usize>,
    /// Connections at most in their handshake from one address (default 4).
    pub max_handshaking_per_address: Option<usize>,
    /// The largest frame read, bytes (default 8 MiB).
    pub max_frame: Option<usize>,
    /// The largest frame read before the Hello is accepted, bytes (default 4096).
    pub hello_max_frame: Option<usize>,
    /// Seconds a connection has to send its Hello (default 3).
    pub hello_timeout_s: Option<f64>,
    /// Seconds a device may stall inside a frame (default 10).
    pub frame_timeout_s: Option<f64>,
    /// The slowest a device may send a frame, bytes per second (default 65536).
    pub min_transfer_rate: Option<usize>,
    /// The split bases file for the calibrated codecs.
    pub bases: Option<PathBuf>,
    /// The environment variable holding the devices' shared secret (default: the built-in
    /// demo token).
    pub token_env: Option<String>,
    /// A token per device (a TOML file of `[devices]`, see `collab_net::auth`): each device
    /// presents its own, and the shared secret opens nothing.
    pub device_tokens: Option<PathBuf>,
    /// TLS: the server's certificate chain (PEM), with `tls_key`.
    pub tls_cert: Option<PathBuf>,
    /// TLS: the private key of `tls_cert` (PEM).
    pub tls_key: Option<PathBuf>,
}

/// `[device]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeviceSection {
    /// The server's address (none when the device goes through `[nats]`).
    pub server: Option<SocketAddr>,
    /// This device's id (default `device-0`).
    pub id: Option<String>,
    /// The backend the device computes on (default `candle-cpu`).
    pub backend: Option<BackendName>,
    /// The split strategy (default `{ kind = "selector" }`).
    #[serde(default, deserialize_with = "arc_strategy")]
    pub split: Option<Arc<dyn SplitStrategyConfig>>,
    /// End-to-end deadline per request, ms (default 300).
    pub deadline_ms: Option<f64>,
    /// Largest accuracy loss a choice may cost (default 0.02).
    pub max_loss: Option<f64>,
    /// How many times slower than this machine the device computes (default 1).
    pub slowdown: Option<f64>,
    /// The accuracy table (`cargo xtask exp svd-accuracy`).
    pub accuracy_table: Option<PathBuf>,
    /// The split bases file (the server's).
    pub bases: Option<PathBuf>,
    /// The environment variable holding the shared secret (default: the built-in demo token).
    pub token_env: Option<String>,
    /// TLS to the server, trusting the CA certificates of this PEM file.
    pub tls_ca: Option<PathBuf>,
    /// The name the server's certificate must carry (default `localhost`).
    pub tls_name: Option<String>,
}

fn arc_codecs<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<Arc<dyn CodecFactory>>, D::Error> {
    Ok(Vec::<Box<dyn CodecFactory>>::deserialize(d)?
        .into_iter()
        .map(Arc::from)
        .collect())
}

fn arc_policy<'de, D: Deserializer<'de>>(
    d: D,
) -> Result<Option<Arc<dyn BatchPolicyConfig>>, D::Error> {
    Ok(Option::<Box<dyn BatchPolicyConfig>>::deserialize(d)?.map(Arc::from))
}

fn arc_tokens<'de, D: Deserializer<'de>>(
    d: D,
) -> Result<Option<Arc<dyn TokenPolicyConfig>>, D::Error> {
    Ok(Option::<Box<dyn TokenPolicyConfig>>::deserialize(d)?.map(Arc::from))
}

fn arc_strategy<'de, D: Deserializer<'de>>(
    d: D,
) -> Result<Option<Arc<dyn SplitStrategyConfig>>, D::Error> {
    Ok(Option::<Box<dyn SplitStrategyConfig>>::deserialize(d)?.map(Arc::from))
}

/// `seconds` as a positive duration, or the error naming `key`.
fn positive_seconds(key: &str, seconds: f64) -> Result<Duration, PipelineError> {
    Duration::try_from_secs_f64(seconds)
        .ok()
        .filter(|d| !d.is_zero())
        .ok_or_else(|| PipelineError::Value {
            key: key.into(),
            value: seconds.to_string(),
            allowed: "a positive number of seconds".into(),
        })
}

/// The secret in environment variable `var` (`key` names the config key for the error).
/// A file named at `key` that could not be used, and why.
fn file_error(key: &str, path: &std::path::Path, e: impl std::fmt::Display) -> PipelineError {
    PipelineError::Value {
        key: key.into(),
        value: path.display().to_string(),
        allowed: e.to_string(),
    }
}

fn token_from_env(key: &str, var: &str) -> Result<String, PipelineError> {
    std::env::var(var).map_err(|_| PipelineError::Value {
        key: key.into(),
        value: format!("{var:?}"),
        allowed: "the name of a set environment variable holding the token".into(),
    })
}

impl PipelineConfig {
    /// Parses a config from TOML text.
    ///
    /// # Errors
    /// [`PipelineError::Parse`] naming the key, the line and what is allowed: bad TOML, an
    /// unknown key, a `kind` no linked crate registers (the message lists the registered
    /// ones), a value of the wrong type.
    pub fn from_toml(text: &str) -> Result<Self, PipelineError> {
        toml::from_str(text).map_err(|e| PipelineError::Parse {
            origin: None,
            message: e.to_string(),
        })
    }

    /// Reads and parses a config file.
    ///
    /// # Errors
    /// [`PipelineError::Read`], or as [`PipelineConfig::from_toml`].
    pub fn load(path: &Path) -> Result<Self, PipelineError> {
        let text = std::fs::read_to_string(path).map_err(|source| PipelineError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Self::from_toml(&text).map_err(|e| match e {
            PipelineError::Parse { message, .. } => PipelineError::Parse {
                origin: Some(path.to_path_buf()),
                message,
            },
            other => other,
        })
    }

    /// The codecs both sides build from: the built-in families and `[[codecs]]`.
    ///
    /// # Errors
    /// [`PipelineError::Value`] if two factories build the same family.
    pub fn codecs(&self) -> Result<CodecRegistry, PipelineError> {
        let mut registry = CodecRegistry::builtin();
        for (i, factory) in self.codecs.iter().enumerate() {
            registry
                .register(factory.clone())
                .map_err(|e| PipelineError::Value {
                    key: format!("codecs[{i}]"),
                    value: format!("{factory:?}"),
                    allowed: e.to_string(),
                })?;
        }
        Ok(registry)
    }

    /// The server's settings from `[model]`, `[[codecs]]` and `[server]` (the bases file is
    /// loaded here).
    ///
    /// # Errors
    /// [`PipelineError::Missing`] without `[server]`; [`PipelineError::Value`] naming the key
    /// of a value that cannot be used (a timeout that is not positive, a policy that does not
    /// build, a bases file that does not load, a token variable that is not set, limits the
    /// server refuses).
    pub fn server_config(&self) -> Result<ServerConfig, PipelineError> {
        let s = self
            .server
            .as_ref()
            .ok_or(PipelineError::Missing("server"))?;
        let mut config = ServerConfig {
            model_id: self.model.id.clone(),
            codecs: Arc::new(self.codecs()?),
            ..ServerConfig::default()
        };
        if let Some(policy) = &s.batch {
            policy.build().map_err(|e| PipelineError::Value {
                key: "server.batch".into(),
                value: format!("{policy:?}"),
                allowed: e.to_string(),
            })?;
            config.policy = policy.clone();
        }
        config.tokens.clone_from(&s.tokens);
        if let Some(v) = s.capacity {
            config.capacity = v;
        }
        let counts = [
            (s.max_connections, &mut config.max_connections),
            (s.max_handshaking, &mut config.max_handshaking),
            (s.max_per_address, &mut config.max_per_address),
            (
                s.max_handshaking_per_address,
                &mut config.max_handshaking_per_address,
            ),
            (s.max_frame, &mut config.max_frame),
            (s.hello_max_frame, &mut config.hello_max_frame),
            (s.min_transfer_rate, &mut config.min_transfer_rate),
        ];
        for (given, field) in counts {
            if let Some(v) = given {
                *field = v;
            }
        }
        if let Some(v) = s.hello_timeout_s {
            config.hello_timeout = positive_seconds("server.hello_timeout_s", v)?;
        }
        if let Some(v) = s.frame_timeout_s {
            config.frame_timeout = positive_seconds("server.frame_timeout_s", v)?;
        }
        if let Some(var) = &s.token_env {
            config.auth_token = token_from_env("server.token_env", var)?.into();
        }
        if let Some(path) = &s.device_tokens {
            let tokens = crate::auth::DeviceTokens::load(path)
                .map_err(|e| file_error("server.device_tokens", path, e))?;
            config.device_tokens = Some(Arc::new(tokens));
        }
        match (&s.tls_cert, &s.tls_key) {
            (None, None) => {}
            (Some(cert), Some(key)) => {
                let tls = crate::tls::server_config(cert, key)
                    .map_err(|e| file_error("server.tls_cert", cert, e))?;
                config.tls = Some(tls);
            }
            _ => {
                return Err(PipelineError::Value {
                    key: "server.tls_cert".into(),
                    value: "(one of tls_cert, tls_key)".into(),
                    allowed: "both tls_cert and tls_key, or neither".into(),
                });
            }
        }
        if let Some(path) = &s.bases {
            let bases = collab_policies::svd::SplitBases::load(path)
                .map_err(|e| file_error("server.bases", path, e))?;
            config.bases = Some(Arc::new(bases));
        }
        config.validate().map_err(|e| PipelineError::Value {
            key: "server".into(),
            value: "(limits)".into(),
            allowed: e.to_string(),
        })?;
        Ok(config)
    }

    /// A device's settings from `[model]`, `[[codecs]]` and `[device]` (the bases file is
    /// loaded here), with its split strategy config (default `kind = "selector"`) to build
    /// once the device has measured its cost model.
    ///
    /// # Errors
    /// [`PipelineError::Missing`] without `[device]`; [`PipelineError::Value`] naming the key
    /// of a value that cannot be used.
    pub fn device_config(
        &self,
    ) -> Result<(DeviceConfig, Arc<dyn SplitStrategyConfig>), PipelineError> {
        let d = self
            .device
            .as_ref()
            .ok_or(PipelineError::Missing("device"))?;
        let mut config = DeviceConfig {
            codecs: Arc::new(self.codecs()?),
            ..DeviceConfig::default()
        };
        if let Some(ms) = d.deadline_ms {
            config.deadline = positive_seconds("device.deadline_ms", ms / 1e3).map_err(|_| {
                PipelineError::Value {
                    key: "device.deadline_ms".into(),
                    value: ms.to_string(),
                    allowed: "a positive number of milliseconds".into(),
                }
            })?;
        }
        if let Some(loss) = d.max_loss {
            if !(loss.is_finite() && loss >= 0.0) {
                return Err(PipelineError::Value {
                    key: "device.max_loss".into(),
                    value: loss.to_string(),
                    allowed: "a finite number >= 0".into(),
                });
            }
            config.max_loss = loss;
        }
        if let Some(slowdown) = d.slowdown {
            if !(slowdown.is_finite() && slowdown >= 1.0) {
                return Err(PipelineError::Value {
                    key: "device.slowdown".into(),
                    value: slowdown.to_string(),
                    allowed: "a number >= 1".into(),
                });
            }
            config.slowdown = slowdown;
        }
        if let Some(path) = &d.bases {
            let bases = collab_policies::svd::SplitBases::load(path)
                .map_err(|e| file_error("device.bases", path, e))?;
            config.bases = Some(Arc::new(bases));
        }
        let strategy = d
            .split
            .clone()
            .unwrap_or_else(|| Arc::new(SelectorStrategy::default()));
        Ok((config, strategy))
    }

    /// The device's shared secret: from `[device].token_env` if set.
    ///
    /// # Errors
    /// [`PipelineError::Value`] if the variable is not set.
    pub fn device_token(&self) -> Result<Option<String>, PipelineError> {
        match self.device.as_ref().and_then(|d| d.token_env.as_ref()) {
            Some(var) => token_from_env("device.token_env", var).map(Some),
            None => Ok(None),
        }
    }
}

#[cfg(test)]
mod tests;
