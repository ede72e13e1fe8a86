//! The importance profiler (SPEC §3 (a)): each shard's contribution to a task metric, measured
//! with the executor's own layer code on shard bytes held in memory.
//!
//! Layers before the one varied are computed once per batch and reused: a variant of layer `l`
//! (one shard left out, or every shard at one fidelity) reruns only layers `l..L`.

use collab_core::model::{Hidden, Input};
use collab_core::{Backend, Result};

use super::super::importance::ImportanceMeasurements;
use super::super::{FIDELITIES, Fidelity};
use super::{Executor, ShardCache, SubModel};

/// Every shard of every layer at `fidelity`.
pub fn uniform(layers: usize, shards: usize, fidelity: Fidelity) -> Vec<Vec<(usize, Fidelity)>> {
    (0..layers)
        .map(|_| (0..shards).map(|s| (s, fidelity)).collect())
        .collect()
}

impl<B: Backend> Executor<B> {
    /// Runs `sub` on `input` with shard bytes from `cache` (no IO): the same numbers as
    /// [`Executor::run`] streams, for accuracy sweeps.
    ///
    /// # Errors
    /// As [`Executor::layer_from_cache`].
    pub fn run_cached(
        &self,
        sub: &SubModel,
        cache: &ShardCache,
        input: &Input<B>,
    ) -> Result<B::Tensor> {
        self.check(sub)?;
        let mut h = self.embed(input)?;
        for (layer, shards) in sub.iter().enumerate() {
            h = self.layer_from_cache(layer, shards, cache, h)?;
        }
        self.head(&h)
    }

    fn finish_from(
        &self,
        from: usize,
        full: &SubModel,
        cache: &ShardCache,
        mut h: Hidden<B>,
    ) -> Result<B::Tensor> {
        for (layer, shards) in full.iter().enumerate().skip(from) {
            h = self.layer_from_cache(layer, shards, cache, h)?;
        }
        self.head(&h)
    }

    /// Measures the metric of the whole f32 model, of the model with each shard left out, and
    /// with each layer at each fidelity, on `batches`. `metric` scores the outputs of all
    /// batches (in order); `progress(done, total)` is called after each variant.
    ///
    /// # Errors
    /// As [`Executor::layer_from_cache`] (the cache must hold every shard at every fidelity),
    /// and the metric's errors.
    pub fn measure_importance(
        &self,
        cache: &ShardCache,
        batches: &[Input<B>],
        metric: &dyn Fn(&[B::Tensor]) -> Result<f64>,
        progress: &dyn Fn(usize, usize),
    ) -> Result<ImportanceMeasurements> {
        let g = self.geometry.clone();
        let full = uniform(g.layers, g.heads, Fidelity::F32);
        // prefixes[l][b]: batch b after layers 0..l of the full model.
        let mut prefixes: Vec<Vec<Hidden<B>>> = vec![
            batches
                .iter()
                .map(|x| self.embed(x))
                .collect::<Result<Vec<_>>>()?,
        ];
        for (layer, shards) in full.iter().enumerate() {
            let next = prefixes[layer]
                .iter()
                .map(|h| self.layer_from_cache(layer, shards, cache, h.clone()))
                .collect::<Result<Vec<_>>>()?;
            prefixes.push(next);
        }
        let outputs = prefixes[g.layers]
            .iter()
            .map(|h| self.head(h))
            .collect::<Result<Vec<_>>>()?;
        let full_metric = metric(&outputs)?;
        let total = g.layers * (g.heads + FIDELITIES.len() - 1);
        let mut done = 0;
        let mut variant = |layer: usize, shards: &[(usize, Fidelity)]| -> Result<f64> {
            let outs = prefixes[layer]
                .iter()
                .map(|h| {
                    let h = self.layer_from_cache(layer, shards, cache, h.clone())?;
                    self.finish_from(layer + 1, &full, cache, h)
                })
                .collect::<Result<Vec<_>>>()?;
            done += 1;
            progress(done, total);
            metric(&outs)
        };
        let mut without = Vec::with_capacity(g.layers);
        let mut quantised = Vec::with_capacity(g.layers);
        for layer in 0..g.layers {
            let mut row = Vec::with_capacity(g.heads);
            for left_out in 0..g.heads {
                let shards: Vec<_> = (0..g.heads)
                    .filter(|&s| s != left_out)
                    .map(|s| (s, Fidelity::F32))
                    .collect();
                row.push(variant(layer, &shards)?);
            }
            without.push(row);
            let mut q = Vec::with_capacity(FIDELITIES.len());
            for f in FIDELITIES {
                if f == Fidelity::F32 {
                    q.push(full_metric);
                    continue;
                }
                let shards: Vec<_> = (0..g.heads).map(|s| (s, f)).collect();
                q.push(variant(layer, &shards)?);
            }
            quantised.push(q);
        }
        Ok(ImportanceMeasurements {
            full: full_metric,
            without,
            quantised,
        })
    }
}
