//! The planner and the timeline: hand-computed cases, then properties over random models
//! checking plans against the executor's event simulation (properties: `proptests.rs`).

use collab_core::Error;
use collab_core::model::NormPlacement;

use super::feasibility::Checker;
use super::*;

/// Bytes of one shard at q2, q3, q4, q5, q6, q8, f32: every read time at 8000 B/s is dyadic.
const BYTES: [u64; 7] = [1000, 1500, 2000, 2500, 3000, 4000, 8000];

fn geometry(layers: usize, heads: usize) -> ShardGeometry {
    ShardGeometry {
        layers,
        hidden: 4 * heads,
        heads,
        head_dim: 4,
        intermediate: 8 * heads,
        norm: NormPlacement::Pre,
    }
}

fn table(g: &ShardGeometry, value: impl Fn(ShardKey, Fidelity) -> f64) -> ImportanceTable {
    let mut t = ImportanceTable::zeros("test", "metric", 1.0, g.layers, g.heads);
    for key in g.keys() {
        for f in FIDELITIES {
            t.set(key, f, value(key, f)).expect("key inside the table");
        }
    }
    t
}

/// Costs with no head and no per-layer part, every fidelity computing in `per_shard_s`.
fn costs(embed_s: f64, per_shard_s: f64) -> ComputeCosts {
    ComputeCosts {
        embed_s,
        head_s: 0.0,
        per_layer_s: 0.0,
        per_shard_s: [per_shard_s; 7],
        working_bytes: 0,
    }
}

/// Fast IO, a huge budget, no preload; each test changes what it studies.
fn input<'a>(g: &'a ShardGeometry, t: &'a ImportanceTable) -> PlanInput<'a> {
    PlanInput {
        geometry: g,
        importance: t,
        shard_bytes: BYTES,
        resident_bytes: 0,
        compute: costs(0.0625, 0.125),
        io_bytes_per_s: 1e12,
        target_s: 10.0,
        memory_budget: 1 << 40,
        preload_budget: 0,
    }
}

fn uniform(g: &ShardGeometry, n: usize, f: Fidelity) -> Vec<Vec<(usize, Fidelity)>> {
    vec![(0..n).map(|s| (s, f)).collect(); g.layers]
}

#[test]
fn everything_runs_at_f32_with_a_huge_budget_and_fast_io() {
    let g = geometry(3, 4);
    let t = table(&g, |k, f| f64::from(f.bits()) * (1.0 + k.shard as f64));
    let inp = input(&g, &t);
    let p = plan(&inp).expect("feasible");
    assert_eq!(p.layers, uniform(&g, 4, Fidelity::F32));
    assert_eq!(
        p.start_s, 0.0625,
        "IO of layer 0 hides behind the embedding"
    );
    assert_eq!(p.predicted_latency_s, 0.0625 + 12.0 * 0.125);
    assert_eq!(p.importance, 3.0 * 32.0 * (1.0 + 2.0 + 3.0 + 4.0));
    assert_eq!(
        p.peak_bytes,
        12 * 8000,
        "every shard loads before layer 0 ends"
    );
    let tl = simulate(&p, &inp);
    assert_eq!((tl.max_stall_s, tl.latency_s), (0.0, p.predicted_latency_s));
    assert_eq!((tl.io_bytes, tl.peak_bytes), (12 * 8000, 12 * 8000));
}

