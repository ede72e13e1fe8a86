//! What a server is started with: who may connect, its limits and timeouts, the batch
//! policy its compute thread runs and the codecs it decodes.

use std::sync::Arc;
use std::time::Duration;

use collab_core::adaptive::TokenPolicyConfig;
use collab_core::batch::BatchPolicyConfig;
use collab_core::distill::Personaliser;
use collab_policies::batch::SharedModelConfig;
use collab_policies::codec::CodecRegistry;
use collab_policies::svd::SplitBases;

use super::ServerError;
use crate::auth::{DEMO_TOKEN, DeviceTokens, Secret};
use crate::wire::DEFAULT_MAX_FRAME;

/// A server's settings. [`ServerConfig::default`] gives the documented defaults; a test or
/// a CLI overrides the fields it cares about (`ServerConfig { capacity: 4, ..default() }`).
#[derive(Clone, Debug)]
pub struct ServerConfig {
    /// What `Hello.model_id` must equal (default `deit_tiny_patch16_224`).
    pub model_id: String,
    /// What `Hello.auth_token` must equal when there are no `device_tokens` (default
    /// [`DEMO_TOKEN`], public: the command line refuses it beyond loopback unless told).
    pub auth_token: Secret,
    /// A token per device: when set, a device must present its own (the one listed for its
    /// `Hello.device_id`), and `auth_token` opens nothing.
    pub device_tokens: Option<Arc<DeviceTokens>>,
    /// TLS for every device connection ([`crate::tls::server_config`]; default none:
    /// clear text). The handshake must end within `hello_timeout`.
    pub tls: Option<Arc<rustls::ServerConfig>>,
    /// The largest frame read from a device, bytes (default [`DEFAULT_MAX_FRAME`]).
    pub max_frame: usize,
    /// Admission limit: requests accepted and not yet answered, over all connections
    /// (default 64). A request arriving at the limit is answered `Overloaded` at once.
    pub capacity: usize,
    /// Open connections at most (default 256); one more is told `Goodbye(Overloaded)` and
    /// closed.
    pub max_connections: usize,
    /// Connections at most that are open and have not yet had their `Hello` accepted
    /// (default 32): unauthenticated connections cannot take the slots of devices.
    pub max_handshaking: usize,
    /// Open connections at most from one peer address (its IP; default 32).
    pub max_per_address: usize,
    /// Connections in their handshake at most from one peer address (default 4): one peer
    /// opening connections and never saying `Hello` cannot fill `max_handshaking`.
    pub max_handshaking_per_address: usize,
    /// Time a new connection has to send its `Hello` (default 3 s); then it is closed.
    pub hello_timeout: Duration,
    /// The largest frame read before the `Hello` is accepted, bytes (default 4 KiB): an
    /// unauthenticated peer cannot make the server buffer `max_frame`.
    pub hello_max_frame: usize,
    /// Time a device may stall inside a frame (bytes of an unfinished frame buffered and no
    /// new byte), and time one write to a device that does not read may take (default 10 s);
    /// then the connection is closed (`Goodbye(Protocol("stalled mid-frame ..."))`).
    pub frame_timeout: Duration,
    /// The slowest a device may send a frame, bytes per second (default 64 KiB/s): each frame
    /// must be whole within `frame_timeout` plus its length at this rate from its first byte,
    /// so a peer trickling bytes (1 byte/s kept a slot forever before issue 31) is closed.
    pub min_transfer_rate: usize,
    /// How often each session is sent a `ServerLoad` (default 250 ms).
    pub load_interval: Duration,
    /// The batch policy, as a config the compute thread builds it from (at start, and again
    /// after a fault); any registered [`BatchPolicyConfig`], a user's own included (default
    /// [`SharedModelConfig`] with budget 8).
    pub policy: Arc<dyn BatchPolicyConfig>,
    /// The token merging of each pass (OTAS, SPEC §4): any registered [`TokenPolicyConfig`]
    /// (`fixed`, `otas`, a user's own), built for the served model at start; `None` (the
    /// default) merges nothing.
    pub tokens: Option<Arc<dyn TokenPolicyConfig>>,
    /// The codecs the server decodes (default [`CodecRegistry::builtin`]); a request naming a
    /// family outside it is answered `Invalid` naming the family.
    pub codecs: Arc<CodecRegistry>,
    /// What the calibrated codecs (`cpca`, `mpca`, `tpca`, ...) need at each split point
    /// (default none: only basis-free codecs are decoded). Devices must hold the same bases;
    /// a payload encoded with others is refused by its fingerprint. Load it with
    /// [`SplitBases::load`].
    pub bases: Option<Arc<SplitBases>>,
    /// Distils a student for a device that sends a `PersonaliseRequest` (SPEC §6; for example
    /// `collab_policies::distill::SelectiveDistillation`); `None` (the default) answers such a
    /// request `Invalid`.
    pub personaliser: Option<Arc<dyn Personaliser>>,
    /// Personalisations that run at once, over all devices (default 1); one more is answered
    /// `Overloaded`. Each runs on a blocking thread, off the async workers.
    pub max_personalising: usize,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            model_id: "deit_tiny_patch16_224".into(),
            auth_token: DEMO_TOKEN.into(),
            device_tokens: None,
            tls: None,
            max_frame: DEFAULT_MAX_FRAME,
            capacity: 64,
            max_connections: 256,
            max_handshaking: 32,
            max_per_address: 32,
            max_handshaking_per_address: 4,
            hello_timeout: Duration::from_secs(3),
            hello_max_frame: 4 << 10,
            frame_timeout: Duration::from_secs(10),
            min_transfer_rate: 64 << 10,
            load_interval: Duration::from_millis(250),
            policy: Arc::new(SharedModelConfig::new(8)),
            tokens: None,
            codecs: Arc::new(CodecRegistry::builtin()),
            bases: None,
            personaliser: None,
            max_personalising: 1,
        }
    }
}

