//! {{name}}: a collab deployment, a cloud server and a device assembled from one pipeline
//! file, with your own batch policy on the server.
//!
//! The binaries `server` and `device` are collab's own command lines; linking this crate into
//! them registers [`EdfConfig`] with `typetag`, so `pipeline.toml` can name `kind = "{{name}}"`
//! in `[server.batch]`. Backends are chosen per side in the file (`[server] backend`,
//! `[device] backend`). Run, in two terminals:
//!
//! ```text
//! cargo run --release --bin server -- --config pipeline.toml
//! cargo run --release --bin device -- --config pipeline.toml --images 20
//! ```

use collab_core::batch::{BatchPolicy, BatchPolicyConfig, QueueView};
use collab_core::{Error, Result};
use serde::{Deserialize, Serialize};

/// Starts each pass at the queue whose oldest request is due first, and admits as many
/// requests as fit in the budget at every block (an example to replace with your policy).
#[derive(Debug)]
pub struct EarliestDeadlineFirst {
    budget: usize,
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

/// The policy's config, kind `{{name}}` in `[server.batch]`.
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
        Ok(Box::new(EarliestDeadlineFirst {
            budget: self.budget,
        }))
    }
}

/// Keeps this crate's `typetag` registrations in a program that names its kinds only in a
/// config file: call it once at start-up (a linker drops a library nothing refers to, and its
/// registrations with it).
pub fn register() {}
