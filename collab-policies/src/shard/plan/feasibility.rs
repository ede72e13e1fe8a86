//! The planner's closed-form feasibility check (STI's accumulated IO budget, Guo et al.,
//! MobiCom 2023; SPEC §3 (b)).
//!
//! A sub-model is a [`Selection`]: for every shard (flat index `layer * heads + shard`), the
//! index in [`FIDELITIES`](super::FIDELITIES) it runs at, or `None`. [`Checker::evaluate`]
//! derives, in `O(layers + shards)`:
//!
//! - the preload: the chosen shards in (layer, shard) order while they fit `preload_budget`,
//!   stopping at the first that does not fit;
//! - the *accumulated IO budget* (AIB): with `I_l` the time to read the non-preloaded bytes of
//!   layers `0..=l` and `P_l = start_s + Σ_{j<l} C_j` the planned start of layer `l`, the plan
//!   needs `I_l <= P_l` for every `l`, so that compute never waits on IO; `start_s` is the
//!   smallest value `>= embed_s` meeting this, and the predicted latency is
//!   `start_s + Σ C_l + head_s`;
//! - a bound on the buffer, assuming the loader reads as fast as it can: when shard `k` starts
//!   loading (at `s_k` = bytes before it / rate) the buffer holds every non-preloaded byte up
//!   to and including `k` minus the bytes of the layers whose *planned* finish
//!   `P_{j+1}` is before `s_k`. The executor's layers finish no later than planned while the
//!   loader is never held back, and the loader is never held back while this bound fits the
//!   buffer's capacity, so the bound holds for the executor's [`simulate`](super::simulate)
//!   too (by induction over shards). Near-ties count as not yet freed (conservative by
//!   [`FREE_SLACK`]).

use super::PlanInput;

/// For every shard (flat index `layer * heads + shard`) the fidelity index it runs at, or
/// `None` when the shard is left out.
pub type Selection = [Option<u8>];

/// Relative (and absolute, in seconds) slack by which a planned layer finish must precede a
/// shard's planned load start for the planner to count that layer's bytes as freed: absorbs
/// float rounding between the closed form and the executor's event simulation.
pub const FREE_SLACK: f64 = 1e-9;

/// What the closed-form check derives for one selection.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Evaluation {
    /// Shards with a flat index below this are preloaded when chosen (the preload stops at the
    /// first chosen shard that does not fit; `shards` when all fit).
    pub preload_end: usize,
    /// Bytes of the preloaded shards.
    pub preload_bytes: u64,
    /// Bytes the loader reads: the chosen shards that are not preloaded.
    pub io_bytes: u64,
    /// The smallest start of layer 0's compute `>= embed_s` that meets the AIB.
    pub start_s: f64,
    /// `start_s + Σ C_l + head_s`.
    pub latency_s: f64,
    /// Bound on peak weight bytes: resident + preload + working + buffered.
    pub peak_bytes: u64,
}

impl Evaluation {
    /// Meets the latency target and the memory budget.
    pub fn feasible(&self, input: &PlanInput) -> bool {
        self.latency_s <= input.target_s && self.peak_bytes <= input.memory_budget
    }
}

/// Evaluates selections for one input, reusing its scratch space between calls.
#[derive(Debug)]
pub struct Checker<'i, 'a> {
    input: &'i PlanInput<'a>,
    /// `C_l` of the selection last evaluated.
    compute_s: Vec<f64>,
    /// Non-preloaded bytes of each layer.
    io: Vec<u64>,
    /// Planned finish of each layer, `P_{l+1}`.
    finish_s: Vec<f64>,
}

impl<'i, 'a> Checker<'i, 'a> {
    /// A checker for `input` (assumed validated: [`PlanInput::validate`]).
    pub fn new(input: &'i PlanInput<'a>) -> Self {
        let layers = input.geometry.layers;
        Self {
            input,
            compute_s: vec![0.0; layers],
            io: vec![0; layers],
            finish_s: vec![0.0; layers],
        }
    }

    /// The input checked against.
    pub fn input(&self) -> &'i PlanInput<'a> {
        self.input
    }

    /// Derives preload, start, latency and the peak-bytes bound of `sel`, which must hold
    /// `layers * heads` entries with fidelity indices below 7 (the planner's own selections).
    pub fn evaluate(&mut self, sel: &Selection) -> Evaluation {
        let input = self.input;
        let (layers, heads) = (input.geometry.layers, input.geometry.heads);
        let bytes = |f: u8| input.shard_bytes[usize::from(f)];
        let rate = input.io_bytes_per_s;
        let costs = &input.compute;

        // The preload: a prefix of the chosen shards in (layer, shard) order.
        let mut preload_bytes = 0u64;
        let mut preload_end = sel.len();
        for (i, f) in sel.iter().enumerate() {
            if let Some(f) = *f {
                match preload_bytes.checked_add(bytes(f)) {
                    Some(b) if b <= input.preload_budget => preload_bytes = b,
                    _ => {
                        preload_end = i;
                        break;
                    }
                }
            }
        }

        // Per layer: compute time and non-preloaded bytes; the AIB fixes start_s.
        let mut start_s = costs.embed_s;
        let (mut cum_io, mut cum_c) = (0u64, 0.0f64);
        for l in 0..layers {
            let (mut c, mut io) = (costs.per_layer_s, 0u64);
            for (i, f) in sel.iter().enumerate().skip(l * heads).take(heads) {
                if let Some(f) = *f {
                    c += costs.per_shard_s[usize::from(f)];
                    if i >= preload_end {
                        io = io.saturating_add(bytes(f));
                    }
                }
            }
            self.compute_s[l] = c;
            self.io[l] = io;
            cum_io = cum_io.saturating_add(io);
            start_s = start_s.max(cum_io as f64 / rate - cum_c);
            cum_c += c;
        }
        let latency_s = start_s + cum_c + costs.head_s;

        // Planned finishes P_{l+1}, then the buffer bound at every shard's load start.
        let mut t = start_s;
        for l in 0..layers {
            t += self.compute_s[l];
            self.finish_s[l] = t;
        }
        let (mut loaded, mut freed, mut freed_layers, mut max_buffer) = (0u64, 0u64, 0, 0u64);
        for (i, f) in sel.iter().enumerate().skip(preload_end) {
            let Some(f) = *f else { continue };
            let layer = i / heads;
            let s_k = loaded as f64 / rate;
            let before = s_k - FREE_SLACK * (1.0 + s_k.abs());
            while freed_layers < layer && self.finish_s[freed_layers] <= before {
                freed = freed.saturating_add(self.io[freed_layers]);
                freed_layers += 1;
            }
            loaded = loaded.saturating_add(bytes(f));
            max_buffer = max_buffer.max(loaded.saturating_sub(freed));
        }
        let peak_bytes = input
            .resident_bytes
            .saturating_add(preload_bytes)
            .saturating_add(costs.working_bytes)
            .saturating_add(max_buffer);
        Evaluation {
            preload_end,
            preload_bytes,
            io_bytes: cum_io,
            start_s,
            latency_s,
            peak_bytes,
        }
    }
}
