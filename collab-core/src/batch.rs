//! Batch scheduling for the shared-model server (SPEC §2): the [`BatchPolicy`] trait, the
//! queue snapshot it decides on, and the response every request gets.
//!
//! # Positions
//!
//! A model has `L` blocks. A request's `entry` is its split point `k` in `0..=L`: the device
//! already ran the embedding and blocks `0..k` (0-based), the server runs blocks `k..L` and then
//! the head. `entry == 0` is server-only (the payload is the raw input and the server also runs
//! the embedding); `entry == L` leaves only the head to the server.
//!
//! The server worker holds ONE complete model and one FIFO queue per entry, so the queue index
//! *is* the entry. A *pass* of the worker visits the positions `p = start..=L` in order, where
//! `p < L` means "run block `p`" and `p == L` means "run the head". Before running position `p`
//! the worker asks the policy how many requests from the front of queue `p` join the running
//! batch ([`BatchPolicy::admit`]); requests that entered at different blocks therefore share
//! the later blocks' batched compute. After the head every request of the batch is answered
//! and the pass ends; the next pass begins where [`BatchPolicy::start`] says.
//!
//! The worker that drives a policy lives in `collab-policies` (`batch::Worker`); it also
//! answers requests whose deadline can no longer be met with [`Outcome::DeadlineMissed`]
//! before the policy sees the queues, so a policy only decides *who runs*, never who expires.

use std::collections::VecDeque;
use std::fmt::Debug;

use serde::{Deserialize, Serialize};

/// What a policy may know about one queued request.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Queued {
    /// The request's id (unique among the requests a worker holds).
    pub id: u64,
    /// When it arrived at the server, in seconds on the worker's clock.
    pub arrival: f64,
    /// When its answer is due, in seconds on the same clock.
    pub deadline: f64,
}

/// A read-only snapshot of the worker's queues: for each position `p` in `0..=L`, the requests
/// waiting to enter at `p`, oldest first (FIFO).
///
/// Out-of-range positions read as empty queues.
#[derive(Clone, Copy, Debug)]
pub struct QueueView<'a> {
    queues: &'a [VecDeque<Queued>],
}

impl<'a> QueueView<'a> {
    /// A view of `queues`, one per position `0..=L` (so `queues.len() == L + 1`).
    pub fn new(queues: &'a [VecDeque<Queued>]) -> Self {
        Self { queues }
    }

    /// The number of positions, `L + 1` (blocks plus the head).
    pub fn positions(&self) -> usize {
        self.queues.len()
    }

    /// The number of blocks `L` (0 for a view without positions).
    pub fn layers(&self) -> usize {
        self.queues.len().saturating_sub(1)
    }

    /// Requests queued at `position` (0 when out of range).
    pub fn len(&self, position: usize) -> usize {
        self.queues.get(position).map_or(0, VecDeque::len)
    }

    /// Queue lengths, indexed by position.
    pub fn lens(&self) -> Vec<usize> {
        self.queues.iter().map(VecDeque::len).collect()
    }

    /// Requests queued in all queues together.
    pub fn total(&self) -> usize {
        self.queues.iter().map(VecDeque::len).sum()
    }

    /// Whether every queue is empty.
    pub fn is_empty(&self) -> bool {
        self.queues.iter().all(VecDeque::is_empty)
    }

    /// The requests queued at `position`, oldest first (none when out of range).
    pub fn iter(&self, position: usize) -> impl Iterator<Item = &'a Queued> + 'a {
        self.queues.get(position).into_iter().flatten()
    }

    /// The oldest request queued at `position`: the next one [`BatchPolicy::admit`] would take.
    pub fn front(&self, position: usize) -> Option<&'a Queued> {
        self.queues.get(position).and_then(VecDeque::front)
    }

    /// The positions whose queue is not empty, in increasing order.
    pub fn non_empty(&self) -> impl Iterator<Item = usize> + 'a {
        self.queues
            .iter()
            .enumerate()
            .filter(|(_, q)| !q.is_empty())
            .map(|(p, _)| p)
    }
}

