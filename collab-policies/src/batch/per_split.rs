//! The Graft-style baseline (SPEC §2, evaluation): one queue per split point, each batched and
//! run on its own; requests that entered at different blocks never share a batch.

use collab_core::batch::{BatchPolicy, QueueView};

use collab_core::Result;

use super::check_budget;

/// Per-split-point batching: a pass serves one queue only.
///
/// [`start`](BatchPolicy::start) picks the non-empty queue whose oldest request is due first
/// (ties: round robin from the position after the last one served); [`admit`](BatchPolicy::admit)
/// takes up to the budget from that queue at the start position and nothing at the later ones.
#[derive(Clone, Debug)]
pub struct PerSplit {
    budget: usize,
    /// Where the round robin among equally urgent queues looks first.
    cursor: usize,
    /// The position the pass under way began at.
    start: Option<usize>,
}

impl PerSplit {
    /// A policy with budget batch size `budget`.
    ///
    /// # Errors
    /// [`collab_core::Error::Config`] if `budget == 0`.
    pub fn new(budget: usize) -> Result<Self> {
        check_budget("PerSplit", budget)?;
        Ok(Self {
            budget,
            cursor: 0,
            start: None,
        })
    }
}

impl BatchPolicy for PerSplit {
    fn name(&self) -> String {
        format!("per-split(B={})", self.budget)
    }

    fn budget(&self) -> usize {
        self.budget
    }

    fn start(&mut self, queues: &QueueView<'_>, _now: f64) -> Option<usize> {
        let n = queues.positions();
        if n == 0 {
            return None;
        }
        let from = self.cursor % n;
        let mut best: Option<(usize, f64)> = None;
        // Visiting in round-robin order and keeping the first strict minimum breaks ties
        // in favour of the queue nearest after the cursor.
        for q in (from..n).chain(0..from) {
            if let Some(front) = queues.front(q)
                && best.is_none_or(|(_, d)| front.deadline.total_cmp(&d).is_lt())
            {
                best = Some((q, front.deadline));
            }
        }
        let (q, _) = best?;
        self.cursor = (q + 1) % n;
        self.start = Some(q);
        Some(q)
    }

    fn admit(
        &mut self,
        position: usize,
        running: usize,
        queues: &QueueView<'_>,
        _now: f64,
    ) -> usize {
        if self.start == Some(position) {
            queues
                .len(position)
                .min(self.budget.saturating_sub(running))
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

    fn q(id: u64, deadline: f64) -> Queued {
        Queued {
            id,
            arrival: 0.0,
            deadline,
        }
    }

    #[test]
    fn earliest_deadline_first_then_round_robin_on_ties() {
        let mut p = PerSplit::new(4).expect("budget");
        let queues = vec![
            VecDeque::from([q(1, 5.0)]),
            VecDeque::from([q(2, 3.0)]),
            VecDeque::new(),
            VecDeque::from([q(3, 3.0)]),
        ];
        let view = QueueView::new(&queues);
        assert_eq!(p.start(&view, 0.0), Some(1));
        assert_eq!(p.start(&view, 0.0), Some(3));
        assert_eq!(p.start(&view, 0.0), Some(1));
        assert_eq!(p.admit(1, 0, &view, 0.0), 1);
        assert_eq!(p.admit(3, 1, &view, 0.0), 0);
    }

    #[test]
    fn admits_up_to_budget_at_start_only() {
        let mut p = PerSplit::new(2).expect("budget");
        let queues = vec![
            VecDeque::from([q(1, 1.0), q(2, 1.0), q(3, 1.0)]),
            VecDeque::new(),
        ];
        let view = QueueView::new(&queues);
        assert_eq!(p.start(&view, 0.0), Some(0));
        assert_eq!(p.admit(0, 0, &view, 0.0), 2);
        assert_eq!(p.admit(1, 2, &view, 0.0), 0);
        assert!(PerSplit::new(0).is_err());
        let empty: Vec<VecDeque<Queued>> = vec![VecDeque::new(); 3];
        assert_eq!(p.start(&QueueView::new(&empty), 0.0), None);
    }
}
