//! A mock [`Executor`] that checks how the worker drives it and logs every call.

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::batch::Executor;

/// One call the worker made, as the [`MockExecutor`] saw it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Call {
    /// `join` at `position`: the payloads (request ids) joined and the batch size after.
    Join {
        /// The position joined at.
        position: usize,
        /// The joined payloads, in order.
        ids: Vec<u64>,
        /// The batch size after joining.
        batch: usize,
    },
    /// `run_block(block)` on a batch of `batch`.
    Block {
        /// The block run.
        block: usize,
        /// The batch size.
        batch: usize,
    },
    /// `finish`: the batch's ids in batch order (the outputs returned).
    Head {
        /// The batch, in order.
        ids: Vec<u64>,
    },
    /// The call `op` failed (injected); `ids` were in the batch (including those joining).
    Failed {
        /// The failing operation.
        op: &'static str,
        /// Every request in the batch.
        ids: Vec<u64>,
    },
}

/// The mock's running batch: request ids in batch order and the next position to run.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MockBatch {
    /// Request ids (payloads), in batch order.
    pub ids: Vec<u64>,
    /// The next position this batch expects to run.
    pub next: usize,
}

/// An [`Executor`] whose payload and output are the request id: `finish` returns the batch's
/// ids in batch order. It checks the worker's side of the [`Executor`] contract (positions in
/// order, joins where the batch is, non-empty joins, batches within `budget`), records any
/// breach in [`errors`](Self::errors), logs every call, and fails a call with probability
/// `fail_rate` (seeded) to exercise the worker's error path.
#[derive(Debug)]
pub struct MockExecutor {
    layers: usize,
    budget: usize,
    fail_rate: f64,
    rng: StdRng,
    calls: Vec<Call>,
    errors: Vec<String>,
}

impl MockExecutor {
    /// A mock model of `layers` blocks that flags batches over `budget`; never fails.
    pub fn new(layers: usize, budget: usize) -> Self {
        Self {
            layers,
            budget,
            fail_rate: 0.0,
            rng: StdRng::seed_from_u64(0),
            calls: Vec::new(),
            errors: Vec::new(),
        }
    }

    /// Fails each call with probability `fail_rate`, drawn from `seed`.
    pub fn with_failures(mut self, fail_rate: f64, seed: u64) -> Self {
        self.fail_rate = fail_rate;
        self.rng = StdRng::seed_from_u64(seed);
        self
    }

    /// The calls logged since the last [`take_calls`](Self::take_calls).
    pub fn calls(&self) -> &[Call] {
        &self.calls
    }

    /// Takes the calls logged so far.
    pub fn take_calls(&mut self) -> Vec<Call> {
        std::mem::take(&mut self.calls)
    }

    /// Breaches of the executor contract seen so far.
    pub fn errors(&self) -> &[String] {
        &self.errors
    }

    fn maybe_fail(&mut self, op: &'static str, ids: &[u64]) -> collab_core::Result<()> {
        if self.fail_rate > 0.0 && self.rng.random::<f64>() < self.fail_rate {
            self.calls.push(Call::Failed {
                op,
                ids: ids.to_vec(),
            });
            return Err(collab_core::Error::Backend {
                backend: "mock".into(),
                op,
                message: "injected failure".into(),
            });
        }
        Ok(())
    }
}

impl Executor for MockExecutor {
    type Payload = u64;
    type Batch = MockBatch;
    type Output = u64;

    fn layers(&self) -> usize {
        self.layers
    }

    fn join(
        &mut self,
        batch: Option<MockBatch>,
        items: Vec<u64>,
        position: usize,
    ) -> collab_core::Result<MockBatch> {
        if position > self.layers {
            self.errors
                .push(format!("join at position {position} > L = {}", self.layers));
        }
        if items.is_empty() {
            self.errors
                .push(format!("join at position {position} with no items"));
        }
        let mut batch = match batch {
            None => MockBatch {
                ids: Vec::new(),
                next: position,
            },
            Some(b) => {
                if b.next != position {
                    self.errors.push(format!(
                        "join at position {position} but the batch is at {}",
                        b.next
                    ));
                }
                b
            }
        };
        batch.ids.extend(&items);
        if batch.ids.len() > self.budget {
            self.errors.push(format!(
                "batch of {} at position {position} exceeds the budget {}",
                batch.ids.len(),
                self.budget
            ));
        }
        self.calls.push(Call::Join {
            position,
            ids: items,
            batch: batch.ids.len(),
        });
        self.maybe_fail("join", &batch.ids)?;
        Ok(batch)
    }

    fn run_block(&mut self, mut batch: MockBatch, block: usize) -> collab_core::Result<MockBatch> {
        if block != batch.next || block >= self.layers {
            self.errors.push(format!(
                "run_block({block}) on a batch at {} (L = {})",
                batch.next, self.layers
            ));
        }
        self.calls.push(Call::Block {
            block,
            batch: batch.ids.len(),
        });
        self.maybe_fail("run_block", &batch.ids)?;
        batch.next = block + 1;
        Ok(batch)
    }

    fn finish(&mut self, batch: MockBatch) -> collab_core::Result<Vec<u64>> {
        if batch.next != self.layers {
            self.errors.push(format!(
                "finish on a batch at {} (L = {})",
                batch.next, self.layers
            ));
        }
        self.calls.push(Call::Head {
            ids: batch.ids.clone(),
        });
        self.maybe_fail("finish", &batch.ids)?;
        Ok(batch.ids)
    }
}