/// Which queued requests run next, and at which block they join the running batch (SPEC §2).
///
/// # Contract
///
/// The worker calls [`start`](Self::start) when no batch is running and, for every position
/// `p` of the pass (`start..=L`, in order), [`admit`](Self::admit) before running `p`. A policy:
/// - never makes the running batch exceed [`budget`](Self::budget): `admit` returns at most
///   `budget - running`;
/// - only takes what is queued: `start` returns a position whose queue is non-empty, and
///   `admit` returns at most `queues.len(position)`;
/// - takes from the FRONT of a queue only (the worker pops that many), so each queue is served
///   in arrival order.
///
/// The worker clamps anything outside these bounds and counts it as a policy violation (it
/// never panics on a policy's answer); the conformance suite in `collab-policies` requires zero
/// violations. Requests whose deadline can no longer be met are removed (answered
/// [`Outcome::DeadlineMissed`]) before the policy is asked, so the views it sees hold only
/// requests that can still make it.
///
/// Policies are plain synchronous state machines: no clock of their own (`now` is passed in, in
/// seconds on the worker's clock), no I/O, so they run the same under a real server and a
/// discrete-event simulator.
///
/// A policy that always serves the longest queue, asked about a snapshot of the queues:
///
/// ```
/// use std::collections::VecDeque;
///
/// use collab_core::batch::{BatchPolicy, QueueView, Queued};
///
/// #[derive(Debug)]
/// struct LongestQueue {
///     budget: usize,
/// }
///
/// impl BatchPolicy for LongestQueue {
///     fn name(&self) -> String {
///         format!("longest-queue(B={})", self.budget)
///     }
///     fn budget(&self) -> usize {
///         self.budget
///     }
///     fn start(&mut self, q: &QueueView<'_>, _now: f64) -> Option<usize> {
///         q.non_empty().max_by_key(|&p| q.len(p))
///     }
///     fn admit(&mut self, p: usize, running: usize, q: &QueueView<'_>, _now: f64) -> usize {
///         q.len(p).min(self.budget - running)
///     }
/// }
///
/// let request = |id| Queued { id, arrival: 0.0, deadline: 1.0 };
/// // Two blocks and the head: one request waits at block 0, three at block 1.
/// let queues = vec![
///     VecDeque::from([request(0)]),
///     VecDeque::from([request(1), request(2), request(3)]),
///     VecDeque::new(),
/// ];
/// let view = QueueView::new(&queues);
/// let mut policy = LongestQueue { budget: 2 };
/// assert_eq!(policy.start(&view, 0.0), Some(1));
/// assert_eq!(policy.admit(1, 0, &view, 0.0), 2, "no more than the budget");
/// ```
pub trait BatchPolicy: Debug + Send {
    /// A short name for reports and error messages.
    fn name(&self) -> String;

    /// The budget batch size `B >= 1`: the running batch never holds more requests.
    fn budget(&self) -> usize;

    /// Whether the policy serves requests entering at `entry` on a model of `layers` blocks
    /// (`entry <= layers` is checked by the worker before asking). The worker rejects the
    /// others at once with [`Outcome::Invalid`] rather than hold requests that would never
    /// start. Default: every entry.
    fn accepts(&self, entry: usize, layers: usize) -> bool {
        let _ = (entry, layers);
        true
    }

