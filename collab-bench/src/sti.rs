//! Planning inputs of STI (SPEC §3): a device's compute costs, measured with the streaming
//! executor's own code, in the form the importance-aware planner reads.

use collab_core::cost::{MeasuredProfile, ProfilePoint, Workload, time_median};
use collab_core::model::Input;
use collab_core::{Backend, Result};
use collab_policies::shard::exec::{Executor, ShardCache};
use collab_policies::shard::plan::ComputeCosts;
use collab_policies::shard::{FIDELITIES, Fidelity};

/// Times the stages of `input` with the executor's own code, as a measured cost profile of
/// this device: the embedding, the head, and one shard at each fidelity (a layer with every
/// shard at that fidelity, less a layer with none, over the shard count). The planner's costs
/// are read back through the `CostModel` trait, with the shard-less layer time and the weight
/// bytes one layer's compute holds besides its shard bytes.
///
/// # Errors
/// What the executor and the cost model report (a shard the cache lacks, a backend error).
pub fn compute_costs<B: Backend>(
    exec: &Executor<B>,
    cache: &ShardCache,
    input: &Input<B>,
    reps: usize,
) -> Result<(MeasuredProfile, ComputeCosts)> {
    let be = exec.backend();
    let g = exec.file().geometry().clone();
    let h = exec.embed(input)?;
    let tokens = h.dims3(be)?.1;
    let point = |work, seconds| ProfilePoint { work, seconds };
    let mut points = vec![
        point(
            Workload::Embed { batch: 1, tokens },
            time_median(reps, || exec.embed(input))?,
        ),
        point(
            Workload::Head { batch: 1, tokens },
            time_median(reps, || exec.head(&h))?,
        ),
    ];
    let per_layer_s = time_median(reps, || exec.layer_from_cache(0, &[], cache, h.clone()))?;
    for f in FIDELITIES {
        let shards: Vec<_> = (0..g.heads).map(|s| (s, f)).collect();
        let t = time_median(reps, || exec.layer_from_cache(0, &shards, cache, h.clone()))?;
        let bits = f.bits();
        points.push(point(
            Workload::Shard { bits, tokens },
            ((t - per_layer_s) / g.heads as f64).max(0.0),
        ));
    }
    // Working set: the peak of one layer's compute over what is held before it, plus the
    // embedding's rows (held while it runs).
    let meter = exec.meter();
    let before = meter.current();
    meter.reset_peak();
    let shards: Vec<_> = (0..g.heads).map(|s| (s, Fidelity::F32)).collect();
    exec.layer_from_cache(0, &shards, cache, h.clone())?;
    let layer_work = meter.peak() - before;
    meter.reset_peak();
    exec.embed(input)?;
    let embed_work = meter.peak() - before;
    let profile = MeasuredProfile {
        backend: be.name(),
        model: exec.file().name().to_string(),
        layers: g.layers,
        points,
        estimate: None,
    };
    let costs =
        ComputeCosts::from_cost_model(&profile, tokens, per_layer_s, layer_work.max(embed_work))?;
    Ok((profile, costs))
}
