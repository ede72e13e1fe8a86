//! What a server is started with: who may connect, its limits and timeouts, the batch
//! policy its compute thread runs and the codecs it decodes.

use std::sync::Arc;
use std::time::Duration;

use collab_core::batch::BatchPolicyConfig;
use collab_policies::batch::SharedModelConfig;
use collab_policies::codec::CodecRegistry;
use collab_policies::svd::SplitBases;

use super::ServerError;
use crate::wire::DEFAULT_MAX_FRAME;

/// A server's settings. [`ServerConfig::default`] gives the documented defaults; a test or
/// a CLI overrides the fields it cares about (`ServerConfig { capacity: 4, ..default() }`).
#[derive(Clone, Debug)]
pub struct ServerConfig {
    /// What `Hello.model_id` must equal (default `deit_tiny_patch16_224`).
    pub model_id: String,
    /// What `Hello.auth_token` must equal (default `collab-demo`).
    pub auth_token: String,
    /// The largest frame read from a device, bytes (default [`DEFAULT_MAX_FRAME`]).
    pub max_frame: usize,
    /// Admission limit: requests accepted and not yet answered, over all connections
    /// (default 64). A request arriving at the limit is answered `Overloaded` at once.
    pub capacity: usize,
    /// Open connections at most (default 256); one more is told `Goodbye(Overloaded)` and
    /// closed.
    pub max_connections: usize,
    /// Time a new connection has to send its `Hello` (default 5 s); then it is closed.
    pub hello_timeout: Duration,
    /// Time a device may stall inside a frame (bytes of an unfinished frame buffered and no
    /// new byte), and time one write to a device that does not read may take (default 10 s);
    /// then the connection is closed (`Goodbye(Protocol("stalled mid-frame ..."))`).
    pub frame_timeout: Duration,
    /// How often each session is sent a `ServerLoad` (default 250 ms).
    pub load_interval: Duration,
    /// The batch policy, as a config the compute thread builds it from (at start, and again
    /// after a fault); any registered [`BatchPolicyConfig`], a user's own included (default
    /// [`SharedModelConfig`] with budget 8).
    pub policy: Arc<dyn BatchPolicyConfig>,
    /// The codecs the server decodes (default [`CodecRegistry::builtin`]); a request naming a
    /// family outside it is answered `Invalid` naming the family.
    pub codecs: Arc<CodecRegistry>,
    /// What the calibrated codecs (`cpca`, `mpca`, `tpca`, ...) need at each split point
    /// (default none: only basis-free codecs are decoded). Devices must hold the same bases;
    /// a payload encoded with others is refused by its fingerprint. Load it with
    /// [`SplitBases::load`].
    pub bases: Option<Arc<SplitBases>>,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            model_id: "deit_tiny_patch16_224".into(),
            auth_token: "collab-demo".into(),
            max_frame: DEFAULT_MAX_FRAME,
            capacity: 64,
            max_connections: 256,
            hello_timeout: Duration::from_secs(5),
            frame_timeout: Duration::from_secs(10),
            load_interval: Duration::from_millis(250),
            policy: Arc::new(SharedModelConfig::new(8)),
            codecs: Arc::new(CodecRegistry::builtin()),
            bases: None,
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
        if let Err(e) = self.policy.build() {
            return bad(format!("policy {:?}: {e}", self.policy));
        }
        if self.max_connections == 0 {
            return bad("max_connections must be at least 1".into());
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