    /// The position at which a new pass begins, asked when nothing is running; `None` stays
    /// idle until the next step. Must name a position whose queue is non-empty.
    fn start(&mut self, queues: &QueueView<'_>, now: f64) -> Option<usize>;

    /// How many requests from the front of queue `position` join the running batch (which holds
    /// `running` requests) before `position` runs. At most `min(queues.len(position),
    /// budget - running)`. Returning 0 at the start position with nothing running ends the
    /// pass there (the worker skips positions while the batch is empty).
    fn admit(&mut self, position: usize, running: usize, queues: &QueueView<'_>, now: f64)
    -> usize;
}

impl<P: BatchPolicy + ?Sized> BatchPolicy for Box<P> {
    fn name(&self) -> String {
        (**self).name()
    }

    fn budget(&self) -> usize {
        (**self).budget()
    }

    fn accepts(&self, entry: usize, layers: usize) -> bool {
        (**self).accepts(entry, layers)
    }

    fn start(&mut self, queues: &QueueView<'_>, now: f64) -> Option<usize> {
        (**self).start(queues, now)
    }

    fn admit(
        &mut self,
        position: usize,
        running: usize,
        queues: &QueueView<'_>,
        now: f64,
    ) -> usize {
        (**self).admit(position, running, queues, now)
    }
}

/// What a deployment names to get a [`BatchPolicy`]: a serde value registered with `typetag`,
/// so that a pipeline config names the built-ins and a user's own policy the same way
/// (`[batch] kind = "shared" budget = 8`, or `kind = "my-edf"` once the user's crate that
/// registers `my-edf` is linked in).
///
/// The server builds a fresh policy from it at start and again after a fault (a panicking
/// step), so `build` must be repeatable: the same config gives an equal policy every time.
///
/// ```
/// use collab_core::batch::{BatchPolicy, BatchPolicyConfig, QueueView};
/// use serde::{Deserialize, Serialize};
///
/// /// Runs the oldest queue's requests alone, one at a time.
/// #[derive(Debug)]
/// struct OneAtATime;
///
/// impl BatchPolicy for OneAtATime {
///     fn name(&self) -> String { "one-at-a-time".into() }
///     fn budget(&self) -> usize { 1 }
///     fn start(&mut self, q: &QueueView<'_>, _now: f64) -> Option<usize> {
///         q.non_empty().next()
///     }
///     fn admit(&mut self, p: usize, running: usize, q: &QueueView<'_>, _now: f64) -> usize {
///         usize::from(running == 0 && q.len(p) > 0)
///     }
/// }
///
/// #[derive(Debug, Serialize, Deserialize)]
/// struct OneAtATimeConfig {}
///
/// #[typetag::serde(name = "one-at-a-time")]
/// impl BatchPolicyConfig for OneAtATimeConfig {
///     fn build(&self) -> collab_core::Result<Box<dyn BatchPolicy>> {
///         Ok(Box::new(OneAtATime))
///     }
/// }
///
/// let config: Box<dyn BatchPolicyConfig> = serde_json::from_str(r#"{"kind":"one-at-a-time"}"#)?;
/// assert_eq!(config.build()?.budget(), 1);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[typetag::serde(tag = "kind")]
pub trait BatchPolicyConfig: Debug + Send + Sync {
    /// A new policy as configured.
    ///
    /// # Errors
    /// [`crate::Error::Config`] naming the bad field (a zero budget, a share outside
    /// `0..=1`, ...).
    fn build(&self) -> crate::Result<Box<dyn BatchPolicy>>;
}

/// How a request ended.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Outcome<O> {
    /// Computed: the head's output for this request.
    Done(O),
    /// Not computed: its deadline could no longer be met when the worker looked (SPEC §2: an
    /// explicit deadline error rather than late compute).
    DeadlineMissed,
    /// Rejected on arrival: the reason (entry out of range or not served by the policy,
    /// duplicate id, bad deadline).
    Invalid(String),
    /// The executor failed while the request was in the running batch: its error message.
    Failed(String),
}

/// The answer to one request; every request a worker accepts gets exactly one.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Response<O> {
    /// The request's id.
    pub id: u64,
    /// Its entry position (split point).
    pub entry: usize,
    /// When it arrived.
    pub arrival: f64,
    /// When it was due.
    pub deadline: f64,
    /// When it was answered (worker's clock; see the worker for how compute results are
    /// stamped).
    pub finished: f64,
    /// How it ended.
    pub outcome: Outcome<O>,
}

impl<O> Response<O> {
    /// Whether the request was computed and answered no later than its deadline.
    pub fn met_deadline(&self) -> bool {
        matches!(self.outcome, Outcome::Done(_)) && self.finished <= self.deadline
    }

    /// Whether the request was computed (whatever the time).
    pub fn is_done(&self) -> bool {
        matches!(self.outcome, Outcome::Done(_))
    }

    /// Seconds from arrival to answer.
    pub fn latency(&self) -> f64 {
        self.finished - self.arrival
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn q(id: u64) -> Queued {
        Queued {
            id,
            arrival: 0.0,
            deadline: 1.0,
        }
    }

    #[test]
    fn view_reads_queues_and_out_of_range_as_empty() {
        let queues = vec![
            VecDeque::from([q(1), q(2)]),
            VecDeque::new(),
            VecDeque::from([q(3)]),
        ];
        let view = QueueView::new(&queues);
        assert_eq!(view.positions(), 3);
        assert_eq!(view.layers(), 2);
        assert_eq!(view.lens(), vec![2, 0, 1]);
        assert_eq!(view.len(7), 0);
        assert_eq!(view.total(), 3);
        assert!(!view.is_empty());
        assert_eq!(view.front(0).map(|r| r.id), Some(1));
        assert_eq!(view.iter(0).map(|r| r.id).collect::<Vec<_>>(), vec![1, 2]);
        assert_eq!(view.iter(9).count(), 0);
        assert_eq!(view.non_empty().collect::<Vec<_>>(), vec![0, 2]);
    }

    #[test]
    fn met_deadline_needs_done_in_time() {
        let mut r = Response {
            id: 1,
            entry: 0,
            arrival: 0.0,
            deadline: 1.0,
            finished: 0.5,
            outcome: Outcome::Done(()),
        };
        assert!(r.met_deadline());
        r.finished = 1.5;
        assert!(!r.met_deadline());
        r.finished = 0.5;
        r.outcome = Outcome::DeadlineMissed;
        assert!(!r.met_deadline());
    }
}
