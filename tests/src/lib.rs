//! Helpers shared by collab's cross-crate integration tests (the tests live in `tests/`).

use std::path::Path;

use collab_core::fixtures;
use collab_core::input::{ImagePreprocess, SentenceTokenizer, load_image_batch};
use collab_core::model::{Input, ModelConfig, Transformer};
use collab_core::{Backend, Result};

/// DeiT-Tiny from the fixtures on `backend`.
///
/// # Errors
/// A missing or broken checkpoint.
pub fn deit_tiny<B: Backend>(backend: B) -> Result<Transformer<B>> {
    let cfg = ModelConfig::preset("deit_tiny_patch16_224")?;
    Transformer::from_safetensors(backend, cfg, &fixtures::deit_tiny_checkpoint()?)
}

/// MiniLM from the model cache and its tokenizer.
///
/// # Errors
/// MiniLM not fetched (`cargo xtask fetch-models`).
pub fn minilm<B: Backend>(backend: B) -> Result<(Transformer<B>, SentenceTokenizer)> {
    let dir = fixtures::minilm_dir()?;
    let cfg = ModelConfig::preset("all_minilm_l6_v2")?;
    let model = Transformer::from_safetensors(backend, cfg, &dir.join("model.safetensors"))?;
    Ok((
        model,
        SentenceTokenizer::from_file(&dir.join("tokenizer.json"), 512)?,
    ))
}

/// The first `n` sample images (sorted file names), preprocessed, as an input batch.
///
/// # Errors
/// Missing fixtures.
pub fn first_images<B: Backend>(backend: &B, n: usize) -> Result<(Input<B>, Vec<usize>)> {
    let imgs = fixtures::imagenet_sample()?;
    let imgs = &imgs[..n.min(imgs.len())];
    let paths: Vec<&Path> = imgs.iter().map(|i| i.path.as_path()).collect();
    let data = load_image_batch(&ImagePreprocess::imagenet(224), &paths)?;
    let x = backend.from_vec(data, &[imgs.len(), 3, 224, 224])?;
    Ok((Input::Images(x), imgs.iter().map(|i| i.label).collect()))
}

/// The reference JSON file `name` from the fixtures.
///
/// # Errors
/// Missing or unparsable file.
pub fn reference_json(name: &str) -> Result<serde_json::Value> {
    let p = fixtures::fixture(&format!("reference/{name}"))?;
    let text = std::fs::read_to_string(&p).map_err(|e| collab_core::Error::io(&p, e))?;
    serde_json::from_str(&text).map_err(|e| collab_core::Error::BadFile {
        path: p,
        message: e.to_string(),
    })
}
