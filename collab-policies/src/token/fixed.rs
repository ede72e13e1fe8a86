//! Fixed gamma allocation (SPEC §4, "Evaluation" baselines): every batch at one gamma:
//! fixed merging (gamma = -5..-20), fixed prompting (2, 4, 8) and the PetS-like shared backbone
//! with task heads (gamma = 0).

use collab_core::adaptive::{
    Allocation, Batch, Gamma, LoadInfo, TokenAllocator, TokenProfile, deadline_order,
};
use serde::{Deserialize, Serialize};

/// Runs every batch at `gamma`, in deadline order, and never skips.
///
/// When a batch is not runnable at `gamma` (a task of it has no prompts trained for that count,
/// or the profile does not know `gamma`), it runs at the nearest runnable gamma instead
/// ([`TokenProfile::nearest_runnable`]: the largest runnable below `gamma`, else the smallest
/// above); a batch runnable at no gamma is skipped. Batches run even when they will be late;
/// the reported expected utility counts only the on-time ones.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FixedGamma {
    /// The gamma every batch runs at.
    pub gamma: Gamma,
}

impl FixedGamma {
    /// Every batch at `gamma`.
    pub fn new(gamma: Gamma) -> Self {
        Self { gamma }
    }
}

impl TokenAllocator for FixedGamma {
    fn name(&self) -> String {
        format!("fixed({})", self.gamma)
    }

    fn allocate(
        &mut self,
        now: f64,
        batches: &[Batch],
        profile: &dyn TokenProfile,
        _load: &LoadInfo,
    ) -> Allocation {
        let order = deadline_order(batches);
        let choices: Vec<Option<Gamma>> = order
            .iter()
            .map(|&i| profile.nearest_runnable(&batches[i], self.gamma))
            .collect();
        Allocation::from_choices(now, batches, order, &choices, profile)
    }
}
