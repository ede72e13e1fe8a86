//! The direct, unsplit forward pass and greedy generation: the reference the split executor
//! must reproduce.

use super::{Decoder, KvCache};
use crate::{Backend, Error, Result};

impl<B: Backend> Decoder<B> {
    /// One pass over `tokens` at positions `past..past + n`, where `past` is what `cache`
    /// already holds; appends their keys and values to `cache` and returns the logits
    /// `[1, vocab]` of the last token.
    ///
    /// With an empty cache this is the prefill of a prompt; with one token it is a decode step.
    ///
    /// # Errors
    /// [`Error::InvalidInput`] for no tokens, a token outside the vocabulary, or a cache of
    /// another model or not at a pass boundary; backend errors.
    pub fn forward(&self, tokens: &[u32], cache: &mut KvCache<B>) -> Result<B::Tensor> {
        if cache.layers() != self.layers.len() {
            return Err(Error::InvalidInput(format!(
                "KV cache has {} layers, the model {}",
                cache.layers(),
                self.layers.len()
            )));
        }
        let past = cache.tokens()?;
        let be = &self.backend;
        let mut x = self.embed_tokens(tokens)?;
        for (l, w) in self.layers.iter().enumerate() {
            let xn = self.rms(&x, &w.attn_norm)?;
            let q = self.rope(&self.project(&xn, &w.q)?, past)?;
            let k = self.rope(&self.project(&xn, &w.k)?, past)?;
            let v = self.project(&xn, &w.v)?;
            let scores = self.attn_scores(&q, &k, cache, l, past)?;
            let probs = self.attn_probs(&scores)?;
            let ctx = self.attn_context(&probs, &v, cache, l, past)?;
            x = be.add(&x, &self.project(&ctx, &w.o)?)?;
            let xn = self.rms(&x, &w.ffn_norm)?;
            let m = self.silu_mul(&self.project(&xn, &w.gate)?, &self.project(&xn, &w.up)?)?;
            x = be.add(&x, &self.project(&m, &w.down)?)?;
        }
        let last = self.rms(&self.last_row(&x)?, &self.final_norm)?;
        self.project(&last, &self.lm_head)
    }

    /// Greedy decoding with a fresh KV cache: prefills `prompt`, takes the argmax token, then
    /// runs `steps` decode steps, each feeding back the previous token. Returns the `steps + 1`
    /// generated tokens (the prompt excluded).
    ///
    /// # Errors
    /// As [`Decoder::forward`].
    pub fn generate(&self, prompt: &[u32], steps: usize) -> Result<Vec<u32>> {
        let mut cache = self.new_cache();
        let mut token = self.next_token(&self.forward(prompt, &mut cache)?)?;
        let mut out = Vec::with_capacity(steps + 1);
        out.push(token);
        for _ in 0..steps {
            token = self.next_token(&self.forward(&[token], &mut cache)?)?;
            out.push(token);
        }
        Ok(out)
    }
}
