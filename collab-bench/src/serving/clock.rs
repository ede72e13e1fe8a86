//! What a simulated step costs: its measured wall time, or a profile's price for it.

use std::fmt;
use std::sync::Arc;
use std::time::Instant;

use collab_core::cost::{CostModel, MeasuredProfile, Workload};
use collab_core::{Error, Result};
use collab_policies::batch::Work;

/// The cost, in simulated seconds, of one [`Worker::step`](collab_policies::batch::Worker::step).
pub trait StepClock {
    /// Seconds the step that did `work` takes; `started` is when the step began here (a clock
    /// that measures reads it, a clock that prices ignores it).
    ///
    /// # Errors
    /// Whatever the clock's source reports (a device that fails to synchronise, a profile
    /// without that stage).
    fn step_seconds(&mut self, work: Work, started: Instant) -> Result<f64>;
}

/// The measured wall time of the step, after `sync` has waited for any queued device work
/// (CUDA launches are asynchronous: without it the clock would advance by the launch only).
pub struct WallClock<F> {
    sync: F,
}

impl<F> fmt::Debug for WallClock<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("WallClock")
    }
}

impl<F: FnMut() -> Result<()>> WallClock<F> {
    /// A clock that calls `sync` (typically `|| backend.synchronize()`) before reading the time.
    pub fn new(sync: F) -> Self {
        WallClock { sync }
    }
}

impl<F: FnMut() -> Result<()>> StepClock for WallClock<F> {
    fn step_seconds(&mut self, _work: Work, started: Instant) -> Result<f64> {
        (self.sync)()?;
        Ok(started.elapsed().as_secs_f64())
    }
}

/// A step's price from a per-block × batch-size profile at `tokens` tokens: block `p` at the
/// step's batch (plus the embedding at `p = 0`, where raw inputs join), the head at `p = L`,
/// nothing for an idle step.
#[derive(Clone, Debug)]
pub struct ProfileClock {
    profile: Arc<MeasuredProfile>,
    tokens: usize,
}

impl ProfileClock {
    /// Prices steps from `profile` at `tokens` tokens per request.
    pub fn new(profile: Arc<MeasuredProfile>, tokens: usize) -> Self {
        ProfileClock { profile, tokens }
    }
}

impl StepClock for ProfileClock {
    fn step_seconds(&mut self, work: Work, _started: Instant) -> Result<f64> {
        let Work::Ran { position, batch } = work else {
            return Ok(0.0);
        };
        let (p, tokens, batch) = (&self.profile, self.tokens, batch.max(1));
        let layers = p.layers;
        if position > layers {
            return Err(Error::Config(format!(
                "a step at position {position} of a {layers}-block profile"
            )));
        }
        if position == layers {
            return p.seconds(&Workload::Head { batch, tokens });
        }
        let block = p.blocks_seconds(position..position + 1, batch, tokens)?;
        let embed = if position == 0 {
            p.seconds(&Workload::Embed { batch, tokens })?
        } else {
            0.0
        };
        Ok(block + embed)
    }
}