#[test]
fn only_preloaded_shards_run_when_io_cannot_stream() {
    // One shard per layer; the preload holds layer 0 at f32. Reading any byte takes 1000 s.
    let g = geometry(2, 1);
    let curve = [1.0, 1.5, 2.0, 2.5, 3.0, 3.5, 10.0];
    let t = table(&g, |_, f| curve[f.index()]);
    let inp = PlanInput {
        shard_bytes: [60, 70, 80, 85, 90, 95, 100],
        io_bytes_per_s: 1e-3,
        preload_budget: 100,
        ..input(&g, &t)
    };
    let p = plan(&inp).expect("feasible");
    // No uniform n = 1 fits (two shards of >= 60 B overflow the preload): the base is empty,
    // and the greedy adds shard (0, 0) at f32 (best gain per byte), which the preload holds.
    assert_eq!(p.layers, vec![vec![(0, Fidelity::F32)], vec![]]);
    assert_eq!(p.preload, vec![ShardKey { layer: 0, shard: 0 }]);
    assert_eq!((p.start_s, p.importance, p.peak_bytes), (0.0625, 10.0, 100));
    assert_eq!(p.predicted_latency_s, 0.0625 + 0.125);
    let tl = simulate(&p, &inp);
    assert_eq!((tl.io_bytes, tl.max_stall_s, tl.peak_bytes), (0, 0.0, 100));
}

#[test]
fn accumulated_io_budget_binds_and_sets_the_head_start() {
    // 2 x 2 shards, 0.125 s each; IO at 8000 B/s. Importance saturates at 4 bits.
    let g = geometry(2, 2);
    let curve = [1.0, 1.5, 2.0, 2.0, 2.0, 2.0, 2.0];
    let t = table(&g, |_, f| curve[f.index()]);
    let inp = PlanInput {
        io_bytes_per_s: 8000.0,
        target_s: 1.0,
        ..input(&g, &t)
    };
    // All at q3: I_0 = 3000/8000 = 0.375, I_1 = 0.75; C_l = 0.25. The AIB at layer 1 binds:
    // start = max(0.0625, 0.375, 0.75 - 0.25) = 0.5, latency = 0.5 + 0.5 = 1.0 = target.
    // All at q4 would need start 0.75 (latency 1.25); any single shard up to q4 adds 500 B,
    // i.e. 0.0625 s to I_1: start 0.5625, latency 1.0625 > 1.
    let p = plan(&inp).expect("feasible");
    assert_eq!(p.layers, uniform(&g, 2, Fidelity::Bits(3)));
    assert_eq!(
        (p.start_s, p.predicted_latency_s, p.importance),
        (0.5, 1.0, 6.0)
    );
    let tl = simulate(&p, &inp);
    assert_eq!(tl.ready_s, vec![0.375, 0.75]);
    assert_eq!(
        tl.start_s,
        vec![0.375, 0.75],
        "layer 0 may start early, layer 1 cannot"
    );
    assert_eq!(tl.planned_start_s, vec![0.5, 0.75]);
    assert_eq!((tl.max_stall_s, tl.latency_s), (0.0, 1.0));
}

#[test]
fn memory_budget_caps_the_sub_model() {
    // IO is instant next to compute, so every shard is buffered at once: 16000 B holds four q8
    // shards (importance 4 x 6 = 24) or two f32 shards (2 x 7 = 14).
    let g = geometry(2, 2);
    let t = table(&g, |_, f| (f.index() + 1) as f64);
    let inp = PlanInput {
        io_bytes_per_s: 1e9,
        compute: costs(0.01, 0.001),
        memory_budget: 16_000,
        ..input(&g, &t)
    };
    let p = plan(&inp).expect("feasible");
    assert_eq!(p.layers, uniform(&g, 2, Fidelity::Bits(8)));
    assert_eq!((p.importance, p.peak_bytes), (24.0, 16_000));
    let tl = simulate(&p, &inp);
    assert_eq!((tl.peak_bytes, tl.max_stall_s), (16_000, 0.0));
    let over = PlanInput {
        memory_budget: 15_999,
        ..inp.clone()
    };
    let p = plan(&over).expect("feasible");
    assert!(p.peak_bytes <= 15_999 && p.importance < 24.0, "{p:?}");
}

