//! Properties over random models: every plan meets its promises in the executor's event
//! simulation, and the simulation itself is sane on arbitrary plans.

use proptest::prelude::*;

use collab_core::Error;
use collab_core::model::NormPlacement;

use super::feasibility::Checker;
use super::planner::best_uniform;
use super::*;

/// A random model, device and request.
#[derive(Clone, Debug)]
struct Case {
    layers: usize,
    heads: usize,
    /// Per shard: its importance at full fidelity.
    base: Vec<f64>,
    /// Per shard and fidelity: measurement noise (may make values negative or non-monotone).
    noise: Vec<f64>,
    /// q2 bytes, then the (positive) increments to each next fidelity.
    bytes: (u64, [u64; 6]),
    resident: u64,
    working: u64,
    embed_s: f64,
    head_s: f64,
    per_layer_s: f64,
    per_shard_s: [f64; 7],
    /// log10 of the IO rate in bytes/s.
    log_rate: f64,
    /// Target between the fixed compute time (0) and the full model's serial time (1).
    target_mix: f64,
    /// Budget above resident + working, as a fraction of the f32 model's bytes.
    budget_mix: f64,
    /// Preload buffer, as a fraction of the f32 model's bytes.
    preload_mix: f64,
}

fn case() -> impl Strategy<Value = Case> {
    (1..=8usize, 1..=12usize).prop_flat_map(|(layers, heads)| {
        let shards = layers * heads;
        (
            (
                Just(layers),
                Just(heads),
                prop::collection::vec(0.0..1.0f64, shards),
                prop::collection::vec(-0.08..0.05f64, shards * 7),
                (100..10_000u64, prop::array::uniform6(1..5_000u64)),
            ),
            (
                0..100_000u64,
                0..50_000u64,
                0.0..0.05f64,
                0.0..0.05f64,
                0.0..0.01f64,
            ),
            prop::array::uniform7(0.0..0.01f64),
            (3.0..8.0f64, -0.1..1.2f64, 0.0..1.2f64, 0.0..0.5f64),
        )
            .prop_map(|(a, b, per_shard_s, c)| Case {
                layers: a.0,
                heads: a.1,
                base: a.2,
                noise: a.3,
                bytes: a.4,
                resident: b.0,
                working: b.1,
                embed_s: b.2,
                head_s: b.3,
                per_layer_s: b.4,
                per_shard_s,
                log_rate: c.0,
                target_mix: c.1,
                budget_mix: c.2,
                preload_mix: c.3,
            })
    })
}

/// Share of a shard's importance kept at each fidelity.
const CURVE: [f64; 7] = [0.3, 0.6, 0.85, 0.93, 0.97, 0.99, 1.0];

impl Case {
    fn geometry(&self) -> ShardGeometry {
        ShardGeometry {
            layers: self.layers,
            hidden: 4 * self.heads,
            heads: self.heads,
            head_dim: 4,
            intermediate: 8 * self.heads,
            norm: NormPlacement::Post,
        }
    }

    fn table(&self, g: &ShardGeometry) -> ImportanceTable {
        let mut t = ImportanceTable::zeros("prop", "metric", 1.0, g.layers, g.heads);
        for (i, v) in t.values.iter_mut().enumerate() {
            *v = self.base[i / 7] * CURVE[i % 7] + self.noise[i];
        }
        t
    }

    fn input<'a>(&self, g: &'a ShardGeometry, t: &'a ImportanceTable) -> PlanInput<'a> {
        let mut shard_bytes = [self.bytes.0; 7];
        for f in 1..7 {
            shard_bytes[f] = shard_bytes[f - 1] + self.bytes.1[f - 1];
        }
        let compute = ComputeCosts {
            embed_s: self.embed_s,
            head_s: self.head_s,
            per_layer_s: self.per_layer_s,
            per_shard_s: self.per_shard_s,
            working_bytes: self.working,
        };
        let rate = 10f64.powf(self.log_rate);
        let shards = (self.layers * self.heads) as u64;
        let model_bytes = shards * shard_bytes[6];
        let fixed = compute.embed_s + self.layers as f64 * compute.per_layer_s + compute.head_s;
        let slowest = compute.per_shard_s.iter().copied().fold(0.0, f64::max);
        let span = shards as f64 * slowest + model_bytes as f64 / rate;
        PlanInput {
            geometry: g,
            importance: t,
            shard_bytes,
            resident_bytes: self.resident,
            compute,
            io_bytes_per_s: rate,
            target_s: (fixed + self.target_mix * span).max(1e-9),
            memory_budget: self.resident
                + self.working
                + (self.budget_mix * model_bytes as f64) as u64,
            preload_budget: (self.preload_mix * model_bytes as f64) as u64,
        }
    }
}

