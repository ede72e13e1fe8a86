//! The real [`Executor`]: one complete [`Transformer`] on a backend, run block by block on the
//! running batch (SPEC §2: the worker holds ONE model, not one tail model per split point).

use std::sync::Arc;

use collab_core::adaptive::TokenPlan;
use collab_core::model::{Hidden, Input, Transformer};
use collab_core::{Backend, Error, Result};

use super::executor::Executor;
use crate::token::schedule::MergeSchedule;
use crate::token::tome::ToMe;

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
///
/// With a [`TokenPlan`] set ([`set_token_plan`](Self::set_token_plan)), block `l` merges
/// `plan.merges[l]` tokens of each row by ToMe (OTAS, SPEC §4); rows of unequal token counts
/// (requests that joined at later blocks, or merged on their device) are padded and masked,
/// and each row merges only its own tokens.
#[derive(Debug)]
pub struct ModelExecutor<B: Backend> {
    model: Arc<Transformer<B>>,
    plan: TokenPlan,
    tome: Option<ToMe>,
}

impl<B: Backend> ModelExecutor<B> {
    /// An executor over `model`, merging nothing.
    pub fn new(model: Arc<Transformer<B>>) -> Self {
        Self {
            model,
            plan: TokenPlan::none(),
            tome: None,
        }
    }

    /// Merges by `plan` from the next block run on. A server sets it between passes, so one
    /// pass runs one plan; set within a pass, it applies to the blocks still to run.
    pub fn set_token_plan(&mut self, plan: TokenPlan) {
        self.tome = (!plan.is_none()).then(|| {
            ToMe::new(MergeSchedule::new(
                format!("plan{}", plan.gamma),
                plan.merges.clone(),
            ))
        });
        self.plan = plan;
    }

