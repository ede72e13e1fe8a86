//! Placement policies: the conformance suite every policy runs, exactness against brute
//! force, and exact never worse than greedy.

use proptest::prelude::*;

use collab_core::graph::{DecoderConfig, LayerGraph, OpGraph, Stage};

use super::chain::{Chain, slot};
use super::*;

/// A random small decoder, stage, pair of machines, link, target and pins.
#[derive(Debug, Clone)]
struct Case {
    config: DecoderConfig,
    stage: Stage,
    device: DeviceSpec,
    cloud: DeviceSpec,
    link: Link,
    /// Target as a fraction between the fastest placement's latency and device-only's.
    target_mix: f64,
    /// Per layer: free, device or cloud attention.
    attention_pins: Vec<u8>,
}

fn case(max_layers: usize) -> impl Strategy<Value = Case> {
    (
        1..=max_layers,
        prop_oneof![Just(2usize), Just(4)],
        1usize..=3,
        prop_oneof![
            (1usize..64).prop_map(|p| Stage::Prefill { prompt: p }),
            (0usize..256).prop_map(|p| Stage::Decode { past: p })
        ],
        (0.05f64..5.0, 1.0f64..50.0),
        (10.0f64..400.0, 200.0f64..3000.0),
        (1e4f64..1e9, 0.0f64..0.05),
        -0.2f64..1.2,
        proptest::collection::vec(0u8..3, max_layers),
    )
        .prop_map(
            |(
                layers,
                heads,
                width,
                stage,
                (dt, db),
                (ct, cb),
                (bw, rtt),
                target_mix,
                attention_pins,
            )| Case {
                config: DecoderConfig {
                    name: "case".into(),
                    hidden: 32 * width * heads / 2,
                    layers,
                    heads,
                    intermediate: 96 * width,
                    vocab: 500,
                    rms_eps: 1e-5,
                    rope_theta: 1e4,
                    dtype_bytes: 2,
                },
                stage,
                device: DeviceSpec {
                    name: "d".into(),
                    peak_flops: dt * 1e9,
                    bandwidth: db * 1e9,
                    price_per_second: 0.0,
                },
                cloud: DeviceSpec {
                    name: "c".into(),
                    peak_flops: ct * 1e9,
                    bandwidth: cb * 1e9,
                    price_per_second: 1e-5,
                },
                link: Link { bandwidth: bw, rtt },
                target_mix,
                attention_pins,
            },
        )
}

struct Setup {
    graph: OpGraph,
    device: Roofline,
    cloud: Roofline,
    link: Link,
    price: f64,
    target: f64,
    pins: Pins,
}

impl Setup {
    fn new(c: &Case) -> Setup {
        let graph = LayerGraph::decoder(&c.config)
            .expect("valid")
            .lower(c.stage);
        let pins: Pins = graph
            .ops
            .iter()
            .map(|o| match (o.kind.is_attention(), o.layer) {
                (true, Some(l)) => match c.attention_pins[l] {
                    1 => Some(Side::Device),
                    2 => Some(Side::Cloud),
                    _ => None,
                },
                _ => None,
            })
            .collect();
        let mut s = Setup {
            graph,
            device: Roofline::new(c.device.clone()).expect("valid"),
            cloud: Roofline::new(c.cloud.clone()).expect("valid"),
            link: c.link,
            price: c.cloud.price_per_second,
            target: 0.0,
            pins,
        };
        let chain = Chain::new(&s.graph, &s.pricing(), &s.pins).expect("valid pins");
        let fast = chain.latency(&super::policy::fastest(&chain));
        let slow = Everything(Side::Device)
            .place(&s.graph, &s.pricing(), 0.0, &s.pins)
            .expect("plan")
            .plan
            .latency;
        s.target = fast + c.target_mix * (slow - fast).max(0.0);
        s
    }

    fn pricing(&self) -> Pricing<'_> {
        Pricing {
            device: &self.device,
            cloud: &self.cloud,
            cloud_price: self.price,
            link: self.link,
        }
    }
}