#[test]
fn buffer_bound_frees_layers_planned_to_finish_before_a_read() {
    // 3 layers x 2 q8 shards of 0.5 s IO each, 1.125 s compute per layer. Start = 1; planned
    // finishes 2.125, 3.25, 4.375; reads start at 0, 0.5, .., 2.5. At 2.5 layer 0 (8000 B) is
    // freed: the bound is 5 x 4000 = 20000 at the read starting at 2, not 24000.
    let g = geometry(3, 2);
    let t = table(&g, |_, _| 1.0);
    let inp = PlanInput {
        io_bytes_per_s: 8000.0,
        compute: costs(0.0625, 0.5625),
        ..input(&g, &t)
    };
    let mut checker = Checker::new(&inp);
    let eval = checker.evaluate(&[Some(5); 6]);
    assert_eq!(
        (eval.start_s, eval.peak_bytes, eval.io_bytes),
        (1.0, 20_000, 24_000)
    );
    let p = Plan {
        layers: uniform(&g, 2, Fidelity::Bits(8)),
        preload: vec![],
        start_s: eval.start_s,
        predicted_latency_s: eval.latency_s,
        importance: 6.0,
        peak_bytes: eval.peak_bytes,
    };
    let tl = simulate(&p, &inp);
    assert_eq!((tl.peak_bytes, tl.max_stall_s), (20_000, 0.0));
    // With 12000 B the read due at 1.5 waits for layer 0 to finish at 2.125: layer 1, planned
    // at 2.125, starts when that read ends at 2.625 (finishing at 3.75); the last read waits
    // for that and ends at 4.25, a second after layer 2's planned start 3.25.
    let tight = PlanInput {
        memory_budget: 12_000,
        ..inp.clone()
    };
    let tl = simulate(&p, &tight);
    assert_eq!((tl.peak_bytes, tl.max_stall_s), (12_000, 1.0));
    assert!(!checker.evaluate(&[Some(5); 6]).feasible(&tight));
}

#[test]
fn simulate_reads_past_a_full_buffer_rather_than_deadlock() {
    let g = geometry(1, 2);
    let t = table(&g, |_, _| 1.0);
    let inp = PlanInput {
        memory_budget: 10_000,
        ..input(&g, &t)
    };
    let p = Plan {
        layers: uniform(&g, 2, Fidelity::F32),
        preload: vec![],
        start_s: 0.0625,
        predicted_latency_s: 0.3125,
        importance: 2.0,
        peak_bytes: 16_000,
    };
    let tl = simulate(&p, &inp);
    assert_eq!((tl.peak_bytes, tl.io_bytes), (16_000, 16_000));
    assert!(tl.latency_s.is_finite());
}

#[test]
fn a_target_below_the_fixed_compute_time_is_a_config_error() {
    let g = geometry(2, 2);
    let t = table(&g, |_, _| 1.0);
    let mut inp = input(&g, &t);
    inp.compute.per_layer_s = 0.25;
    inp.compute.head_s = 0.125;
    inp.target_s = 0.5;
    let Err(Error::Config(msg)) = plan(&inp) else {
        panic!("expected a config error");
    };
    assert!(msg.contains("0.5 s") && msg.contains("0.6875 s"), "{msg}");
    inp.target_s = 0.6875;
    let p = plan(&inp).expect("the empty plan meets it");
    assert_eq!((p.shard_count(), p.predicted_latency_s), (0, 0.6875));
}

