//! The cloud's teacher on the digits: frozen DeiT-Tiny's normalised class token for every
//! image, computed once and cached (about 2 minutes on 2 cores), and the fusion head fitted on
//! the public samples' features.

use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use collab_backends::candle::CandleBackend;
use collab_core::fixtures;
use collab_core::model::weights::{Init, SafetensorsFile, WeightSource};
use collab_policies::distill::train::class_token_features;
use collab_policies::token::tasks::LabelledImages;
use safetensors::tensor::{Dtype, TensorView};

/// Where the teacher's features of the digits are cached.
fn cache_path(n: usize) -> PathBuf {
    fixtures::models_dir()
        .join("distill")
        .join(format!("deit-tiny-digits-{n}-features.safetensors"))
}

/// DeiT-Tiny's normalised class token of every image of `data`, `[n][192]`, from the cache
/// when it holds them.
pub(super) fn features(data: &LabelledImages) -> Result<Vec<Vec<f32>>> {
    let path = cache_path(data.len());
    let d = 192;
    if path.exists() {
        let file = SafetensorsFile::open(&path)?;
        let flat = file.tensor("features", &[data.len(), d], Init::Zeros)?;
        println!("teacher features from {}", path.display());
        return Ok(flat.chunks_exact(d).map(<[f32]>::to_vec).collect());
    }
    let model = fixtures::deit_tiny(CandleBackend::cpu())?;
    let start = std::time::Instant::now();
    let all: Vec<usize> = (0..data.len()).collect();
    let mut out = Vec::with_capacity(data.len());
    let bar = indicatif::ProgressBar::new(data.len() as u64);
    for part in all.chunks(64) {
        out.extend(class_token_features(&model, data, part, 32)?);
        bar.inc(part.len() as u64);
    }
    bar.finish_and_clear();
    if out.iter().any(|f| f.len() != d) {
        bail!("DeiT-Tiny features are not {d} wide");
    }
    println!(
        "teacher features of {} images in {:.0} s",
        data.len(),
        start.elapsed().as_secs_f64()
    );
    std::fs::create_dir_all(path.parent().context("cache folder")?)?;
    let bytes: Vec<u8> = out.iter().flatten().flat_map(|v| v.to_le_bytes()).collect();
    let view = TensorView::new(Dtype::F32, vec![data.len(), d], &bytes)?;
    safetensors::serialize_to_file(vec![("features", view)], None, &path)?;
    Ok(out)
}