/// What every placement policy promises (see [`PlacementPolicy`]).
fn conforms(policy: &dyn PlacementPolicy, s: &Setup) {
    let p = policy
        .place(&s.graph, &s.pricing(), s.target, &s.pins)
        .expect("places");
    let plan = &p.plan;
    plan.validate(&s.graph)
        .unwrap_or_else(|e| panic!("{}: invalid plan: {e}", policy.name()));
    // Reported latency and cost are the sums over the plan's steps.
    let sum: f64 = plan.steps.iter().map(Step::seconds).sum();
    assert!(
        (plan.latency - sum).abs() <= 1e-9 * sum.max(1e-12),
        "{}: {} vs {sum}",
        policy.name(),
        plan.latency
    );
    let cloud: f64 = plan
        .steps
        .iter()
        .filter_map(|st| match st {
            Step::Compute {
                side: Side::Cloud,
                seconds,
                ..
            } => Some(*seconds),
            _ => None,
        })
        .sum();
    assert!((plan.cost - cloud * s.price).abs() <= 1e-9 * plan.cost.max(1e-18));
    // Every change of side between consecutive computations goes through a transfer.
    let mut at = Side::Device;
    for st in &plan.steps {
        match st {
            Step::Transfer { to, .. } => at = *to,
            Step::Compute { side, .. } => assert_eq!(
                *side,
                at,
                "{}: a dependency crosses without a transfer",
                policy.name()
            ),
        }
    }
    assert_eq!(at, Side::Device, "the result ends on the device");
    for (i, pin) in s.pins.iter().enumerate() {
        if let Some(side) = pin {
            assert_eq!(
                plan.sides[i],
                *side,
                "{}: pin on {} broken",
                policy.name(),
                s.graph.ops[i].name
            );
        }
    }
    assert_eq!(p.met, plan.latency <= s.target * (1.0 + 1e-12));
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn every_policy_conforms(c in case(3)) {
        let s = Setup::new(&c);
        for policy in [&Greedy as &dyn PlacementPolicy, &Exact, &Everything(Side::Device), &Everything(Side::Cloud)] {
            conforms(policy, &s);
        }
    }

    #[test]
    fn exact_is_never_worse_than_greedy(c in case(3)) {
        let s = Setup::new(&c);
        let g = Greedy.place(&s.graph, &s.pricing(), s.target, &s.pins).expect("greedy");
        let e = Exact.place(&s.graph, &s.pricing(), s.target, &s.pins).expect("exact");
        if g.met {
            prop_assert!(e.met, "greedy met the target and exact did not");
            prop_assert!(e.plan.cost <= g.plan.cost * (1.0 + 1e-9) + 1e-18, "exact {} > greedy {}", e.plan.cost, g.plan.cost);
        }
        // Whatever either finds, a target some placement meets is met by exact.
        let fast = Chain::new(&s.graph, &s.pricing(), &s.pins).expect("chain");
        let fastest = fast.latency(&super::policy::fastest(&fast));
        prop_assert_eq!(e.met, fastest <= s.target * (1.0 + 1e-12));
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(12))]

    /// One layer (19 units): enumerate all 2^19 unit placements.
    #[test]
    fn exact_matches_brute_force(c in case(1)) {
        let s = Setup::new(&c);
        let chain = Chain::new(&s.graph, &s.pricing(), &s.pins).expect("chain");
        let n = chain.units.len();
        prop_assert!(n <= 20);
        let mut best = f64::INFINITY;
        let mut sides = vec![Side::Device; n];
        'all: for mask in 0u32..(1 << n) {
            for (u, side) in sides.iter_mut().enumerate() {
                *side = if mask >> u & 1 == 1 { Side::Cloud } else { Side::Device };
                if !chain.units[u].allowed[slot(*side)] {
                    continue 'all;
                }
            }
            if chain.latency(&sides) <= s.target * (1.0 + 1e-12) {
                best = best.min(chain.cloud_seconds(&sides));
            }
        }
        let e = Exact.place(&s.graph, &s.pricing(), s.target, &s.pins).expect("exact");
        prop_assert_eq!(e.met, best.is_finite());
        if best.is_finite() {
            let got = e.plan.cloud_seconds;
            prop_assert!((got - best).abs() <= 1e-9 * best.max(1e-15), "exact {got} vs brute force {best}");
        }
    }
}

