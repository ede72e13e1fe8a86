//! How a [`super::DeviceClient`] connects: who it is, what it runs, and how hard it tries.

use std::time::Duration;

use rand::Rng;

use crate::auth::{DEMO_TOKEN, Secret};
use crate::wire::DEFAULT_MAX_FRAME;

/// Exponential backoff between connection attempts, with jitter.
///
/// The delay before the `n`-th retry (`n = 0` for the first) is drawn uniformly from
/// `[d / 2, d]` with `d = min(max, initial * factor^n)` ("equal jitter"): never less than half
/// the nominal delay, so a server restarting is not hammered, and spread out, so devices that
/// lost the same server do not all come back in the same millisecond.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Backoff {
    /// Nominal delay before the first retry (default 50 ms).
    pub initial: Duration,
    /// Largest nominal delay (default 2 s).
    pub max: Duration,
    /// Growth per retry (default 2.0; values below 1 are treated as 1).
    pub factor: f64,
}

impl Default for Backoff {
    fn default() -> Self {
        Self {
            initial: Duration::from_millis(50),
            max: Duration::from_secs(2),
            factor: 2.0,
        }
    }
}

impl Backoff {
    /// The nominal (jitter-free) delay before retry `n` (0-based): `min(max, initial *
    /// factor^n)`.
    pub fn nominal(&self, n: u32) -> Duration {
        let factor = if self.factor.is_finite() {
            self.factor.max(1.0)
        } else {
            1.0
        };
        let exp = i32::try_from(n).unwrap_or(i32::MAX);
        let secs = self.initial.as_secs_f64() * factor.powi(exp);
        let max = self.max.as_secs_f64();
        if secs.is_finite() && secs < max {
            Duration::from_secs_f64(secs.max(0.0))
        } else {
            self.max
        }
    }

    /// The delay before retry `n`, jittered uniformly in `[nominal / 2, nominal]`.
    pub fn delay(&self, n: u32, rng: &mut impl Rng) -> Duration {
        let d = self.nominal(n);
        d.mul_f64(0.5 + 0.5 * rng.random::<f64>())
    }
}

/// Connection-level settings of a device client.
#[derive(Clone, Debug, PartialEq)]
pub struct ClientConfig {
    /// Who the device is (the server matches retries per device; default `device-0`).
    pub device_id: String,
    /// The model the device runs its part of (default `deit_tiny_patch16_224`).
    pub model_id: String,
    /// The device's secret: the server's shared token or this device's own (default the
    /// public [`DEMO_TOKEN`]). Read it from a file or the environment, not a command line.
    pub auth_token: Secret,
    /// The largest frame this client reads or writes, bytes (default
    /// [`DEFAULT_MAX_FRAME`]); the server's own limit from its `Welcome` applies too.
    pub max_frame: usize,
    /// Time for one connection attempt: connecting and the Hello/Welcome handshake
    /// (default 2 s).
    pub connect_timeout: Duration,
    /// Delays between attempts.
    pub backoff: Backoff,
    /// Consecutive connection attempts before giving up with
    /// [`super::ClientError::Unreachable`] (default 8; at least 1).
    pub max_attempts: u32,
}

impl Default for ClientConfig {
    fn default() -> Self {
        Self {
            device_id: "device-0".into(),
            model_id: "deit_tiny_patch16_224".into(),
            auth_token: DEMO_TOKEN.into(),
            max_frame: DEFAULT_MAX_FRAME,
            connect_timeout: Duration::from_secs(2),
            backoff: Backoff::default(),
            max_attempts: 8,
        }
    }
}
