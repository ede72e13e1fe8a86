//! The split strategy a device runs unless told otherwise.

use std::sync::Arc;

use super::{Fallback, FastestWithinLoss, Hysteresis, SplitSelector};

/// The type of [`device_default`].
pub type DeviceDefault = Hysteresis<Fallback<Arc<SplitSelector>, FastestWithinLoss>>;

/// `selector`'s SPEC §1 rule; when no candidate meets the deadline, the fastest one within the
/// loss limit (the server then answers in time or says the deadline was missed); and a choice
/// kept until the link or the server's queue moves by 10%.
pub fn device_default(selector: Arc<SplitSelector>) -> DeviceDefault {
    Hysteresis::new(Fallback::new(
        selector.clone(),
        FastestWithinLoss::new(selector),
    ))
}