#[test]
fn a_broken_plan_is_caught_by_validate() {
    let graph = LayerGraph::decoder(&DecoderConfig::llama_tiny())
        .expect("valid")
        .lower(Stage::Decode { past: 3 });
    let (d, c) = (
        Roofline::new(DeviceSpec::jetson_nano()).expect("ok"),
        Roofline::new(DeviceSpec::a100()).expect("ok"),
    );
    let pricing = Pricing {
        device: &d,
        cloud: &c,
        cloud_price: 4e-5,
        link: Link {
            bandwidth: 1e7,
            rtt: 0.01,
        },
    };
    let sides = vec![Side::Cloud; graph.ops.len()];
    let mut plan = Plan::build(&graph, &sides, &pricing).expect("builds");
    plan.validate(&graph).expect("valid as built");
    // Drop the first transfer: the embedding on the cloud no longer has its token ids.
    plan.steps.remove(0);
    let err = plan.validate(&graph).expect_err("caught");
    assert!(err.to_string().contains("token_ids"), "{err}");
    // Splitting a layer's attention is refused when building.
    let mut split = vec![Side::Device; graph.ops.len()];
    let scores = graph
        .ops
        .iter()
        .position(|o| o.name == "layer0.attn_scores")
        .expect("exists");
    split[scores] = Side::Cloud;
    assert!(Plan::build(&graph, &split, &pricing).is_err());
}

fn group_h() -> (Roofline, Roofline) {
    (
        Roofline::new(DeviceSpec::snapdragon_8s_gen3()).expect("ok"),
        Roofline::new(DeviceSpec::a100()).expect("ok"),
    )
}

#[test]
fn request_cost_is_the_sum_over_its_steps_and_targets_hold() {
    let (d, c) = group_h();
    let pricing = Pricing {
        device: &d,
        cloud: &c,
        cloud_price: 4e-5,
        link: Link {
            bandwidth: 12.5e6,
            rtt: 0.01,
        },
    };
    let cfg = DecoderConfig {
        dtype_bytes: 2,
        hidden: 512,
        intermediate: 1376,
        layers: 4,
        heads: 8,
        ..DecoderConfig::llama_small()
    };
    let layers = LayerGraph::decoder(&cfg).expect("valid");
    let (prompt, decode) = (24, 9);
    // A target tight enough that both the device and the cloud do work.
    let sla = Sla {
        ttft: 2e-3,
        tpot: 1.5e-3,
    };
    for policy in [
        &Greedy as &dyn PlacementPolicy,
        &Exact,
        &Everything(Side::Cloud),
    ] {
        let r = plan_request(policy, &layers, prompt, decode, sla, &pricing).expect("plans");
        let mut cost = Plan::build(
            &layers.lower(Stage::Prefill { prompt }),
            &r.prefill.plan.sides,
            &pricing,
        )
        .expect("ok")
        .cost;
        for past in prompt..prompt + decode {
            let g = layers.lower(Stage::Decode { past });
            let p = Plan::build(&g, &r.decode.plan.sides, &pricing)
                .expect("same placement is valid at every step");
            p.validate(&g).expect("valid");
            assert!(
                p.latency <= r.tpot * (1.0 + 1e-12),
                "the last step is the slowest"
            );
            cost += p.cost;
        }
        assert!(
            (cost - r.cost).abs() <= 1e-9 * cost,
            "{}: {cost} vs {}",
            policy.name(),
            r.cost
        );
        if r.met {
            assert!(r.ttft <= sla.ttft * (1.0 + 1e-12) && r.tpot <= sla.tpot * (1.0 + 1e-12));
        }
    }
    let cloud = plan_request(
        &Everything(Side::Cloud),
        &layers,
        prompt,
        decode,
        sla,
        &pricing,
    )
    .expect("plans");
    let exact = plan_request(&Exact, &layers, prompt, decode, sla, &pricing).expect("plans");
    if cloud.met {
        assert!(exact.met && exact.cost <= cloud.cost);
    }
    assert!(plan_request(&Exact, &layers, 0, 3, sla, &pricing).is_err());
}
