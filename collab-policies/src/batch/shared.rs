//! The shared-model policy (SPEC §2): requests that entered at different blocks join one
//! running batch, and the queues take turns as the prioritised one.
//!
//! At the start of each pass the policy picks the prioritised queue (round robin over the
//! positions whose queue is non-empty) and splits the budget `B` into *shares* ([`shares`]):
//! the prioritised queue may take up to `ceil(major_share * B)`, the other non-empty queues
//! share what is left in proportion to their lengths, and whatever a queue cannot use (it is
//! shorter than its share) goes to the others. The pass begins at the earliest position with a
//! positive share and picks up the later queues on its way; at each position the queue takes
//! as many requests as fit without touching the shares reserved for the positions still ahead,
//! so a queue may use capacity that earlier queues left, never what later ones were promised.

use collab_core::batch::{BatchPolicy, QueueView};

use collab_core::{Error, Result};

use super::check_budget;

/// The default `major_share`: the prioritised queue may fill 75% of the budget.
pub const DEFAULT_MAJOR_SHARE: f64 = 0.75;

/// The shared-model batch policy of SPEC §2 (see the module docs).
#[derive(Clone, Debug)]
pub struct SharedModel {
    budget: usize,
    major_share: f64,
    /// The position the round robin looks at first for the next prioritised queue.
    cursor: usize,
    /// The prioritised queue of the pass under way.
    priority: Option<usize>,
    /// Per position, the requests reserved for it in the pass under way.
    shares: Vec<usize>,
}

impl SharedModel {
    /// A policy with budget batch size `budget` and the default major share
    /// ([`DEFAULT_MAJOR_SHARE`]).
    ///
    /// # Errors
    /// [`Error::Config`] if `budget == 0`.
    pub fn new(budget: usize) -> Result<Self> {
        check_budget("SharedModel", budget)?;
        Ok(Self {
            budget,
            major_share: DEFAULT_MAJOR_SHARE,
            cursor: 0,
            priority: None,
            shares: Vec::new(),
        })
    }

    /// Sets the fraction of the budget the prioritised queue may fill.
    ///
    /// # Errors
    /// [`Error::Config`] unless `0 < major_share <= 1`.
    pub fn with_major_share(mut self, major_share: f64) -> Result<Self> {
        if !(major_share > 0.0 && major_share <= 1.0) {
            return Err(Error::Config(format!(
                "SharedModel: major_share must be in (0, 1], got {major_share}"
            )));
        }
        self.major_share = major_share;
        Ok(self)
    }

    /// The fraction of the budget the prioritised queue may fill.
    pub fn major_share(&self) -> f64 {
        self.major_share
    }

    /// The prioritised queue of the pass under way (or of the last one).
    pub fn priority(&self) -> Option<usize> {
        self.priority
    }

    /// The shares computed at the start of the pass under way (or of the last one), indexed
    /// by position.
    pub fn current_shares(&self) -> &[usize] {
        &self.shares
    }
}

/// Splits `budget` among queues of lengths `lens` (indexed by position) with `priority`
/// prioritised (SPEC §2):
/// 1. the prioritised queue gets `min(ceil(major_share * budget), len)` (at least 1 when it is
///    non-empty);
/// 2. the rest goes to the other non-empty queues in proportion to their lengths, rounded by
///    largest remainder (ties: the longer queue, then the earlier position), each capped by
///    its length; capacity a capped queue cannot use is split again among the others;
/// 3. what is still left goes to the prioritised queue, capped by its length.
///
/// The shares sum to at most `budget` and each is at most its queue's length; they sum to
/// `min(budget, total queued)` exactly.
pub fn shares(lens: &[usize], priority: usize, budget: usize, major_share: f64) -> Vec<usize> {
    let mut shares = vec![0; lens.len()];
    let prio_len = lens.get(priority).copied().unwrap_or(0);
    let major = ((major_share * budget as f64).ceil() as usize).clamp(1, budget.max(1));
    if let Some(s) = shares.get_mut(priority) {
        *s = major.min(prio_len).min(budget);
    }
    let mut rest = budget - shares.get(priority).copied().unwrap_or(0);
    let others: Vec<usize> = (0..lens.len())
        .filter(|&q| q != priority && lens[q] > 0)
        .collect();
    while rest > 0 {
        let open: Vec<usize> = others
            .iter()
            .copied()
            .filter(|&q| shares[q] < lens[q])
            .collect();
        if open.is_empty() {
            break;
        }
        let total: u128 = open.iter().map(|&q| lens[q] as u128).sum();
        let mut left = rest;
        let mut remainders = Vec::with_capacity(open.len());
        for &q in &open {
            let num = rest as u128 * lens[q] as u128;
            let whole = (num / total) as usize;
            let add = whole.min(lens[q] - shares[q]);
            shares[q] += add;
            left -= add;
            remainders.push((num % total, q));
        }
        // Largest remainder first; ties: longer queue, then earlier position.
        remainders.sort_by(|a, b| {
            b.0.cmp(&a.0)
                .then(lens[b.1].cmp(&lens[a.1]))
                .then(a.1.cmp(&b.1))
        });
        for (_, q) in remainders {
            if left == 0 {
                break;
            }
            if shares[q] < lens[q] {
                shares[q] += 1;
                left -= 1;
            }
        }
        if left == rest {
            break; // no progress (cannot happen while `open` is non-empty)
        }
        rest = left;
    }
    if let Some(s) = shares.get_mut(priority) {
        *s += rest.min(prio_len - *s);
    }
    shares
}

impl BatchPolicy for SharedModel {
    fn name(&self) -> String {
        format!(
            "shared-model(B={}, major={})",
            self.budget, self.major_share
        )
    }

    fn budget(&self) -> usize {
        self.budget
    }

    /// Picks the next prioritised queue (round robin over non-empty queues), computes the
    /// shares, and begins at the earliest position with a positive share.
    fn start(&mut self, queues: &QueueView<'_>, _now: f64) -> Option<usize> {
        let n = queues.positions();
        if n == 0 {
            return None;
        }
        let from = self.cursor % n;
        let priority = (from..n).chain(0..from).find(|&q| queues.len(q) > 0)?;
        self.cursor = (priority + 1) % n;
        self.priority = Some(priority);
        self.shares = shares(&queues.lens(), priority, self.budget, self.major_share);
        self.shares.iter().position(|&s| s > 0)
    }

    /// Admits as many as fit in `budget - running` minus what is reserved for the positions
    /// still ahead in this pass (each later share capped by its queue's current length).
    fn admit(
        &mut self,
        position: usize,
        running: usize,
        queues: &QueueView<'_>,
        _now: f64,
    ) -> usize {
        let reserved: usize = self
            .shares
            .iter()
            .enumerate()
            .skip(position + 1)
            .map(|(q, &s)| s.min(queues.len(q)))
            .sum();
        let free = self.budget.saturating_sub(running).saturating_sub(reserved);
        queues.len(position).min(free)
    }
}

#[cfg(test)]
#[path = "shared_tests.rs"]
mod tests;
