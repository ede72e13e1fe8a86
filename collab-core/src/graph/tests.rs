//! The lowering against SPEC §7's table and hand-computed counts.

use super::*;

fn single_head(h: usize, f: usize, v: usize) -> DecoderConfig {
    DecoderConfig {
        name: "table".into(),
        hidden: h,
        layers: 2,
        heads: 1,
        intermediate: f,
        vocab: v,
        rms_eps: 1e-5,
        rope_theta: 10_000.0,
        dtype_bytes: 2,
    }
}

fn op<'a>(g: &'a OpGraph, name: &str) -> &'a Operator {
    g.ops
        .iter()
        .find(|o| o.name == name)
        .expect("operator exists")
}

/// SPEC §7's table, in elements (fp16 bytes are twice that), with one head (the table writes
/// the score matrix as `s^2`, which is the single-head size).
#[test]
fn matches_the_spec_table() {
    let (h, f, v) = (64u64, 160u64, 500u64);
    let g = LayerGraph::decoder(&single_head(64, 160, 500)).expect("valid");
    for s in [1u64, 7, 32] {
        let pre = g.lower(Stage::Prefill { prompt: s as usize });
        let dec = g.lower(Stage::Decode { past: s as usize });
        let b = 2;
        for proj in ["q_proj", "k_proj", "v_proj", "o_proj"] {
            let o = op(&pre, &format!("layer1.{proj}"));
            assert_eq!(o.macs, s * h * h);
            assert_eq!(o.bytes(), (2 * s * h + h * h) * b);
            let o = op(&dec, &format!("layer1.{proj}"));
            assert_eq!(o.macs, h * h);
            assert_eq!(o.bytes(), (2 * h + h * h) * b);
        }
        let o = op(&pre, "layer0.attn_scores");
        assert_eq!(o.macs, s * s * h);
        assert_eq!(o.bytes(), (2 * s * h + s * s) * b);
        let o = op(&dec, "layer0.attn_scores");
        assert_eq!(o.macs, (s + 1) * h);
        assert_eq!(o.bytes(), (h + (s + 1) * h + s + 1) * b);
        for proj in ["gate_proj", "up_proj", "down_proj"] {
            let o = op(&pre, &format!("layer0.{proj}"));
            assert_eq!(o.macs, s * h * f);
            assert_eq!(o.bytes(), (s * h + s * f + h * f) * b);
            let o = op(&dec, &format!("layer0.{proj}"));
            assert_eq!(o.macs, h * f);
            assert_eq!(o.bytes(), (h + f + h * f) * b);
        }
        // The table writes the LM head's traffic as 2h + h·h_v; it reads h and h·h_v and writes
        // h_v logits, which is what we count.
        let o = op(&dec, "lm_head");
        assert_eq!(o.macs, h * v);
        assert_eq!(o.bytes(), (h + h * v + v) * b);
    }
}

/// Hand-computed counts for a multi-head layer: h = 8, 2 heads, h' = 12, s = 3 in prefill.
#[test]
fn hand_computed_multi_head_counts() {
    let cfg = DecoderConfig {
        heads: 2,
        hidden: 8,
        intermediate: 12,
        vocab: 10,
        ..single_head(8, 12, 10)
    };
    let g = LayerGraph::decoder(&cfg)
        .expect("valid")
        .lower(Stage::Prefill { prompt: 3 });
    // 2 + per layer 17 + head 3 ... embed + 2 × 17 + final_norm, lm_head, argmax.
    assert_eq!(g.ops.len(), 1 + 2 * 17 + 3);
    let s = op(&g, "layer0.attn_scores");
    assert_eq!(s.macs, 3 * 3 * 8); // 2 heads × 3 × 3 × 4
    assert_eq!(s.flops, 144);
    assert_eq!(s.bytes_written, 2 * 3 * 3 * 2); // 18 scores, 2 bytes
    assert_eq!(g.values[s.output].shape, vec![2, 3, 3]);
    let c = op(&g, "layer0.attn_context");
    assert_eq!(c.bytes_read, (18 + 24) * 2);
    let m = op(&g, "layer1.silu_mul");
    assert_eq!(m.flops, 4 * 3 * 12);
    assert_eq!(m.bytes(), 3 * 3 * 12 * 2);
    let n = op(&g, "final_norm");
    assert_eq!(n.bytes_read, (8 + 8) * 2);
    let am = op(&g, "argmax");
    assert_eq!(g.values[am.output].bytes, 4);
    assert_eq!(g.result, am.output);
    // LLaMA-2-7B parameters: 6.74 billion.
    let p = DecoderConfig::llama2_7b().parameters();
    assert!((6_738_000_000..6_739_000_000).contains(&p), "{p}");
}

