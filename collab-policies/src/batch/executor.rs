//! The compute a [`Worker`] drives, and the estimate it expires requests by.

#[cfg(doc)]
use collab_core::batch::Outcome;

#[cfg(doc)]
use super::Worker;

/// The compute a [`Worker`] drives: one model, run position by position on a batch.
///
/// Contract: `join` is called once per position at which requests join (with at least one
/// item), `run_block` once per block of a pass in increasing order, `finish` once at the end
/// of the pass. After any error the worker drops the batch (it is not passed back) and answers
/// every request in it with [`Outcome::Failed`].
pub trait Executor {
    /// One request's input: the raw input for position 0, otherwise the activation entering
    /// block `entry`.
    type Payload;
    /// The running batch (typically the stacked hidden states).
    type Batch;
    /// One request's result from the head.
    type Output;

    /// The number of blocks `L`.
    fn layers(&self) -> usize;

    /// Starts (`batch == None`) or extends the running batch with `items` entering at
    /// `position`; at position 0 the items are raw inputs to embed first. The new requests are
    /// appended after the ones already in the batch.
    ///
    /// # Errors
    /// Whatever the compute reports (shapes that do not fit, backend failures).
    fn join(
        &mut self,
        batch: Option<Self::Batch>,
        items: Vec<Self::Payload>,
        position: usize,
    ) -> collab_core::Result<Self::Batch>;

    /// Runs block `block` (0-based, `< L`) on the batch.
    ///
    /// # Errors
    /// Whatever the compute reports.
    fn run_block(&mut self, batch: Self::Batch, block: usize) -> collab_core::Result<Self::Batch>;

    /// Runs the head: one output per request, in batch order.
    ///
    /// # Errors
    /// Whatever the compute reports.
    fn finish(&mut self, batch: Self::Batch) -> collab_core::Result<Vec<Self::Output>>;
}

/// `remaining(p, b)`: estimated seconds to finish a batch of `b` from position `p` (blocks
/// `p..L` plus the head). The worker answers a request queued at `p` with
/// [`Outcome::DeadlineMissed`] once `now + remaining(p, 1) > deadline`.
pub type Remaining = Box<dyn Fn(usize, usize) -> f64 + Send>;