impl ServerConfig {
    /// Checks that every limit is usable.
    ///
    /// # Errors
    /// [`ServerError::Config`] naming the field: a zero capacity, connection limit or
    /// interval, a frame limit too small for a request's framing, or a batch policy config
    /// that does not build.
    pub fn validate(&self) -> Result<(), ServerError> {
        let bad = |m: String| Err(ServerError::Config(m));
        if self.capacity == 0 {
            return bad("capacity must be at least 1 request".into());
        }
        if self.personaliser.is_some() && self.max_personalising == 0 {
            return bad("max_personalising must be at least 1 with a personaliser".into());
        }
        if let Err(e) = self.policy.build() {
            return bad(format!("policy {:?}: {e}", self.policy));
        }
        for (name, n) in [
            ("max_connections", self.max_connections),
            ("max_handshaking", self.max_handshaking),
            ("max_per_address", self.max_per_address),
            (
                "max_handshaking_per_address",
                self.max_handshaking_per_address,
            ),
            ("min_transfer_rate", self.min_transfer_rate),
        ] {
            if n == 0 {
                return bad(format!("{name} must be at least 1"));
            }
        }
        if self.hello_max_frame < 64 {
            return bad(format!(
                "hello_max_frame of {} bytes cannot hold a Hello (at least 64)",
                self.hello_max_frame
            ));
        }
        if self.max_frame < 64 {
            return bad(format!(
                "max_frame of {} bytes cannot hold a request (at least 64)",
                self.max_frame
            ));
        }
        for (name, d) in [
            ("hello_timeout", self.hello_timeout),
            ("frame_timeout", self.frame_timeout),
            ("load_interval", self.load_interval),
        ] {
            if d.is_zero() {
                return bad(format!("{name} must be longer than 0"));
            }
        }
        Ok(())
    }
}
