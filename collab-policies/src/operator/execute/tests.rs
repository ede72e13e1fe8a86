//! Split execution reproduces the unsplit decoder's tokens exactly, moves the bytes its plans
//! promise, and turns unrunnable plans into typed errors.

use proptest::prelude::*;

use collab_backends::candle::CandleBackend;
use collab_backends::reference::ReferenceBackend;
use collab_core::graph::{DecoderConfig, OpClass, OpGraph, Operator};
use collab_core::model::Decoder;

use super::*;
use crate::operator::{DeviceSpec, Link, Pricing, Roofline};

const SEED: u64 = 0x5eed_0007;
const PROMPT: [u32; 5] = [3, 141, 59, 26, 5];
const STEPS: usize = 4;

/// The machines plans are priced on (the executor ignores the prices).
struct Machines {
    device: Roofline,
    cloud: Roofline,
}

impl Machines {
    fn new() -> Self {
        Machines {
            device: Roofline::new(DeviceSpec::snapdragon_8s_gen3()).expect("valid"),
            cloud: Roofline::new(DeviceSpec::a100()).expect("valid"),
        }
    }

    fn pricing(&self) -> Pricing<'_> {
        Pricing {
            device: &self.device,
            cloud: &self.cloud,
            cloud_price: 4e-5,
            link: Link {
                bandwidth: 1e7,
                rtt: 0.01,
            },
        }
    }

    /// The plan putting operator `i` on `side_of(graph, i, op)`.
    fn plan(
        &self,
        graph: &OpGraph,
        side_of: &dyn Fn(&OpGraph, usize, &Operator) -> Side,
    ) -> Result<Plan> {
        let sides: Vec<Side> = (graph.ops.iter().enumerate())
            .map(|(i, o)| side_of(graph, i, o))
            .collect();
        Plan::build(graph, &sides, &self.pricing())
    }
}

fn executor(cfg: &DecoderConfig) -> SplitExecutor<CandleBackend, CandleBackend> {
    SplitExecutor::seeded(CandleBackend::cpu(), CandleBackend::cpu(), cfg, SEED).expect("build")
}

fn unsplit(cfg: &DecoderConfig, prompt: &[u32], steps: usize) -> Vec<u32> {
    Decoder::seeded(CandleBackend::cpu(), cfg, SEED)
        .expect("build")
        .generate(prompt, steps)
        .expect("generate")
}

/// Runs the placement `side_of` in every stage and checks tokens and bytes; returns the
/// generation.
fn check(
    cfg: &DecoderConfig,
    prompt: &[u32],
    steps: usize,
    side_of: &dyn Fn(&OpGraph, usize, &Operator) -> Side,
) -> Generation {
    let machines = Machines::new();
    let mut plans = 0;
    let g = executor(cfg)
        .generate(prompt, steps, |graph| {
            plans += 1;
            machines.plan(graph, side_of)
        })
        .expect("split generation");
    assert_eq!(plans, steps + 1);
    assert_eq!(g.tokens, unsplit(cfg, prompt, steps), "tokens differ");
    assert_eq!(g.bytes_moved, g.planned_bytes);
    g
}

fn all(side: Side) -> impl Fn(&OpGraph, usize, &Operator) -> Side {
    move |_, _, _| side
}

#[test]
fn all_on_the_device_moves_nothing() {
    let cfg = DecoderConfig::llama_tiny();
    let g = check(&cfg, &PROMPT, STEPS, &all(Side::Device));
    assert_eq!((g.bytes_moved, g.messages), (0, 0));
    let ops = collab_core::graph::LayerGraph::decoder(&cfg)
        .expect("valid")
        .lower(Stage::Decode { past: 1 })
        .ops
        .len();
    assert_eq!(g.op_times.len(), (STEPS + 1) * ops);
    assert!(g.op_times.iter().all(|t| t.side == Side::Device));
}

#[test]
fn all_on_the_cloud_sends_the_tokens_and_returns_the_result() {
    let g = check(
        &DecoderConfig::llama_tiny(),
        &PROMPT,
        STEPS,
        &all(Side::Cloud),
    );
    assert_eq!(g.messages, 2 * (STEPS + 1));
    // Prompt ids, then one id per step, each way one id back.
    let ids = PROMPT.len() + STEPS + (STEPS + 1);
    assert_eq!(g.bytes_moved, 4 * ids as u64);
}

#[test]
fn alternating_layers_match_the_unsplit_tokens() {
    let g = check(
        &DecoderConfig::llama_tiny(),
        &PROMPT,
        STEPS,
        &|_, _, o| match o.layer {
            Some(l) if l % 2 == 1 => Side::Cloud,
            _ => Side::Device,
        },
    );
    assert!(g.messages >= 2 * (STEPS + 1));
}

fn attention_on_cloud(_: &OpGraph, _: usize, o: &Operator) -> Side {
    match o.class() {
        OpClass::Attention | OpClass::Softmax => Side::Cloud,
        OpClass::Linear | OpClass::Elementwise => Side::Device,
    }
}

