//! The real checkpoints against independent float64 numpy forward passes
//! (`../shared/fixtures/reference/*.json`), on candle and, with the `tch` feature, on libtorch
//! (same checks, same bounds).

use collab_backends::candle::CandleBackend;
use collab_backends::reference::ReferenceBackend;
use collab_core::Backend;
use collab_core::model::Input;
use collab_tests::{deit_tiny, first_images, minilm, reference_json};

fn f32s(v: &serde_json::Value) -> Vec<f32> {
    v.as_array()
        .expect("array")
        .iter()
        .map(|x| x.as_f64().expect("number") as f32)
        .collect()
}

#[test]
fn deit_tiny_logits_match_the_reference_on_8_images() {
    deit_tiny_logits_match_the_reference(CandleBackend::cpu());
}

#[cfg(feature = "tch")]
#[test]
fn deit_tiny_logits_match_the_reference_on_8_images_on_tch() {
    deit_tiny_logits_match_the_reference(collab_backends::tch::TchBackend::cpu());
}

fn deit_tiny_logits_match_the_reference<B: Backend>(be: B) {
    let model = deit_tiny(be.clone()).expect("DeiT-Tiny loads");
    let (input, labels) = first_images(&be, 8).expect("images");
    let logits = be
        .to_vec(&model.forward(&input).expect("forward"))
        .expect("values");
    let reference = reference_json("deit_tiny_first8.json").expect("reference");
    let images = reference["images"].as_array().expect("images");
    assert_eq!(images.len(), 8);
    let (mut worst, mut mean_diff) = (0.0f32, 0.0f32);
    for (i, img) in images.iter().enumerate() {
        assert_eq!(
            img["label"].as_u64(),
            Some(labels[i] as u64),
            "label of image {i}"
        );
        let want = f32s(&img["logits"]);
        let got = &logits[i * 1000..(i + 1) * 1000];
        let diff = got
            .iter()
            .zip(&want)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0, f32::max);
        worst = worst.max(diff);
        mean_diff += got
            .iter()
            .zip(&want)
            .map(|(a, b)| (a - b).abs())
            .sum::<f32>()
            / 8000.0;
        let mut order: Vec<usize> = (0..1000).collect();
        order.sort_by(|&a, &b| got[b].total_cmp(&got[a]));
        let top5: Vec<u64> = img["top5"]
            .as_array()
            .expect("top5")
            .iter()
            .filter_map(|v| v.as_u64())
            .collect();
        assert_eq!(
            order[0] as u64, top5[0],
            "top-1 of image {i} ({})",
            img["file"]
        );
    }
    println!(
        "{}: largest logit difference {worst}, mean {mean_diff}",
        be.name()
    );
    // The reference decodes and resizes with PIL, we with the `image` crate: fed PIL's
    // preprocessed pixels, this model reproduces the reference logits to 2e-5 (checked while
    // writing the loader); from our own pixels the largest difference measured is 0.18 and
    // the mean 0.03. A model bug moves logits by whole units.
    assert!(worst < 0.3, "largest logit difference {worst}");
    assert!(mean_diff < 0.05, "mean logit difference {mean_diff}");
}

#[test]
fn deit_tiny_on_candle_matches_the_f64_reference_backend() {
    deit_tiny_matches_the_f64_reference_backend(CandleBackend::cpu());
}

#[cfg(feature = "tch")]
#[test]
fn deit_tiny_on_tch_matches_the_f64_reference_backend() {
    deit_tiny_matches_the_f64_reference_backend(collab_backends::tch::TchBackend::cpu());
}

fn deit_tiny_matches_the_f64_reference_backend<B: Backend>(cpu: B) {
    let oracle = ReferenceBackend::new();
    let (input, _) = first_images(&cpu, 2).expect("images");
    let Input::Images(x) = &input else {
        unreachable!()
    };
    let data = cpu.to_vec(x).expect("values");
    let got = cpu
        .to_vec(
            &deit_tiny(cpu.clone())
                .expect("load")
                .forward(&input)
                .expect("fwd"),
        )
        .expect("v");
    let x64 = oracle.from_vec(data, &[2, 3, 224, 224]).expect("tensor");
    let model64 = deit_tiny(oracle.clone()).expect("load f64");
    let want = oracle
        .to_vec(&model64.forward(&Input::Images(x64)).expect("fwd f64"))
        .expect("v");
    let diff = got
        .iter()
        .zip(&want)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0, f32::max);
    println!(
        "{}: largest logit difference to the f64 backend {diff}",
        cpu.name()
    );
    assert!(
        diff < 2e-3,
        "{} f32 vs reference f64: largest logit difference {diff}",
        cpu.name()
    );
}

#[test]
fn minilm_ids_and_embeddings_match_the_reference_on_8_sentences() {
    minilm_ids_and_embeddings_match_the_reference(CandleBackend::cpu());
}

#[cfg(feature = "tch")]
#[test]
fn minilm_ids_and_embeddings_match_the_reference_on_8_sentences_on_tch() {
    minilm_ids_and_embeddings_match_the_reference(collab_backends::tch::TchBackend::cpu());
}

fn minilm_ids_and_embeddings_match_the_reference<B: Backend>(be: B) {
    let (model, tok) = minilm(be.clone()).expect("MiniLM (run `cargo xtask fetch-models`)");
    let reference = reference_json("minilm_stsb_first8.json").expect("reference");
    let sentences = reference["sentences"].as_array().expect("sentences");
    let mut batch = vec![];
    for s in sentences {
        let ids = tok
            .encode(s["sentence"].as_str().expect("text"))
            .expect("encode");
        let want: Vec<u32> = s["ids"]
            .as_array()
            .expect("ids")
            .iter()
            .filter_map(|v| v.as_u64().map(|x| x as u32))
            .collect();
        assert_eq!(ids, want, "token ids of {}", s["sentence"]);
        batch.push(ids);
    }
    // One padded batch of unequal lengths: the mask must make padding invisible.
    let out = be
        .to_vec(&model.forward(&Input::Tokens(batch)).expect("forward"))
        .expect("v");
    for (i, s) in sentences.iter().enumerate() {
        let want = f32s(&s["embedding"]);
        let got = &out[i * 384..(i + 1) * 384];
        let dot: f32 = got.iter().zip(&want).map(|(a, b)| a * b).sum();
        let nw: f32 = want.iter().map(|a| a * a).sum::<f32>().sqrt();
        let ng: f32 = got.iter().map(|a| a * a).sum::<f32>().sqrt();
        let cos = dot / (nw * ng);
        assert!(cos >= 0.9999, "sentence {i}: cosine {cos}");
        assert!((ng - 1.0).abs() < 1e-4, "embedding is L2-normalised");
    }
}
