//! Cutting a layer and assembling it back is the identity, bit for bit.

use collab_backends::candle::CandleBackend;
use collab_core::model::Transformer;

use super::test_models::{tiny_bert, tiny_vit};
use super::*;

fn round_trips(model: &Transformer<CandleBackend>) {
    let g = ShardGeometry::of(model.config().encoder()).expect("geometry");
    for layer in 0..g.layers {
        let (shards, resident) = cut_layer(model, layer).expect("cut");
        assert_eq!(shards.len(), g.heads);
        for w in &shards {
            assert_eq!(
                w.attention.qkv.len() + w.attention.o.len(),
                g.attention_weights()
            );
            assert_eq!(w.ffn.fc1.len() + w.ffn.fc2.len(), g.ffn_weights());
            assert_eq!(
                w.attention.qkv_bias.len() + w.ffn.fc1_bias.len(),
                g.shard_biases()
            );
        }
        let back = assemble_layer(&g, &shards).expect("assemble");
        let dense = layer_weights(model, layer).expect("dense");
        let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
        assert_eq!(bits(&back.qkv), bits(&dense.qkv), "layer {layer} qkv");
        assert_eq!(bits(&back.qkv_bias), bits(&dense.qkv_bias));
        assert_eq!(bits(&back.proj), bits(&dense.proj), "layer {layer} proj");
        assert_eq!(bits(&back.fc1), bits(&dense.fc1));
        assert_eq!(bits(&back.fc1_bias), bits(&dense.fc1_bias));
        assert_eq!(bits(&back.fc2), bits(&dense.fc2), "layer {layer} fc2");
        let block = &model.blocks()[layer];
        let be = model.backend();
        let v = |t| be.to_vec(t).expect("to_vec");
        assert_eq!(resident.norm1_gamma, v(&block.norm1.gamma));
        assert_eq!(resident.norm2_beta, v(&block.norm2.beta));
        let proj_b = block.attn.proj.b.as_ref().expect("bias");
        assert_eq!(resident.proj_bias, v(proj_b));
        assert_eq!(resident.eps, block.norm1.eps);
    }
}

#[test]
fn cut_then_assemble_is_exact_on_tiny_vit() {
    round_trips(&tiny_vit(3).expect("tiny vit"));
}

#[test]
fn cut_then_assemble_is_exact_on_tiny_bert() {
    round_trips(&tiny_bert(4).expect("tiny bert"));
}

#[test]
fn cut_then_assemble_is_exact_on_deit_tiny() {
    let model = collab_core::fixtures::deit_tiny(CandleBackend::cpu()).expect("deit-tiny");
    round_trips(&model);
}

#[test]
fn shard_zero_holds_head_zero_rows_and_columns() {
    let model = tiny_bert(5).expect("tiny bert");
    let g = ShardGeometry::of(model.config().encoder()).expect("geometry");
    let (d, hd, s) = (g.hidden, g.head_dim, g.ffn_slice());
    let dense = layer_weights(&model, 1).expect("dense");
    let (shards, _) = cut_layer(&model, 1).expect("cut");
    let h = 2;
    let w = &shards[h];
    // key row 1 of head h is row d + h hd + 1 of qkv
    let r = d + h * hd + 1;
    assert_eq!(
        w.attention.qkv[(hd + 1) * d..(hd + 2) * d],
        dense.qkv[r * d..(r + 1) * d]
    );
    // output-projection entry (row 5, column h hd + 3)
    assert_eq!(w.attention.o[5 * hd + 3], dense.proj[5 * d + h * hd + 3]);
    // fc2 entry (row 7, neuron h s + 2)
    assert_eq!(
        w.ffn.fc2[7 * s + 2],
        dense.fc2[7 * g.intermediate + h * s + 2]
    );
}

#[test]
fn bad_inputs_are_typed_errors() {
    let model = tiny_vit(1).expect("tiny vit");
    assert!(matches!(cut_layer(&model, 3), Err(Error::InvalidInput(_))));
    let g = ShardGeometry::of(model.config().encoder()).expect("geometry");
    let (mut shards, _) = cut_layer(&model, 0).expect("cut");
    assert!(matches!(
        assemble_layer(&g, &shards[..1]),
        Err(Error::Shape { .. })
    ));
    shards[1].ffn.fc2.pop();
    assert!(matches!(
        assemble_layer(&g, &shards),
        Err(Error::Shape { .. })
    ));
}

#[test]
fn relative_error_is_zero_for_equal_and_positive_otherwise() {
    let model = tiny_vit(2).expect("tiny vit");
    let (shards, _) = cut_layer(&model, 0).expect("cut");
    assert_eq!(shards[0].relative_error(&shards[0]), 0.0);
    let e = shards[0].relative_error(&shards[1]);
    assert!(e > 0.5 && e.is_finite(), "{e}");
}
