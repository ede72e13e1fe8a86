//! A cost model scaled by a constant factor: a slower or faster device mimicked from a
//! measured one (e.g. Jetson power modes from this machine's profile, SPEC §2 evaluation).

use std::sync::Arc;

use super::{CostModel, Workload};
use crate::Result;

/// Every prediction of `inner` multiplied by `factor` (> 1: slower).
#[derive(Clone, Debug)]
pub struct Scaled {
    /// The measured model.
    pub inner: Arc<dyn CostModel>,
    /// The factor applied to every prediction.
    pub factor: f64,
    /// A name for reports (`jetson-like x4`).
    pub label: String,
}

impl CostModel for Scaled {
    fn name(&self) -> String {
        format!("{} ({} x{})", self.label, self.inner.name(), self.factor)
    }

    fn seconds(&self, work: &Workload) -> Result<f64> {
        Ok(self.inner.seconds(work)? * self.factor)
    }
}