    /// The plan blocks run with.
    pub fn token_plan(&self) -> &TokenPlan {
        &self.plan
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

/// Concatenates hidden states along the batch. Requests of unequal token counts (texts of
/// other lengths, images merged to other sizes) are padded at the end to the longest with zero
/// values and a zero mask, so attention ignores the padding and pooling does not count it;
/// masks and sizes are kept (filled with ones for items that have none, and for padding's
/// sizes).
///
/// # Errors
/// [`Error::InvalidInput`] for requests of another hidden size; backend errors.
fn concat<B: Backend>(be: &B, parts: Vec<Hidden<B>>) -> Result<Hidden<B>> {
    let dims: Vec<(usize, usize, usize)> =
        parts.iter().map(|h| h.dims3(be)).collect::<Result<_>>()?;
    let d = dims[0].2;
    if let Some(bad) = dims.iter().find(|&&(_, _, d2)| d2 != d) {
        return Err(Error::InvalidInput(format!(
            "requests of {} features cannot join a batch of {d}",
            bad.2
        )));
    }
    let n = dims.iter().map(|&(_, n, _)| n).max().unwrap_or(0);
    let padded = dims.iter().any(|&(_, n2, _)| n2 != n);
    let protected = parts.iter().map(|h| h.protected).max().unwrap_or(0);
    // Per token of each item, `[b, n]`: its own values (or `fill` if it has none), then `pad`.
    let side = |get: fn(&Hidden<B>) -> Option<&B::Tensor>,
                fill: f32,
                pad: f32|
     -> Result<Option<B::Tensor>> {
        // Needed when an item has its own, or when padding differs from the fill.
        let needed = parts.iter().any(|h| get(h).is_some()) || (padded && pad != fill);
        if !needed {
            return Ok(None);
        }
        let pieces = parts
            .iter()
            .zip(&dims)
            .map(|(h, &(b, n2, _))| {
                let own = match get(h) {
                    Some(t) => t.clone(),
                    None => be.from_vec(vec![fill; b * n2], &[b, n2])?,
                };
                if n2 == n {
                    return Ok(own);
                }
                let tail = be.from_vec(vec![pad; b * (n - n2)], &[b, n - n2])?;
                be.cat(&[&own, &tail], 1)
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Some(be.cat(&pieces.iter().collect::<Vec<_>>(), 0)?))
    };
    let mask = side(|h| h.mask.as_ref(), 1.0, 0.0)?;
    let sizes = side(|h| h.sizes.as_ref(), 1.0, 1.0)?;
    let xs = parts
        .iter()
        .zip(&dims)
        .map(|(h, &(b, n2, _))| {
            if n2 == n {
                return Ok(h.x.clone());
            }
            let tail = be.zeros(&[b, n - n2, d])?;
            be.cat(&[&h.x, &tail], 1)
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(Hidden {
        x: be.cat(&xs.iter().collect::<Vec<_>>(), 0)?,
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
        match &self.tome {
            Some(tome) => self.model.run_blocks_with(batch, block..block + 1, tome),
            None => self.model.run_blocks(batch, block..block + 1),
        }
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

#[cfg(test)]
mod tests {
    use collab_backends::candle::CandleBackend;
    use collab_core::model::weights::SeededRandom;
    use collab_core::model::{BertConfig, EncoderConfig, ModelConfig, NormPlacement};

    use super::*;

    fn tiny_bert() -> Transformer<CandleBackend> {
        let cfg = ModelConfig::Bert(BertConfig {
            encoder: EncoderConfig {
                hidden: 16,
                layers: 2,
                heads: 2,
                intermediate: 32,
                layer_norm_eps: 1e-12,
                norm: NormPlacement::Post,
            },
            vocab_size: 50,
            max_positions: 16,
            type_vocab_size: 2,
            normalize: true,
        });
        Transformer::new(CandleBackend::cpu(), cfg, &SeededRandom::new(3)).expect("tiny bert")
    }

    fn image(model: &Transformer<CandleBackend>, seed: u64) -> Input<CandleBackend> {
        let values = (0..3 * 32 * 32)
            .map(|i| ((i as u64 * 7919 + seed * 104_729) % 1000) as f32 / 500.0 - 1.0)
            .collect();
        Input::Images(
            model
                .backend()
                .from_vec(values, &[1, 3, 32, 32])
                .expect("image"),
        )
    }

    #[test]
    fn a_token_plan_merges_each_row_as_it_would_alone_whatever_block_it_joined_at() {
        let model = Arc::new(crate::shard::layout::test_models::tiny_vit(5).expect("vit"));
        let be = model.backend();
        let plan = TokenPlan {
            gamma: -2,
            merges: vec![2, 2, 2],
        };
        let tome = ToMe::new(MergeSchedule::new("plan", plan.merges.clone()));
        let [a, b, c] = [1, 2, 3].map(|s| image(&model, s));
        let embed = |x: &Input<CandleBackend>| model.embed(x).expect("embed");
        // Alone: A served from block 0; B's device ran block 0 unmerged; C's device ran blocks
        // 0-1 merging as the plan does. Each then meets the plan on the server.
        let b1 = model.run_blocks(embed(&b), 0..1).expect("b device");
        let c2 = model
            .run_blocks_with(embed(&c), 0..2, &tome)
            .expect("c device");
        let alone = [
            model.run_blocks_with(embed(&a), 0..3, &tome).expect("a"),
            model.run_blocks_with(b1.clone(), 1..3, &tome).expect("b"),
            model.run_blocks_with(c2.clone(), 2..3, &tome).expect("c"),
        ]
        .map(|h| be.to_vec(&model.head(&h).expect("head")).expect("logits"));
        let mut exec = ModelExecutor::new(model.clone());
        exec.set_token_plan(plan.clone());
        assert_eq!(exec.token_plan(), &plan);
        let batch = exec.join(None, vec![Payload::Input(a)], 0).expect("join a");
        let batch = exec.run_block(batch, 0).expect("block 0");
        let batch = exec
            .join(Some(batch), vec![Payload::Hidden(b1)], 1)
            .expect("join b");
        let batch = exec.run_block(batch, 1).expect("block 1");
        let batch = exec
            .join(Some(batch), vec![Payload::Hidden(c2)], 2)
            .expect("join c");
        assert!(batch.mask.is_some(), "rows of unequal counts are masked");
        let batch = exec.run_block(batch, 2).expect("block 2");
        let out = exec.finish(batch).expect("head");
        for (row, (got, want)) in out.iter().zip(&alone).enumerate() {
            let diff = got
                .iter()
                .zip(want)
                .map(|(x, y)| (x - y).abs())
                .fold(0.0f32, f32::max);
            assert!(diff < 1e-4, "row {row} differs from alone by {diff}");
        }
        // Without the plan the same batch gives other answers: the plan ran.
        exec.set_token_plan(TokenPlan::none());
        let plain = exec
            .join(None, vec![Payload::Input(image(&model, 1))], 0)
            .and_then(|h| exec.run_block(h, 0))
            .and_then(|h| exec.run_block(h, 1))
            .and_then(|h| exec.run_block(h, 2))
            .and_then(|h| exec.finish(h))
            .expect("plain");
        assert!(
            plain[0]
                .iter()
                .zip(&alone[0])
                .any(|(x, y)| (x - y).abs() > 1e-4)
        );
    }

    #[test]
    fn requests_of_unequal_lengths_join_one_batch_padded_and_masked() {
        let model = Arc::new(tiny_bert());
        let be = model.backend();
        let texts: [Vec<u32>; 3] = [vec![1, 7, 9, 2], vec![1, 5, 2], vec![1, 3, 4, 8, 11, 2]];
        let alone: Vec<Vec<f32>> = texts
            .iter()
            .map(|t| {
                let out = model
                    .forward(&Input::Tokens(vec![t.clone()]))
                    .expect("forward");
                be.to_vec(&out).expect("values")
            })
            .collect();
        let mut exec = ModelExecutor::new(model.clone());
        // The first two join at block 1 (after the device ran block 0), the third raw at 0.
        let at_one = |t: &Vec<u32>| {
            let h = model.embed(&Input::Tokens(vec![t.clone()])).expect("embed");
            Payload::Hidden(model.run_blocks(h, 0..1).expect("block 0"))
        };
        let batch = exec
            .join(
                None,
                vec![Payload::Input(Input::Tokens(vec![texts[2].clone()]))],
                0,
            )
            .expect("join raw");
        let batch = exec.run_block(batch, 0).expect("block 0");
        let batch = exec
            .join(Some(batch), vec![at_one(&texts[0]), at_one(&texts[1])], 1)
            .expect("join split requests");
        let batch = exec.run_block(batch, 1).expect("block 1");
        let out = exec.finish(batch).expect("head");
        for (got, want) in out.iter().zip([&alone[2], &alone[0], &alone[1]]) {
            let diff = got
                .iter()
                .zip(want)
                .map(|(a, b)| (a - b).abs())
                .fold(0.0f32, f32::max);
            assert!(
                diff < 1e-5,
                "padded batch differs from the request alone by {diff}"
            );
        }
    }
}