#[test]
fn attention_on_the_cloud_with_linears_on_the_device() {
    let g = check(
        &DecoderConfig::llama_tiny(),
        &PROMPT,
        STEPS,
        &attention_on_cloud,
    );
    assert!(g.op_times.iter().all(
        |t| matches!(t.class, OpClass::Attention | OpClass::Softmax) == (t.side == Side::Cloud)
    ));
}

#[test]
fn llama_small_with_attention_on_the_cloud() {
    check(
        &DecoderConfig::llama_small(),
        &[7, 700, 70, 1000, 1, 77],
        2,
        &attention_on_cloud,
    );
}

/// Device and cloud on different backend types still exchange values correctly (the f64
/// reference and candle agree on these tokens; a near-tie could in principle separate them).
#[test]
fn mixed_backends_exchange_values() {
    let cfg = DecoderConfig::llama_tiny();
    let machines = Machines::new();
    let mut ex = SplitExecutor::seeded(ReferenceBackend::new(), CandleBackend::cpu(), &cfg, SEED)
        .expect("build");
    let side_of = |_: &OpGraph, _: usize, o: &Operator| match o.layer {
        Some(0) => Side::Cloud,
        _ => Side::Device,
    };
    let g = ex
        .generate(&PROMPT, STEPS, |graph| machines.plan(graph, &side_of))
        .expect("split generation");
    let reference = Decoder::seeded(ReferenceBackend::new(), &cfg, SEED)
        .expect("build")
        .generate(&PROMPT, STEPS)
        .expect("generate");
    assert_eq!(g.tokens, reference);
    assert_eq!(g.bytes_moved, g.planned_bytes);
}

#[test]
fn attention_moving_sides_between_stages_is_a_typed_error() {
    let cfg = DecoderConfig::llama_tiny();
    let machines = Machines::new();
    let err = executor(&cfg)
        .generate(&PROMPT, STEPS, |graph| {
            machines.plan(
                graph,
                &|g, _, o| match (g.stage, o.kind.is_attention(), o.layer) {
                    (Stage::Decode { .. }, true, Some(0)) => Side::Cloud,
                    _ => Side::Device,
                },
            )
        })
        .expect_err("layer 0's cache is on the device");
    let msg = err.to_string();
    assert!(matches!(err, Error::Config(_)), "{err:?}");
    assert!(
        msg.contains("layer0.attn_scores") && msg.contains("KV cache"),
        "{msg}"
    );
}

#[test]
fn a_missing_transfer_names_the_operator_and_value() {
    let cfg = DecoderConfig::llama_tiny();
    let machines = Machines::new();
    let err = executor(&cfg)
        .generate(&PROMPT, 0, |graph| {
            let mut plan = machines.plan(graph, &all(Side::Cloud))?;
            plan.steps.retain(|s| {
                !matches!(
                    s,
                    Step::Transfer {
                        to: Side::Cloud,
                        ..
                    }
                )
            });
            Ok(plan)
        })
        .expect_err("the cloud lacks the token ids");
    let msg = err.to_string();
    assert!(
        msg.contains("`embed`") && msg.contains("`token_ids`"),
        "{msg}"
    );

    // A plan that never brings the result back.
    let err = executor(&cfg)
        .generate(&PROMPT, 0, |graph| {
            let mut plan = machines.plan(graph, &all(Side::Cloud))?;
            plan.steps.pop();
            Ok(plan)
        })
        .expect_err("the result stays on the cloud");
    assert!(err.to_string().contains("back to the device"), "{err}");
}

#[test]
fn bad_prompts_are_refused() {
    let cfg = DecoderConfig::llama_tiny();
    let machines = Machines::new();
    let mut ex = executor(&cfg);
    let plan = |graph: &OpGraph| machines.plan(graph, &all(Side::Cloud));
    assert!(matches!(
        ex.generate(&[], 1, plan),
        Err(Error::InvalidInput(_))
    ));
    let err = ex
        .generate(&[1, cfg.vocab as u32], 1, plan)
        .expect_err("out of vocabulary");
    assert!(err.to_string().contains("vocabulary"), "{err}");
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(16))]

    /// Any placement that keeps each layer's attention on one side, in every stage,
    /// reproduces the unsplit tokens with exactly the planned bytes.
    #[test]
    fn random_placements_reproduce_the_unsplit_tokens(
        op_sides in proptest::collection::vec(any::<bool>(), 64),
        attention_sides in proptest::collection::vec(any::<bool>(), 2),
        prompt in proptest::collection::vec(0u32..256, 1..7),
        steps in 0usize..4,
    ) {
        let side = |b: bool| if b { Side::Cloud } else { Side::Device };
        let side_of = |_: &OpGraph, i: usize, o: &Operator| match (o.kind.is_attention(), o.layer) {
            (true, Some(l)) => side(attention_sides[l % attention_sides.len()]),
            _ => side(op_sides[i % op_sides.len()]),
        };
        check(&DecoderConfig::llama_tiny(), &prompt, steps, &side_of);
    }
}
