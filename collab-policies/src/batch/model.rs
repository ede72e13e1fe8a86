//! The real [`Executor`]: one complete [`Transformer`] on a backend, run block by block on the
//! running batch (SPEC §2: the worker holds ONE model, not one tail model per split point).

use std::sync::Arc;

use collab_core::model::{Hidden, Input, Transformer};
use collab_core::{Backend, Error, Result};

use super::executor::Executor;

/// What a request brings to the server.
#[derive(Clone, Debug)]
pub enum Payload<B: Backend> {
    /// The raw input of one request (entry 0: the server also embeds it).
    Input(Input<B>),
    /// The decoded hidden states of one request at its split point, `[1, tokens, d]`.
    Hidden(Hidden<B>),
}

/// Runs a shared model for the [`super::Worker`]: joins payloads into the running batch,
/// runs one block at a time, and answers each request with its head output row.
#[derive(Debug)]
pub struct ModelExecutor<B: Backend> {
    model: Arc<Transformer<B>>,
}

impl<B: Backend> ModelExecutor<B> {
    /// An executor over `model`.
    pub fn new(model: Arc<Transformer<B>>) -> Self {
        Self { model }
    }

    /// The model.
    pub fn model(&self) -> &Transformer<B> {
        &self.model
    }

    fn hidden_of(&self, item: Payload<B>) -> Result<Hidden<B>> {
        match item {
            Payload::Input(input) => self.model.embed(&input),
            Payload::Hidden(h) => Ok(h),
        }
    }
}

/// Concatenates hidden states along the batch; masks and sizes are kept (filled with ones
/// for items that have none).
fn concat<B: Backend>(be: &B, parts: Vec<Hidden<B>>) -> Result<Hidden<B>> {
    let dims: Vec<(usize, usize, usize)> =
        parts.iter().map(|h| h.dims3(be)).collect::<Result<_>>()?;
    let (_, n, d) = dims[0];
    if let Some(bad) = dims.iter().find(|&&(_, n2, d2)| (n2, d2) != (n, d)) {
        return Err(Error::InvalidInput(format!(
            "requests with {} tokens x {} features cannot join a batch of {n} x {d} \
             (pad text requests to one length before they join)",
            bad.1, bad.2
        )));
    }
    let protected = parts.iter().map(|h| h.protected).max().unwrap_or(0);
    let side = |get: fn(&Hidden<B>) -> Option<&B::Tensor>| -> Result<Option<B::Tensor>> {
        if parts.iter().all(|h| get(h).is_none()) {
            return Ok(None);
        }
        let pieces = parts
            .iter()
            .zip(&dims)
            .map(|(h, &(b, n, _))| match get(h) {
                Some(t) => Ok(t.clone()),
                None => be.from_vec(vec![1.0; b * n], &[b, n]),
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Some(be.cat(&pieces.iter().collect::<Vec<_>>(), 0)?))
    };
    let mask = side(|h| h.mask.as_ref())?;
    let sizes = side(|h| h.sizes.as_ref())?;
    let xs: Vec<&B::Tensor> = parts.iter().map(|h| &h.x).collect();
    Ok(Hidden {
        x: be.cat(&xs, 0)?,
        mask,
        sizes,
        protected,
    })
}

impl<B: Backend> Executor for ModelExecutor<B> {
    type Payload = Payload<B>;
    type Batch = Hidden<B>;
    type Output = Vec<f32>;

    fn layers(&self) -> usize {
        self.model.num_blocks()
    }

    fn join(
        &mut self,
        batch: Option<Hidden<B>>,
        items: Vec<Payload<B>>,
        _position: usize,
    ) -> Result<Hidden<B>> {
        let mut parts: Vec<Hidden<B>> = batch.into_iter().collect();
        for item in items {
            parts.push(self.hidden_of(item)?);
        }
        match parts.len() {
            0 => Err(Error::InvalidInput("nothing to join".into())),
            1 => Ok(parts.remove(0)),
            _ => concat(self.model.backend(), parts),
        }
    }

    fn run_block(&mut self, batch: Hidden<B>, block: usize) -> Result<Hidden<B>> {
        self.model.run_blocks(batch, block..block + 1)
    }

    fn finish(&mut self, batch: Hidden<B>) -> Result<Vec<Vec<f32>>> {
        let be = self.model.backend();
        let out = self.model.head(&batch)?;
        let dims = be.dims(&out);
        let rows = dims.first().copied().unwrap_or(0);
        let values = be.to_vec(&out)?;
        let width = values.len() / rows.max(1);
        Ok(values.chunks(width.max(1)).map(<[f32]>::to_vec).collect())
    }
}