#[test]
fn invalid_inputs_are_typed_errors() {
    let g = geometry(2, 2);
    let t = table(&g, |_, _| 1.0);
    let ok = input(&g, &t);
    let mut nan_cost = ok.clone();
    nan_cost.compute.per_shard_s[3] = f64::NAN;
    let mut over = ok.clone();
    (
        over.resident_bytes,
        over.compute.working_bytes,
        over.memory_budget,
    ) = (600, 500, 1000);
    let mut overflow = ok.clone();
    (overflow.resident_bytes, overflow.compute.working_bytes) = (u64::MAX, 1);
    let other = table(&geometry(3, 2), |_, _| 1.0);
    let mut nan = t.clone();
    nan.values[5] = f64::NAN;
    let cases = [
        (
            "invalid",
            PlanInput {
                io_bytes_per_s: f64::NAN,
                ..ok.clone()
            },
        ),
        (
            "invalid",
            PlanInput {
                io_bytes_per_s: 0.0,
                ..ok.clone()
            },
        ),
        (
            "invalid",
            PlanInput {
                target_s: -1.0,
                ..ok.clone()
            },
        ),
        (
            "invalid",
            PlanInput {
                target_s: f64::INFINITY,
                ..ok.clone()
            },
        ),
        ("invalid", nan_cost),
        (
            "invalid",
            PlanInput {
                importance: &nan,
                ..ok.clone()
            },
        ),
        ("config", over),
        ("config", overflow),
        (
            "config",
            PlanInput {
                importance: &other,
                ..ok.clone()
            },
        ),
        ("ok", ok),
    ];
    for (i, (expected, inp)) in cases.iter().enumerate() {
        let got = match plan(inp) {
            Ok(_) => "ok",
            Err(Error::InvalidInput(_)) => "invalid",
            Err(Error::Config(_)) => "config",
            Err(_) => "other",
        };
        assert_eq!(got, *expected, "case {i}");
    }
}

#[test]
fn compute_costs_come_from_a_cost_model_and_scale_with_it() {
    use collab_core::cost::{MeasuredProfile, ProfilePoint, Scaled};
    let mut points = vec![
        ProfilePoint {
            work: Workload::Embed {
                batch: 1,
                tokens: 20,
            },
            seconds: 0.001,
        },
        ProfilePoint {
            work: Workload::Head {
                batch: 1,
                tokens: 20,
            },
            seconds: 0.0005,
        },
    ];
    for f in FIDELITIES {
        points.push(ProfilePoint {
            work: Workload::Shard {
                bits: f.bits(),
                tokens: 20,
            },
            seconds: 1e-3 * f64::from(f.bits()),
        });
    }
    let measured = MeasuredProfile {
        backend: "test".into(),
        model: "m".into(),
        layers: 2,
        points,
        estimate: None,
    };
    let c = ComputeCosts::from_cost_model(&measured, 20, 0.0002, 99).expect("measured");
    assert_eq!(
        (c.embed_s, c.head_s, c.per_layer_s, c.working_bytes),
        (0.001, 0.0005, 0.0002, 99)
    );
    assert_eq!(c.per_shard_s[Fidelity::Bits(4).index()], 0.004);
    assert_eq!(c.per_shard_s[Fidelity::F32.index()], 0.032);
    let slow = Scaled {
        inner: std::sync::Arc::new(measured),
        factor: 2.0,
        label: "x2".into(),
    };
    let s = ComputeCosts::from_cost_model(&slow, 20, 0.0002, 99).expect("scaled");
    assert_eq!(s.per_shard_s[Fidelity::Bits(4).index()], 0.008);
    assert!(ComputeCosts::from_cost_model(&RooflineLess, 20, 0.0, 0).is_err());
}

/// A cost model with no data at all.
#[derive(Debug)]
struct RooflineLess;

impl collab_core::cost::CostModel for RooflineLess {
    fn name(&self) -> String {
        "none".into()
    }

    fn seconds(&self, work: &Workload) -> collab_core::Result<f64> {
        Err(Error::NoPrediction {
            model: self.name(),
            workload: work.to_string(),
            reason: "no data".into(),
        })
    }
}

#[test]
fn preloaded_pairs_each_preloaded_shard_with_its_planned_fidelity() {
    let p = Plan {
        layers: vec![
            vec![(0, Fidelity::Bits(4)), (2, Fidelity::F32)],
            vec![(1, Fidelity::Bits(2))],
        ],
        preload: vec![
            ShardKey { layer: 0, shard: 0 },
            ShardKey { layer: 0, shard: 2 },
        ],
        start_s: 0.0,
        predicted_latency_s: 0.0,
        importance: 0.0,
        peak_bytes: 0,
    };
    assert_eq!(
        p.preloaded(),
        vec![
            (ShardKey { layer: 0, shard: 0 }, Fidelity::Bits(4)),
            (ShardKey { layer: 0, shard: 2 }, Fidelity::F32)
        ]
    );
}
