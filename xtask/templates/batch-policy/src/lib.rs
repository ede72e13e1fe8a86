//! {{name}}: a batch policy for the collab shared-model server.
//!
//! The policy decides, block by block, which queued requests join the running batch
//! ([`BatchPolicy`]); its config ([`EdfConfig`]) is registered with `typetag` under the kind
//! `{{name}}`, so a pipeline file names it:
//!
//! ```toml
//! [server.batch]
//! kind = "{{name}}"
//! budget = 8
//! ```
//!
//! Change [`EarliestDeadlineFirst::start`] and [`EarliestDeadlineFirst::admit`] to your idea;
//! `cargo test` holds it to collab's conformance suite (tests/conformance.rs) and compares it
//! with the shared-model and per-split baselines (tests/compare.rs).

use collab_core::batch::{BatchPolicy, BatchPolicyConfig, QueueView};
use collab_core::{Error, Result};
use serde::{Deserialize, Serialize};

/// Starts each pass at the queue whose oldest request is due first, and admits as many
/// requests as fit in the budget at every block.
#[derive(Debug)]
pub struct EarliestDeadlineFirst {
    budget: usize,
}

impl EarliestDeadlineFirst {
    /// A policy with budget batch size `budget` (at least 1).
    pub fn new(budget: usize) -> Self {
        EarliestDeadlineFirst {
            budget: budget.max(1),
        }
    }
}

impl BatchPolicy for EarliestDeadlineFirst {
    fn name(&self) -> String {
        format!("{{name}}(B={})", self.budget)
    }

    fn budget(&self) -> usize {
        self.budget
    }

    fn start(&mut self, queues: &QueueView<'_>, _now: f64) -> Option<usize> {
        queues
            .non_empty()
            .filter_map(|p| queues.front(p).map(|r| (p, r.deadline)))
            .min_by(|a, b| a.1.total_cmp(&b.1))
            .map(|(p, _)| p)
    }

    fn admit(
        &mut self,
        position: usize,
        running: usize,
        queues: &QueueView<'_>,
        _now: f64,
    ) -> usize {
        queues
            .len(position)
            .min(self.budget.saturating_sub(running))
    }
}

/// The policy's config: what a pipeline file's `[server.batch]` holds for kind `{{name}}`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EdfConfig {
    /// The budget batch size.
    pub budget: usize,
}

#[typetag::serde(name = "{{name}}")]
impl BatchPolicyConfig for EdfConfig {
    fn build(&self) -> Result<Box<dyn BatchPolicy>> {
        if self.budget == 0 {
            return Err(Error::Config(
                "{{name}}: budget must be at least 1".into(),
            ));
        }
        Ok(Box::new(EarliestDeadlineFirst::new(self.budget)))
    }
}

/// Keeps this crate's `typetag` registrations in a program that names its kinds only in a
/// config file: call it once at start-up (a linker drops a library nothing refers to, and its
/// registrations with it).
pub fn register() {}
