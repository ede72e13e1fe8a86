//! [`Fallback`]: a second strategy asked when the first finds nothing that fits.

use collab_core::split::{Conditions, SplitChoice, SplitStrategy};
use collab_core::{Error, Result};

/// Asks `primary`; when it answers [`Error::NoPrediction`] (no configuration meets the
/// constraints), asks `secondary` instead. Other errors (bad conditions, a broken cost model)
/// pass through: a fallback is for a tight deadline, not for a fault.
///
/// The device's default is `Fallback::new(selector, FastestWithinLoss::new(selector))`: the
/// SPEC §1 rule, and when no split meets the deadline, the fastest one within the loss limit
/// (the server then answers in time or says the deadline was missed).
#[derive(Debug)]
pub struct Fallback<P, S> {
    primary: P,
    secondary: S,
}

impl<P: SplitStrategy, S: SplitStrategy> Fallback<P, S> {
    /// `primary`, falling back on `secondary`.
    pub fn new(primary: P, secondary: S) -> Self {
        Self { primary, secondary }
    }
}

impl<P: SplitStrategy, S: SplitStrategy> SplitStrategy for Fallback<P, S> {
    fn name(&self) -> String {
        format!("{} else {}", self.primary.name(), self.secondary.name())
    }

    fn choose(&self, c: &Conditions) -> Result<SplitChoice> {
        match self.primary.choose(c) {
            Err(Error::NoPrediction { .. }) => self.secondary.choose(c),
            other => other,
        }
    }
}
