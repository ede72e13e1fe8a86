//! What one [`Worker::step`] reports, and the worker's counters.

use collab_core::batch::{Outcome, Response};

#[cfg(doc)]
use super::Worker;

/// What one [`Worker::step`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Work {
    /// Nothing was computed.
    Idle,
    /// Position `position` ran (block `position`, or the head when `position == L`) on a batch
    /// of `batch` requests (after joining). Also reported when the executor failed there.
    Ran {
        /// The position run.
        position: usize,
        /// The batch size it ran on.
        batch: usize,
    },
}

/// The result of one [`Worker::step`]: the responses to send and the work done, from which a
/// simulator advances its clock.
#[derive(Clone, Debug)]
pub struct Step<O> {
    /// Responses produced by this step: deadline misses first (stamped `now`), then the
    /// compute results (stamped `now` too; see [`Step::set_finished`]).
    pub responses: Vec<Response<O>>,
    /// Whether compute ran, where and on how many requests.
    pub work: Work,
}

impl<O> Step<O> {
    /// Stamps `finished = end` on the responses produced by compute ([`Outcome::Done`] and
    /// [`Outcome::Failed`]); call it with the time the step's compute ended.
    pub fn set_finished(&mut self, end: f64) {
        for r in &mut self.responses {
            if matches!(r.outcome, Outcome::Done(_) | Outcome::Failed(_)) {
                r.finished = end;
            }
        }
    }
}

/// Counters of a [`Worker`] since it was created.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Stats {
    /// Requests accepted into a queue by [`Worker::enqueue`].
    pub accepted: usize,
    /// Requests that joined a running batch.
    pub admitted: usize,
    /// Requests answered [`Outcome::Done`].
    pub done: usize,
    /// Requests answered [`Outcome::DeadlineMissed`].
    pub deadline_missed: usize,
    /// Requests rejected with [`Outcome::Invalid`].
    pub invalid: usize,
    /// Requests answered [`Outcome::Failed`].
    pub failed: usize,
    /// The largest running batch seen.
    pub max_batch: usize,
    /// Passes begun (batches formed).
    pub passes: usize,
    /// Policy answers outside the contract (clamped by the worker).
    pub policy_violations: usize,
}
