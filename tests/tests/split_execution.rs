//! Split execution: running blocks `0..k` then `k..L` equals running `0..L`, bit for bit, for
//! every split point `k`, on batches of several requests; on candle and, with the `tch`
//! feature, on libtorch.

use collab_backends::candle::CandleBackend;
use collab_core::Backend;
use collab_core::model::{Input, Transformer};
use collab_tests::{deit_tiny, first_images, minilm};

fn check_every_split<B: Backend>(model: &Transformer<B>, input: &Input<B>) {
    let be = model.backend();
    let l = model.num_blocks();
    let full = be
        .to_vec(&model.forward(input).expect("forward"))
        .expect("v");
    for k in 0..=l {
        let h = model.embed(input).expect("embed");
        let device = model.run_blocks(h, 0..k).expect("device part");
        let server = model.run_blocks(device, k..l).expect("server part");
        let out = be.to_vec(&model.head(&server).expect("head")).expect("v");
        assert!(out == full, "split at k={k} differs from the unsplit model");
    }
}

#[test]
fn deit_tiny_split_at_every_block_is_bit_identical() {
    deit_tiny_split_at_every_block(CandleBackend::cpu());
}

#[cfg(feature = "tch")]
#[test]
fn deit_tiny_split_at_every_block_is_bit_identical_on_tch() {
    deit_tiny_split_at_every_block(collab_backends::tch::TchBackend::cpu());
}

fn deit_tiny_split_at_every_block<B: Backend>(be: B) {
    let model = deit_tiny(be.clone()).expect("load");
    let (input, _) = first_images(&be, 3).expect("images");
    check_every_split(&model, &input);
}

#[test]
fn minilm_split_at_every_block_is_bit_identical_with_padding() {
    minilm_split_at_every_block_with_padding(CandleBackend::cpu());
}

#[cfg(feature = "tch")]
#[test]
fn minilm_split_at_every_block_is_bit_identical_with_padding_on_tch() {
    minilm_split_at_every_block_with_padding(collab_backends::tch::TchBackend::cpu());
}

fn minilm_split_at_every_block_with_padding<B: Backend>(be: B) {
    let (model, tok) = minilm(be).expect("MiniLM (run `cargo xtask fetch-models`)");
    let seqs = [
        "A man is playing a flute.",
        "A woman slices an onion on a board.",
    ]
    .iter()
    .map(|s| tok.encode(s).expect("encode"))
    .collect();
    check_every_split(&model, &Input::Tokens(seqs));
}

#[test]
fn bad_ranges_and_inputs_are_typed_errors() {
    let be = CandleBackend::cpu();
    let model = deit_tiny(be.clone()).expect("load");
    let (input, _) = first_images(&be, 1).expect("images");
    let h = model.embed(&input).expect("embed");
    assert!(
        model.run_blocks(h.clone(), 3..13).is_err(),
        "past the last block"
    );
    #[allow(clippy::reversed_empty_ranges)] // the point of the check
    let reversed = 5..2;
    assert!(model.run_blocks(h, reversed).is_err(), "reversed range");
    assert!(
        model.embed(&Input::Tokens(vec![vec![1, 2]])).is_err(),
        "tokens to a ViT"
    );
    let small = be.zeros(&[1, 3, 32, 32]).expect("zeros");
    let e = model.embed(&Input::Images(small)).expect_err("wrong size");
    assert!(e.to_string().contains("224"), "{e}");
}
