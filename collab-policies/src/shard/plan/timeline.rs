//! The executor's timing model: an event simulation of one request under a [`Plan`] (SPEC §3;
//! STI, Guo et al., MobiCom 2023), written independently of the planner's closed-form check
//! so that each verifies the other.
//!
//! Two actors share a clock starting at the request's arrival, `t = 0`:
//!
//! - the loader reads the plan's non-preloaded shards one by one in (layer, shard) order, each
//!   taking `bytes / io_bytes_per_s`; before starting one it waits until the buffer has room
//!   for it (capacity = `memory_budget - resident - preload - working`), the shard's bytes
//!   counting from the start of its read;
//! - compute runs the embedding from 0 to `embed_s`, then layer `l` as soon as the previous
//!   stage has finished and all of `l`'s shards are loaded, taking `C_l`, freeing `l`'s
//!   buffered bytes when it finishes, then the head.
//!
//! Events (a read done, a compute stage done) are processed in time order, all those of one
//! instant before anything new starts. If the loader waits for room that can never come (the
//! layer compute waits on needs more bytes than the buffer holds), it reads anyway, so the
//! simulation always ends; the overflow shows as `peak_bytes > memory_budget`.

use serde::{Deserialize, Serialize};

use super::{Plan, PlanInput};

/// The simulated timing of one request.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Timeline {
    /// Per layer: when its last shard finished loading (0 when it loads none).
    pub ready_s: Vec<f64>,
    /// Per layer: when its compute started.
    pub start_s: Vec<f64>,
    /// Per layer: when its compute finished (its buffered bytes freed).
    pub finish_s: Vec<f64>,
    /// Per layer: the plan's promised start `P_l = plan.start_s + Σ_{j<l} C_j`.
    pub planned_start_s: Vec<f64>,
    /// When the head finished: the request's latency.
    pub latency_s: f64,
    /// Peak weight bytes: resident + preload + working + the most bytes ever buffered.
    pub peak_bytes: u64,
    /// `max(0, max_l (start_s[l] - planned_start_s[l]))`: how far compute fell behind the
    /// plan waiting on IO (or memory).
    pub max_stall_s: f64,
    /// Bytes the loader read (the plan's non-preloaded shards).
    pub io_bytes: u64,
}

/// Simulates one request under `plan` with `input`'s rates, costs and budget (see the module
/// docs). Preloaded shards are those of `plan.preload` that the plan runs; shards are loaded in
/// ascending shard order within a layer whatever the order of `plan.layers[l]`. Never panics;
/// `input` need not be validated (a non-positive IO rate gives infinite read times).
pub fn simulate(plan: &Plan, input: &PlanInput) -> Timeline {
    let layers = plan.layers.len();
    let compute: Vec<f64> = plan
        .layers
        .iter()
        .map(|s| input.compute.layer_s(s))
        .collect();

    // The loader's queue and each layer's buffered bytes.
    let mut preload_bytes = 0u64;
    let mut queue: Vec<(usize, u64)> = Vec::new();
    for (l, shards) in plan.layers.iter().enumerate() {
        let mut sorted = shards.clone();
        sorted.sort_by_key(|&(s, _)| s);
        for (s, f) in sorted {
            let b = input.bytes(f);
            let preloaded = plan.preload.iter().any(|k| k.layer == l && k.shard == s);
            if preloaded {
                preload_bytes = preload_bytes.saturating_add(b);
            } else {
                queue.push((l, b));
            }
        }
    }
    let mut need = vec![0usize; layers];
    let mut held = vec![0u64; layers];
    for &(l, b) in &queue {
        need[l] += 1;
        held[l] = held[l].saturating_add(b);
    }
    let fixed = input
        .resident_bytes
        .saturating_add(preload_bytes)
        .saturating_add(input.compute.working_bytes);
    let capacity = input.memory_budget.saturating_sub(fixed);

    let mut tl = Timeline {
        ready_s: vec![0.0; layers],
        start_s: vec![0.0; layers],
        finish_s: vec![0.0; layers],
        planned_start_s: Vec::with_capacity(layers),
        latency_s: 0.0,
        peak_bytes: 0,
        max_stall_s: 0.0,
        io_bytes: queue.iter().fold(0u64, |a, &(_, b)| a.saturating_add(b)),
    };
    let mut t = plan.start_s;
    for c in &compute {
        tl.planned_start_s.push(t);
        t += c;
    }

    // Compute stages: 0 = embedding, 1..=layers = layer stage-1, layers+1 = head.
    let mut now = 0.0f64;
    let mut stage = 0usize;
    let mut compute_done: Option<f64> = Some(duration(input.compute.embed_s));
    let mut next_read = 0usize;
    let mut read_done: Option<(f64, usize)> = None; // (time, layer of the shard)
    let mut loaded = vec![0usize; layers];
    let (mut buffer, mut max_buffer) = (0u64, 0u64);

    loop {
        // Start what can start at `now`: compute first (it frees nothing), then the loader.
        if compute_done.is_none() && stage <= layers {
            let next = stage + 1; // stage to run next
            let can = next > layers || loaded[next - 1] == need[next - 1];
            if can {
                stage = next;
                if stage <= layers {
                    tl.start_s[stage - 1] = now;
                    compute_done = Some(now + duration(compute[stage - 1]));
                } else {
                    compute_done = Some(now + duration(input.compute.head_s));
                }
            }
        }
        if read_done.is_none() && next_read < queue.len() {
            let (l, b) = queue[next_read];
            let fits = buffer.saturating_add(b) <= capacity;
            // Compute idle here means it waits on this loader: nothing will free room.
            let room_never_comes = compute_done.is_none();
            if fits || room_never_comes {
                buffer = buffer.saturating_add(b);
                max_buffer = max_buffer.max(buffer);
                read_done = Some((now + duration(b as f64 / input.io_bytes_per_s), l));
                next_read += 1;
            }
        }

        // The next event(s).
        let next_t = match (compute_done, read_done) {
            (None, None) => break,
            (Some(c), None) => c,
            (None, Some((r, _))) => r,
            (Some(c), Some((r, _))) => c.min(r),
        };
        now = next_t;
        if let Some((r, l)) = read_done
            && r <= now
        {
            loaded[l] += 1;
            if loaded[l] == need[l] {
                tl.ready_s[l] = r;
            }
            read_done = None;
        }
        if let Some(c) = compute_done
            && c <= now
        {
            compute_done = None;
            if (1..=layers).contains(&stage) {
                tl.finish_s[stage - 1] = c;
                buffer = buffer.saturating_sub(held[stage - 1]);
            } else if stage == layers + 1 {
                tl.latency_s = c;
            }
        }
    }

    tl.peak_bytes = fixed.saturating_add(max_buffer);
    tl.max_stall_s = tl
        .start_s
        .iter()
        .zip(&tl.planned_start_s)
        .map(|(s, p)| s - p)
        .fold(0.0, f64::max);
    tl
}

/// A duration the clock can advance by: negative is 0, NaN is forever (so every event is
/// eventually reached and the simulation ends).
fn duration(s: f64) -> f64 {
    if s.is_nan() {
        f64::INFINITY
    } else {
        s.max(0.0)
    }
}