#[test]
fn weights_read_once_per_stage_match_the_parameter_count() {
    let cfg = DecoderConfig::llama_tiny();
    let g = LayerGraph::decoder(&cfg)
        .expect("valid")
        .lower(Stage::Decode { past: 5 });
    let h = cfg.hidden as u64;
    // The embedding reads one row, not the table.
    let weights = cfg.parameters() - (cfg.vocab as u64 - 1) * h;
    assert_eq!(g.weight_bytes(), weights * cfg.dtype_bytes as u64);
}

#[test]
fn inputs_come_from_earlier_operators_the_request_or_the_cache() {
    for stage in [Stage::Prefill { prompt: 4 }, Stage::Decode { past: 9 }] {
        let g = LayerGraph::decoder(&DecoderConfig::llama_tiny())
            .expect("valid")
            .lower(stage);
        for (i, o) in g.ops.iter().enumerate() {
            assert_eq!(g.values[o.output].source, ValueSource::Op { op: i });
            for &v in &o.inputs {
                match g.values[v].source {
                    ValueSource::Op { op } => assert!(op < i, "{} reads a later value", o.name),
                    ValueSource::RequestInput => assert_eq!(o.kind, OpKind::Embed),
                    ValueSource::KvCache { layer, .. } => {
                        assert!(o.kind.is_attention());
                        assert_eq!(o.layer, Some(layer));
                        assert_eq!(g.values[v].bytes, (stage.past_tokens() * 64 * 4) as u64);
                    }
                }
            }
        }
    }
}

#[test]
fn live_sets_hold_what_crosses_a_cut() {
    let g = LayerGraph::decoder(&DecoderConfig::llama_tiny())
        .expect("valid")
        .lower(Stage::Prefill { prompt: 4 });
    let live = g.live_sets();
    let name =
        |i: usize| -> Vec<&str> { live[i].iter().map(|&v| g.values[v].name.as_str()).collect() };
    assert_eq!(name(0), vec!["token_ids"]);
    assert_eq!(name(1), vec!["embed"]);
    // Between k_proj and v_proj: the residual input, the normed input (v still needs it), q, k.
    let v_proj = g
        .ops
        .iter()
        .position(|o| o.name == "layer0.v_proj")
        .expect("exists");
    assert_eq!(
        name(v_proj),
        vec![
            "embed",
            "layer0.attn_norm",
            "layer0.q_proj",
            "layer0.k_proj"
        ]
    );
    assert_eq!(name(g.ops.len()), vec!["argmax"]);
}

#[test]
fn presets_validate_and_unknown_names_are_refused() {
    for name in DECODER_PRESETS {
        DecoderConfig::preset(name)
            .expect("known")
            .validate()
            .expect("valid");
    }
    let err = DecoderConfig::preset("gpt-5").expect_err("unknown");
    assert!(err.to_string().contains("llama2-7b"), "{err}");
    let bad = DecoderConfig {
        heads: 3,
        ..DecoderConfig::llama_tiny()
    };
    assert!(LayerGraph::decoder(&bad).is_err());
}
