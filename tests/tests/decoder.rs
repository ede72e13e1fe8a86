//! The LLaMA-style decoder on real backends: KV-cache decoding equals recomputing the whole
//! sequence, candle agrees with the f64 reference, the operator interpreter reproduces the
//! direct forward bit for bit, and bad inputs are typed errors.

use collab_backends::candle::CandleBackend;
use collab_backends::reference::ReferenceBackend;
use collab_core::graph::{DecoderConfig, LayerGraph, OpGraph, Stage};
use collab_core::model::decoder::{Decoder, Held, KvCache, passed_inputs};
use collab_core::{Backend, Error};

const SEED: u64 = 11;
const PROMPT: [u32; 6] = [1, 17, 200, 42, 5, 99];

fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

/// Logits after the prompt and after each fed-back token, with the KV cache, against the
/// logits of the whole sequence so far recomputed with a fresh cache.
fn cached_equals_recomputed<B: Backend>(backend: B) {
    let cfg = DecoderConfig::llama_tiny();
    let dec = Decoder::seeded(backend, &cfg, SEED).expect("build");
    let be = dec.backend().clone();
    let mut cache = dec.new_cache();
    let mut seq = PROMPT.to_vec();
    let mut logits = dec.forward(&seq, &mut cache).expect("prefill");
    for step in 0..5 {
        let fresh = dec.forward(&seq, &mut dec.new_cache()).expect("recompute");
        let (a, b) = (
            be.to_vec(&logits).expect("v"),
            be.to_vec(&fresh).expect("v"),
        );
        let d = max_diff(&a, &b);
        assert!(
            d < 1e-4,
            "{} step {step}: cached vs recomputed {d}",
            be.name()
        );
        let next = argmax(&a);
        seq.push(next);
        logits = dec.forward(&[next], &mut cache).expect("decode");
        assert_eq!(cache.tokens().expect("boundary"), seq.len());
    }
}

fn argmax(v: &[f32]) -> u32 {
    let mut best = 0;
    for (i, x) in v.iter().enumerate() {
        if *x > v[best] {
            best = i;
        }
    }
    best as u32
}

#[test]
fn kv_cache_decoding_equals_recomputing_the_sequence() {
    cached_equals_recomputed(ReferenceBackend::new());
    cached_equals_recomputed(CandleBackend::cpu());
}

#[test]
fn candle_agrees_with_the_reference_and_activations_stay_small() {
    let cfg = DecoderConfig::llama_tiny();
    let c = Decoder::seeded(CandleBackend::cpu(), &cfg, SEED).expect("build");
    let r = Decoder::seeded(ReferenceBackend::new(), &cfg, SEED).expect("build");
    let lc = c
        .backend()
        .to_vec(&c.forward(&PROMPT, &mut c.new_cache()).expect("candle"))
        .expect("v");
    let lr = r
        .backend()
        .to_vec(&r.forward(&PROMPT, &mut r.new_cache()).expect("reference"))
        .expect("v");
    assert!(max_diff(&lc, &lr) < 1e-4, "{}", max_diff(&lc, &lr));
    // Seeded weights keep the logits O(1): finite, spread, not huge.
    let mean = lc.iter().sum::<f32>() / lc.len() as f32;
    let std = (lc.iter().map(|x| (x - mean).powi(2)).sum::<f32>() / lc.len() as f32).sqrt();
    assert!(lc.iter().all(|x| x.is_finite() && x.abs() < 50.0));
    assert!(std > 0.1, "logit spread {std}");
    let tokens = c.generate(&PROMPT, 8).expect("generate");
    assert_eq!(tokens, r.generate(&PROMPT, 8).expect("generate"));
    assert_eq!(tokens.len(), 9);
    let distinct: std::collections::BTreeSet<_> = tokens.iter().collect();
    assert!(distinct.len() > 1, "degenerate generation {tokens:?}");
}

/// Runs every operator of `graph` in order on one decoder; returns the value store.
fn interpret<B: Backend>(
    dec: &Decoder<B>,
    graph: &OpGraph,
    tokens: Vec<u32>,
    cache: &mut KvCache<B>,
) -> Vec<Option<Held<B>>> {
    let mut store: Vec<Option<Held<B>>> = vec![None; graph.values.len()];
    store[0] = Some(Held::Tokens(tokens));
    for (i, o) in graph.ops.iter().enumerate() {
        let inputs: Vec<&Held<B>> = passed_inputs(graph, o)
            .map(|v| store[v].as_ref().expect("computed earlier"))
            .collect();
        let out = dec.run_op(graph, i, &inputs, cache).expect("run_op");
        store[o.output] = Some(out);
    }
    store
}

