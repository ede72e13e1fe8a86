//! Helpers shared by collab's cross-crate integration tests (the tests live in `tests/`).

use std::path::Path;

use collab_core::fixtures;
use collab_core::input::{ImagePreprocess, load_image_batch};
use collab_core::model::Input;
use collab_core::{Backend, Result};

pub use collab_core::fixtures::{deit_tiny, minilm};

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
