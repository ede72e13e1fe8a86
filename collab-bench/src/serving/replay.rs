//! An executor that computes nothing, for replaying a cost profile.

use collab_policies::batch::Executor;

/// An [`Executor`] of `layers` blocks that computes nothing: the batch is its size, each
/// request's payload and output are `()`. With a [`ProfileClock`](super::ProfileClock) it
/// lets a simulation run a policy against a profile of hardware that is not here.
#[derive(Clone, Copy, Debug)]
pub struct ReplayExecutor {
    layers: usize,
}

impl ReplayExecutor {
    /// A model of `layers` blocks.
    pub fn new(layers: usize) -> Self {
        ReplayExecutor { layers }
    }
}

impl Executor for ReplayExecutor {
    type Payload = ();
    type Batch = usize;
    type Output = ();

    fn layers(&self) -> usize {
        self.layers
    }

    fn join(
        &mut self,
        batch: Option<usize>,
        items: Vec<()>,
        _position: usize,
    ) -> collab_core::Result<usize> {
        Ok(batch.unwrap_or(0) + items.len())
    }

    fn run_block(&mut self, batch: usize, _block: usize) -> collab_core::Result<usize> {
        Ok(batch)
    }

    fn finish(&mut self, batch: usize) -> collab_core::Result<Vec<()>> {
        Ok(vec![(); batch])
    }
}