/// The preload rule, restated: chosen shards in order while they fit.
fn expected_preload(p: &Plan, inp: &PlanInput) -> Vec<ShardKey> {
    let mut used = 0u64;
    let mut keys = Vec::new();
    for (layer, shards) in p.layers.iter().enumerate() {
        for &(shard, f) in shards {
            used += inp.bytes(f);
            if used > inp.preload_budget {
                return keys;
            }
            keys.push(ShardKey { layer, shard });
        }
    }
    keys
}

proptest! {
    #[test]
    fn every_plan_keeps_its_promises_in_the_simulation(c in case()) {
        let (g, t) = (c.geometry(), c.table(&c.geometry()));
        let inp = c.input(&g, &t);
        let p = match plan(&inp) {
            Ok(p) => p,
            Err(Error::Config(msg)) => {
                prop_assert!(inp.fixed_latency_s() > inp.target_s * (1.0 - 1e-12), "{msg}");
                return Ok(());
            }
            Err(e) => return Err(TestCaseError::fail(format!("unexpected {e}"))),
        };
        let tol = 1e-9 * (1.0 + p.predicted_latency_s);

        // Shape, importance, preload.
        prop_assert_eq!(p.layers.len(), c.layers);
        for shards in &p.layers {
            prop_assert!(shards.windows(2).all(|w| w[0].0 < w[1].0));
            prop_assert!(shards.iter().all(|&(s, _)| s < c.heads));
        }
        let recomputed: f64 = p.layers.iter().enumerate()
            .flat_map(|(l, s)| s.iter().map(move |&(s, f)| (ShardKey { layer: l, shard: s }, f)))
            .map(|(k, f)| t.value(k, f))
            .sum();
        prop_assert!((p.importance - recomputed).abs() <= 1e-9, "{} vs {recomputed}", p.importance);
        prop_assert_eq!(&p.preload, &expected_preload(&p, &inp));
        let preload_bytes: u64 = p.preload.iter()
            .map(|k| p.layers[k.layer].iter().find(|s| s.0 == k.shard).map_or(0, |s| inp.bytes(s.1)))
            .sum();
        prop_assert!(preload_bytes <= inp.preload_budget);

        // The planner's own promises, restated: AIB, latency, budget.
        prop_assert!(p.start_s >= inp.compute.embed_s);
        let planned = p.planned_starts(&inp.compute);
        let mut io = 0u64;
        for (l, shards) in p.layers.iter().enumerate() {
            io += shards.iter()
                .filter(|&&(s, _)| !p.preload.contains(&ShardKey { layer: l, shard: s }))
                .map(|&(_, f)| inp.bytes(f))
                .sum::<u64>();
            prop_assert!(io as f64 / inp.io_bytes_per_s <= planned[l] + tol, "AIB at layer {l}");
        }
        let total: f64 = p.layers.iter().map(|s| inp.compute.layer_s(s)).sum();
        let latency = p.start_s + total + inp.compute.head_s;
        prop_assert!((p.predicted_latency_s - latency).abs() <= tol);
        prop_assert!(p.predicted_latency_s <= inp.target_s);
        prop_assert!(p.peak_bytes <= inp.memory_budget);

        // The executor's event simulation agrees.
        let tl = simulate(&p, &inp);
        prop_assert!(tl.max_stall_s <= tol, "stall {} s: {tl:?}", tl.max_stall_s);
        prop_assert!(tl.latency_s <= inp.target_s + tol);
        prop_assert!(tl.latency_s <= p.predicted_latency_s + tol);
        prop_assert!(tl.peak_bytes <= inp.memory_budget);
        prop_assert!(tl.peak_bytes <= p.peak_bytes, "{} > {}", tl.peak_bytes, p.peak_bytes);
        prop_assert_eq!(tl.io_bytes, io);

        // The greedy never loses to its uniform base.
        let base = best_uniform(&mut Checker::new(&inp)).expect("a plan exists");
        prop_assert!(p.importance >= base.importance - 1e-9, "{} < {}", p.importance, base.importance);
    }

    #[test]
    fn simulation_is_sane_on_arbitrary_plans(
        c in case(),
        picks in prop::collection::vec(0..9u8, 96),
        preload_picks in 0..97usize,
        start_s in 0.0..1.0f64,
    ) {
        let (g, t) = (c.geometry(), c.table(&c.geometry()));
        let inp = c.input(&g, &t);
        // A random sub-model (pick >= 7 leaves the shard out) and a random preload prefix.
        let layers: Vec<Vec<(usize, Fidelity)>> = (0..c.layers)
            .map(|l| (0..c.heads)
                .filter_map(|s| FIDELITIES.get(usize::from(picks[(l * c.heads + s) % 96])).map(|&f| (s, f)))
                .collect())
            .collect();
        let keys: Vec<ShardKey> = layers.iter().enumerate()
            .flat_map(|(l, s)| s.iter().map(move |&(s, _)| ShardKey { layer: l, shard: s }))
            .collect();
        let preload: Vec<ShardKey> = keys.iter().copied().take(preload_picks).collect();
        let p = Plan { layers, preload, start_s, predicted_latency_s: 0.0, importance: 0.0, peak_bytes: 0 };
        let tl = simulate(&p, &inp);

        let streamed = |l: usize| -> u64 {
            p.layers[l].iter()
                .filter(|&&(s, _)| !p.preload.contains(&ShardKey { layer: l, shard: s }))
                .map(|&(_, f)| inp.bytes(f))
                .sum()
        };
        let preload_bytes: u64 = p.layers.iter().enumerate()
            .flat_map(|(l, s)| s.iter().map(move |&(s, f)| (l, s, f)))
            .filter(|&(l, s, _)| p.preload.contains(&ShardKey { layer: l, shard: s }))
            .map(|(_, _, f)| inp.bytes(f))
            .sum();
        prop_assert_eq!(tl.io_bytes, (0..c.layers).map(streamed).sum::<u64>());

        let fixed = inp.resident_bytes + preload_bytes + inp.compute.working_bytes;
        let capacity = inp.memory_budget.saturating_sub(fixed);
        if fixed <= inp.memory_budget && (0..c.layers).all(|l| streamed(l) <= capacity) {
            prop_assert!(tl.peak_bytes <= inp.memory_budget, "{} > {}", tl.peak_bytes, inp.memory_budget);
        }
        prop_assert!(tl.peak_bytes >= fixed);

        let eps = 1e-9 * (1.0 + tl.latency_s);
        let mut prev_finish = inp.compute.embed_s;
        let mut cum = 0u64;
        for l in 0..c.layers {
            let c_l = inp.compute.layer_s(&p.layers[l]);
            prop_assert!(tl.start_s[l] >= prev_finish - eps && tl.start_s[l] >= tl.ready_s[l] - eps);
            prop_assert!((tl.finish_s[l] - tl.start_s[l] - c_l).abs() <= eps);
            prop_assert!(tl.finish_s[l] >= prev_finish);
            cum += streamed(l);
            if streamed(l) > 0 {
                // The loader is no faster than the IO rate.
                prop_assert!(tl.ready_s[l] >= cum as f64 / inp.io_bytes_per_s - eps);
            }
            prev_finish = tl.finish_s[l];
        }
        prop_assert!((tl.latency_s - prev_finish - inp.compute.head_s).abs() <= eps);
        prop_assert_eq!(tl.planned_start_s, p.planned_starts(&inp.compute));
        prop_assert!(tl.max_stall_s >= 0.0);
    }
}