#[test]
fn the_interpreter_reproduces_the_direct_forward_bit_for_bit() {
    let cfg = DecoderConfig::llama_tiny();
    let dec = Decoder::seeded(CandleBackend::cpu(), &cfg, SEED).expect("build");
    let be = dec.backend();
    let layers = LayerGraph::decoder(&cfg).expect("valid");
    let (mut direct, mut ops) = (dec.new_cache(), dec.new_cache());
    let mut input = PROMPT.to_vec();
    for i in 0..4 {
        let stage = if i == 0 {
            Stage::Prefill {
                prompt: PROMPT.len(),
            }
        } else {
            Stage::Decode {
                past: PROMPT.len() + i - 1,
            }
        };
        let graph = layers.lower(stage);
        let want = be
            .to_vec(&dec.forward(&input, &mut direct).expect("forward"))
            .expect("v");
        let store = interpret(&dec, &graph, input.clone(), &mut ops);
        let lm_head = graph
            .ops
            .iter()
            .find(|o| o.name == "lm_head")
            .expect("lm_head");
        let Some(Held::Tensor(got)) = &store[lm_head.output] else {
            panic!("lm_head produced no tensor");
        };
        assert!(be.to_vec(got).expect("v") == want, "{stage}: logits differ");
        let Some(Held::Tokens(next)) = &store[graph.result] else {
            panic!("argmax produced no token");
        };
        assert_eq!(next.len(), 1);
        input = next.clone();
    }
}

#[test]
fn bad_inputs_are_typed_errors() {
    let cfg = DecoderConfig::llama_tiny();
    let dec = Decoder::seeded(CandleBackend::cpu(), &cfg, SEED).expect("build");
    let be = dec.backend();
    let graph = LayerGraph::decoder(&cfg)
        .expect("valid")
        .lower(Stage::Prefill { prompt: 3 });
    let mut cache = dec.new_cache();
    let tokens = Held::Tokens(vec![1, 2, 3]);
    let x = Held::Tensor(be.zeros(&[3, cfg.hidden]).expect("zeros"));
    let wrong = Held::Tensor(be.zeros(&[3, cfg.hidden + 1]).expect("zeros"));
    let op = |name: &str| {
        graph
            .ops
            .iter()
            .position(|o| o.name == name)
            .expect("exists")
    };
    let invalid =
        |r: collab_core::Result<Held<CandleBackend>>| matches!(r, Err(Error::InvalidInput(_)));
    let mut run =
        |i: usize, inputs: &[&Held<CandleBackend>]| dec.run_op(&graph, i, inputs, &mut cache);
    assert!(invalid(run(op("embed"), &[&x])));
    assert!(invalid(run(op("embed"), &[&Held::Tokens(vec![1, 2])])));
    assert!(invalid(run(op("embed"), &[&Held::Tokens(vec![1, 2, 256])])));
    assert!(invalid(run(op("layer0.q_proj"), &[&tokens])));
    assert!(invalid(run(op("layer0.attn_residual"), &[&x])));
    assert!(invalid(run(graph.ops.len(), &[&x])));
    assert!(run(op("layer0.q_proj"), &[&wrong]).is_err());
    assert!(run(op("layer0.rope_q"), &[&wrong]).is_err());
    // Scores extend the key cache; a whole pass then finds it mid-pass.
    let q = run(op("layer0.attn_scores"), &[&x, &x]).expect("scores");
    assert!(matches!(q, Held::Tensor(_)));
    let err = dec
        .forward(&[1], &mut cache)
        .expect_err("cache not at a boundary");
    assert!(err.to_string().contains("pass boundary"), "{err}");
    // A decode step on an empty cache: its layer's attention ran elsewhere.
    let decode = LayerGraph::decoder(&cfg)
        .expect("valid")
        .lower(Stage::Decode { past: 4 });
    let one = Held::Tensor(be.zeros(&[1, cfg.hidden]).expect("zeros"));
    let s = decode
        .ops
        .iter()
        .position(|o| o.name == "layer1.attn_scores")
        .expect("exists");
    let err = dec
        .run_op(&decode, s, &[&one, &one], &mut dec.new_cache())
        .expect_err("empty cache");
    assert!(err.to_string().contains("KV cache"), "{err}");
    // A graph of another model.
    let other = LayerGraph::decoder(&DecoderConfig::llama_small())
        .expect("valid")
        .lower(Stage::Prefill { prompt: 3 });
    assert!(invalid(dec.run_op(
        &other,
        0,
        &[&tokens],
        &mut dec.new_cache()
    )));
    assert!(invalid(dec.generate(&[], 1).map(Held::Tokens)));
    // Hand-edited graphs: an operator short of an input, a value id outside the graph.
    let res = op("layer0.attn_residual");
    let mut short = graph.clone();
    short.ops[res].inputs.truncate(1);
    assert!(invalid(dec.run_op(
        &short,
        res,
        &[&x],
        &mut dec.new_cache()
    )));
    short.ops[res].inputs = vec![usize::MAX];
    assert!(invalid(dec.run_op(
        &short,
        res,
        &[&x],
        &mut dec.new_cache()
    )));
}

#[test]
fn the_same_seed_gives_the_same_weights_on_every_instance() {
    let cfg = DecoderConfig::llama_tiny();
    let a = Decoder::seeded(CandleBackend::cpu(), &cfg, SEED).expect("build");
    let b = Decoder::seeded(CandleBackend::cpu(), &cfg, SEED).expect("build");
    let c = Decoder::seeded(CandleBackend::cpu(), &cfg, SEED + 1).expect("build");
    let w = |d: &Decoder<CandleBackend>| d.backend().to_vec(&d.layers()[1].k).expect("v");
    assert!(w(&a) == w(&b));
    assert!(w(&a) != w(&c));
}
