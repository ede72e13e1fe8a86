//! [`FastestWithinLoss`]: the selector's candidates, judged by latency alone.

use std::sync::Arc;

use collab_core::split::{Conditions, SplitChoice, SplitStrategy};
use collab_core::{Error, Result};

use super::SplitSelector;

/// The fastest of a [`SplitSelector`]'s candidates whose loss is within the limit, whatever
/// the deadline: the fallback when no candidate meets the deadline (see [`super::Fallback`]).
#[derive(Clone, Debug)]
pub struct FastestWithinLoss {
    selector: Arc<SplitSelector>,
}

impl FastestWithinLoss {
    /// Over `selector`'s candidates.
    pub fn new(selector: Arc<SplitSelector>) -> Self {
        Self { selector }
    }
}

impl SplitStrategy for FastestWithinLoss {
    fn name(&self) -> String {
        format!("fastest-within-loss({})", self.selector.name())
    }

    /// # Errors
    /// [`Error::NoPrediction`] when no candidate is within the loss limit; the selector's
    /// errors.
    fn choose(&self, c: &Conditions) -> Result<SplitChoice> {
        self.selector
            .candidates(c)?
            .into_iter()
            .map(|x| x.choice)
            .filter(|x| x.loss <= c.max_loss)
            .min_by(|a, b| a.latency.total_cmp(&b.latency))
            .ok_or_else(|| Error::NoPrediction {
                model: self.name(),
                workload: format!("loss limit {}", c.max_loss),
                reason: "no split point meets the accuracy-loss limit".into(),
            })
    }
}
