//! The operator interpreter: runs one operator of a lowered [`OpGraph`] on this decoder.

use super::{Decoder, KvCache};
use crate::graph::{NormSite, OpGraph, OpId, OpKind, Operator, ValueId, ValueSource};
use crate::{Backend, Error, Result};

/// A value an operator reads or produces on one side: an activation tensor, or token ids
/// (the request input and the argmax output).
#[derive(Clone, Debug)]
pub enum Held<B: Backend> {
    /// An `f32` activation on `B`.
    Tensor(B::Tensor),
    /// Token ids.
    Tokens(Vec<u32>),
}

impl<B: Backend> Held<B> {
    /// Bytes this value takes on the wire: 4 per `f32` element and 4 per token id.
    pub fn wire_bytes(&self, backend: &B) -> u64 {
        match self {
            Held::Tensor(t) => 4 * backend.dims(t).iter().product::<usize>() as u64,
            Held::Tokens(ids) => 4 * ids.len() as u64,
        }
    }
}

/// The inputs of `op` that the caller passes to [`Decoder::run_op`]: every input except the
/// KV-cache values, which the interpreter reads from the cache it is given.
/// (A value id outside the graph counts as passed, so the caller's lookup reports it.)
pub fn passed_inputs<'g>(
    graph: &'g OpGraph,
    op: &'g Operator,
) -> impl Iterator<Item = ValueId> + 'g {
    op.inputs.iter().copied().filter(|&v| {
        !graph
            .values
            .get(v)
            .is_some_and(|x| matches!(x.source, ValueSource::KvCache { .. }))
    })
}

impl<B: Backend> Decoder<B> {
    /// Runs operator `op` of `graph` (lowered from this decoder's configuration).
    ///
    /// `inputs` are the operator's inputs in [`Operator::inputs`] order with the KV-cache
    /// values left out ([`passed_inputs`]); the attention operators read and extend `cache`
    /// instead (`Q K^T` appends the keys, `P V` the values) and require it to hold exactly
    /// `graph.stage.past_tokens()` tokens for their layer. RoPE positions start at that same
    /// count; prefill applies the causal mask; the final norm keeps only the last token.
    /// Tensor outputs are checked against the graph's shape for the value.
    ///
    /// # Errors
    /// [`Error::InvalidInput`] for a graph of another model, an operator out of range, the
    /// wrong number or kind of inputs, a token outside the vocabulary, or a cache that does
    /// not hold this layer's past (attention ran elsewhere before); [`Error::Shape`] for
    /// inputs of the wrong shape; backend errors. Never panics on its inputs.
    pub fn run_op(
        &self,
        graph: &OpGraph,
        op: OpId,
        inputs: &[&Held<B>],
        cache: &mut KvCache<B>,
    ) -> Result<Held<B>> {
        if graph.config != self.config {
            return Err(Error::InvalidInput(format!(
                "operator graph of `{}` given to decoder `{}` (sizes differ)",
                graph.config.name, self.config.name
            )));
        }
        let o = graph.ops.get(op).ok_or_else(|| {
            Error::InvalidInput(format!(
                "operator {op} is outside the graph of {} operators",
                graph.ops.len()
            ))
        })?;
        if let Some(&v) = o
            .inputs
            .iter()
            .chain([&o.output])
            .find(|&&v| v >= graph.values.len())
        {
            return Err(Error::InvalidInput(format!(
                "`{}` refers to value {v}, outside the graph of {} values",
                o.name,
                graph.values.len()
            )));
        }
        let expected = passed_inputs(graph, o).count();
        if inputs.len() != expected {
            return Err(Error::InvalidInput(format!(
                "`{}` takes {expected} inputs (KV cache excluded), got {}",
                o.name,
                inputs.len()
            )));
        }
        let t = |i: usize| -> Result<&B::Tensor> {
            match inputs.get(i) {
                Some(Held::Tensor(t)) => Ok(t),
                Some(Held::Tokens(_)) => Err(Error::InvalidInput(format!(
                    "`{}` input {i} must be an activation tensor, got token ids",
                    o.name
                ))),
                None => Err(Error::InvalidInput(format!(
                    "`{}` ({:?}) needs an input {i}; the graph gives it {}",
                    o.name,
                    o.kind,
                    inputs.len()
                ))),
            }
        };
        let layer = || {
            o.layer
                .ok_or_else(|| Error::InvalidInput(format!("`{}` needs a decoder layer", o.name)))
        };
        let past = graph.stage.past_tokens();
        let be = &self.backend;
        let out = match o.kind {
            OpKind::Embed => {
                let Some(Held::Tokens(ids)) = inputs.first() else {
                    return Err(Error::InvalidInput(format!(
                        "`{}` takes token ids as its input",
                        o.name
                    )));
                };
                if ids.len() != graph.stage.new_tokens() {
                    return Err(Error::InvalidInput(format!(
                        "`{}` of {} takes {} token ids, got {}",
                        o.name,
                        graph.stage,
                        graph.stage.new_tokens(),
                        ids.len()
                    )));
                }
                self.embed_tokens(ids)?
            }
            OpKind::RmsNorm { site } => {
                let gain = self.norm_gain(o.layer, site)?;
                match site {
                    NormSite::Final => self.rms(&self.last_row(t(0)?)?, gain)?,
                    NormSite::Attention | NormSite::Ffn => self.rms(t(0)?, gain)?,
                }
            }
            OpKind::Linear { proj } => self.project(t(0)?, self.projection(o.layer, proj)?)?,
            OpKind::Rope { .. } => self.rope(t(0)?, past)?,
            OpKind::AttnScores => self.attn_scores(t(0)?, t(1)?, cache, layer()?, past)?,
            OpKind::Softmax => self.attn_probs(t(0)?)?,
            OpKind::AttnContext => self.attn_context(t(0)?, t(1)?, cache, layer()?, past)?,
            OpKind::Residual => be.add(t(0)?, t(1)?)?,
            OpKind::SiluMul => self.silu_mul(t(0)?, t(1)?)?,
            OpKind::Argmax => return Ok(Held::Tokens(vec![self.next_token(t(0)?)?])),
        };
        let want = &graph.values[o.output].shape;
        let got = be.dims(&out);
        if &got != want {
            return Err(Error::shape(
                "run_op",
                format!("`{}` produced {got:?}, the graph expects {want:?}", o.name),
            ));
        }
        Ok(Held::Tensor(out))
    }
}
