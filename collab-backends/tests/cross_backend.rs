//! A split across two backends: the device part (embedding and the first blocks) on one
//! backend, the cloud part (the other blocks and the head) on another, configured as
//! `{ "device": .., "cloud": .. }`, against the whole model on candle's CPU backend.
//!
//! Every pair whose features are compiled in runs; with the default features that is the f64
//! reference on the device and candle on the cloud.
#![allow(clippy::unwrap_used)]
#![cfg(feature = "candle")]

use std::path::Path;

use collab_backends::any::{AnyTransformer, HostInput, SplitBackends};
use collab_core::fixtures;
use collab_core::input::{ImagePreprocess, load_image_batch};
use collab_core::model::ModelConfig;

/// The first `n` sample images, preprocessed.
fn images(n: usize) -> HostInput {
    let imgs = fixtures::imagenet_sample().unwrap();
    let paths: Vec<&Path> = imgs[..n].iter().map(|i| i.path.as_path()).collect();
    let data = load_image_batch(&ImagePreprocess::imagenet(224), &paths).unwrap();
    HostInput::Images {
        data,
        dims: [n, 3, 224, 224],
    }
}

fn deit(backend_name: &str) -> AnyTransformer {
    let backend = collab_backends::any::AnyBackend::from_name(backend_name).unwrap();
    AnyTransformer::from_safetensors(
        &backend,
        ModelConfig::preset("deit_tiny_patch16_224").unwrap(),
        &fixtures::deit_tiny_checkpoint().unwrap(),
    )
    .unwrap()
}

fn top1(logits: &[f32], classes: usize) -> Vec<usize> {
    logits
        .chunks(classes)
        .map(|row| {
            (0..classes)
                .max_by(|&a, &b| row[a].total_cmp(&row[b]))
                .unwrap()
        })
        .collect()
}

/// Runs DeiT-Tiny on `n` images split at block `k` as `config` says and compares the logits
/// with the whole model on candle-cpu: every top-1 equal, and the largest logit difference at
/// most `max_diff`.
fn check_split(config: &str, k: usize, n: usize, max_diff: f32) {
    let config = SplitBackends::from_json(config).unwrap();
    let input = images(n);
    let (want, want_dims) = deit("candle-cpu").forward(&input).unwrap();

    let device = deit(config.device.as_str());
    let cloud = deit(config.cloud.as_str());
    let hidden = device.start(&input, 0..k).unwrap();
    assert_eq!(hidden.dims, [n, 197, 192]);
    let (got, dims) = cloud.finish(&hidden, k..cloud.num_blocks()).unwrap();
    assert_eq!(dims, want_dims);
    assert_eq!(dims, [n, 1000]);

    let diff = got
        .iter()
        .zip(&want)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0f32, f32::max);
    println!(
        "{} -> {} split at {k}: largest logit difference {diff:.2e}",
        device.backend_name(),
        cloud.backend_name()
    );
    assert!(
        diff <= max_diff,
        "largest logit difference {diff} > {max_diff}"
    );
    assert_eq!(top1(&got, 1000), top1(&want, 1000));
}

#[test]
fn reference_device_and_candle_cloud_match_candle_alone() {
    // f64 on the device, f32 after: differences are f32 rounding only.
    check_split(
        r#"{ "device": "reference", "cloud": "candle-cpu" }"#,
        2,
        2,
        1e-3,
    );
}

#[cfg(feature = "arm")]
#[test]
fn arm_q8_device_and_candle_cloud_agree_with_candle_alone() {
    // 8-bit weights (and activations inside the quantised matmul) on the first 6 blocks.
    check_split(
        r#"{ "device": "arm-q8", "cloud": "candle-cpu" }"#,
        6,
        4,
        1.0,
    );
}

#[cfg(feature = "tch")]
#[test]
fn candle_device_and_tch_cloud_match_candle_alone() {
    check_split(
        r#"{ "device": "candle-cpu", "cloud": "tch-cpu" }"#,
        6,
        2,
        1e-3,
    );
}

#[cfg(all(feature = "tch", feature = "arm"))]
#[test]
fn arm_q8_device_and_tch_cloud_agree_with_candle_alone() {
    check_split(r#"{ "device": "arm-q8", "cloud": "tch-cpu" }"#, 6, 4, 1.0);
}
