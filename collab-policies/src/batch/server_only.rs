//! The server-only baseline (SPEC §2, evaluation): devices send the raw input and the server
//! runs the whole model, batched.

use collab_core::batch::{BatchPolicy, QueueView};

use collab_core::Result;

use super::check_budget;

/// Server-only inference: every pass begins at position 0 (the embedding and block 0) with up
/// to the budget from queue 0, and nothing joins later.
///
/// It accepts requests entering at 0 only ([`BatchPolicy::accepts`]); the worker rejects the
/// others at once rather than hold requests that would never start.
#[derive(Clone, Debug)]
pub struct ServerOnly {
    budget: usize,
}

impl ServerOnly {
    /// A policy with budget batch size `budget`.
    ///
    /// # Errors
    /// [`collab_core::Error::Config`] if `budget == 0`.
    pub fn new(budget: usize) -> Result<Self> {
        check_budget("ServerOnly", budget)?;
        Ok(Self { budget })
    }
}

impl BatchPolicy for ServerOnly {
    fn name(&self) -> String {
        format!("server-only(B={})", self.budget)
    }

    fn budget(&self) -> usize {
        self.budget
    }

    fn accepts(&self, entry: usize, _layers: usize) -> bool {
        entry == 0
    }

    fn start(&mut self, queues: &QueueView<'_>, _now: f64) -> Option<usize> {
        (queues.len(0) > 0).then_some(0)
    }

    fn admit(
        &mut self,
        position: usize,
        running: usize,
        queues: &QueueView<'_>,
        _now: f64,
    ) -> usize {
        if position == 0 {
            queues.len(0).min(self.budget.saturating_sub(running))
        } else {
            0
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::VecDeque;

    use collab_core::batch::Queued;

    use super::*;

    #[test]
    fn starts_at_zero_only_and_accepts_entry_zero_only() {
        let mut p = ServerOnly::new(3).expect("budget");
        assert!(p.accepts(0, 12));
        assert!(!p.accepts(1, 12));
        let r = Queued {
            id: 1,
            arrival: 0.0,
            deadline: 1.0,
        };
        let queues = vec![VecDeque::from([r; 5]), VecDeque::new()];
        let view = QueueView::new(&queues);
        assert_eq!(p.start(&view, 0.0), Some(0));
        assert_eq!(p.admit(0, 0, &view, 0.0), 3);
        assert_eq!(p.admit(1, 3, &view, 0.0), 0);
        let idle = vec![VecDeque::new(), VecDeque::from([r])];
        assert_eq!(p.start(&QueueView::new(&idle), 0.0), None);
        assert!(ServerOnly::new(0).is_err());
    }
}
