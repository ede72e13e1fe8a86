#![allow(clippy::unwrap_used)]

use collab_core::Error;
use collab_core::model::weights::SeededRandom;
use collab_core::model::{EncoderConfig, ModelConfig, NormPlacement, VitConfig};

use super::*;

fn config_error(r: Result<impl std::fmt::Debug>) -> String {
    match r {
        Err(Error::Config(m)) => m,
        other => panic!("expected a configuration error, got {other:?}"),
    }
}

#[test]
fn names_of_compiled_backends_open_that_backend() {
    assert_eq!(
        AnyBackend::from_name("reference").unwrap().name(),
        "reference-f64"
    );
    #[cfg(feature = "candle")]
    assert_eq!(
        AnyBackend::from_name("candle-cpu").unwrap().name(),
        "candle-cpu"
    );
    #[cfg(feature = "arm")]
    for (name, want) in [
        ("arm-f32", "arm-f32"),
        ("arm-q8", "arm-q8"),
        ("arm-q4", "arm-q4"),
    ] {
        assert_eq!(AnyBackend::from_name(name).unwrap().name(), want);
    }
}

#[cfg(feature = "tch")]
#[test]
fn the_tch_names_open_libtorch_and_cuda_without_a_gpu_is_a_config_error() {
    assert_eq!(AnyBackend::from_name("tch-cpu").unwrap().name(), "tch-cpu");
    if !tch::Cuda::is_available() {
        let m = config_error(AnyBackend::from_name("tch-cuda:0"));
        assert!(m.contains("tch-cuda:0"), "{m}");
    }
}

#[test]
fn unknown_names_and_bad_ordinals_are_config_errors_that_say_what_is_wrong() {
    let m = config_error(AnyBackend::from_name("cnadle-cpu"));
    assert!(
        m.contains("unknown backend") && m.contains("candle-cpu"),
        "{m}"
    );
    let m = config_error(AnyBackend::from_name("tch-cuda:x"));
    assert!(m.contains("ordinal"), "{m}");
    let m = config_error(AnyBackend::from_name("candle-cpu:1"));
    assert!(m.contains("only CUDA backends"), "{m}");
    let m = config_error(AnyBackend::from_name(""));
    assert!(m.contains("unknown backend"), "{m}");
}

#[test]
fn a_backend_whose_feature_is_missing_names_the_feature() {
    for (name, feature, compiled) in [
        ("candle-cuda", "cuda", cfg!(feature = "cuda")),
        ("arm-q8", "arm", cfg!(feature = "arm")),
        ("tch-cpu", "tch", cfg!(feature = "tch")),
    ] {
        let parsed: Result<BackendName> = name.parse();
        if compiled {
            assert!(parsed.is_ok(), "{name}: {parsed:?}");
        } else {
            let m = config_error(parsed);
            assert!(m.contains(&format!("`{feature}` feature")), "{m}");
            let m = config_error(AnyBackend::from_name(name));
            assert!(m.contains(&format!("--features {feature}")), "{m}");
        }
    }
}

#[test]
fn split_backends_parse_from_json_and_reject_bad_configurations() {
    let c = SplitBackends::from_json(r#"{ "device": "reference", "cloud": "reference" }"#).unwrap();
    assert_eq!(c.device.as_str(), "reference");
    assert_eq!(
        SplitBackends::from_json(&serde_json::to_string(&c).unwrap()).unwrap(),
        c
    );
    let m = config_error(SplitBackends::from_json(r#"{ "device": "reference" }"#));
    assert!(m.contains("cloud"), "{m}");
    let m = config_error(SplitBackends::from_json(
        r#"{ "device": "reference", "cloud": "gpu" }"#,
    ));
    assert!(m.contains("unknown backend"), "{m}");
    let m = config_error(SplitBackends::from_json(
        r#"{ "device": "reference", "cloud": "reference", "edge": "x" }"#,
    ));
    assert!(m.contains("edge"), "{m}");
    let m = config_error(SplitBackends::from_json("not json"));
    assert!(m.contains("split backends"), "{m}");
}

/// A tiny ViT: 2 blocks on 16 x 16 images (5 tokens of 16 features).
fn tiny_vit() -> ModelConfig {
    ModelConfig::Vit(VitConfig {
        encoder: EncoderConfig {
            hidden: 16,
            layers: 2,
            heads: 2,
            intermediate: 32,
            layer_norm_eps: 1e-6,
            norm: NormPlacement::Pre,
        },
        image_size: 16,
        patch_size: 8,
        channels: 3,
        num_classes: 4,
    })
}

/// On an f32 backend the host handoff loses nothing: every split gives the unsplit model's
/// values bit for bit. (The f64 reference rounds to f32 at the handoff, so it is not used here.)
#[cfg(feature = "candle")]
#[test]
fn a_split_on_one_backend_equals_the_unsplit_model() {
    let be = AnyBackend::from_name("candle-cpu").unwrap();
    let model = AnyTransformer::new(&be, tiny_vit(), &SeededRandom::new(3)).unwrap();
    let ModelConfig::Vit(v) = tiny_vit() else {
        unreachable!()
    };
    let dims = [2, 3, v.image_size, v.image_size];
    let n: usize = dims.iter().product();
    let input = HostInput::Images {
        data: (0..n).map(|i| ((i % 17) as f32 / 8.0) - 1.0).collect(),
        dims,
    };
    let (whole, whole_dims) = model.forward(&input).unwrap();
    for k in 0..=model.num_blocks() {
        let hidden = model.start(&input, 0..k).unwrap();
        let (split, split_dims) = model.finish(&hidden, k..model.num_blocks()).unwrap();
        assert_eq!(split_dims, whole_dims);
        assert_eq!(split, whole, "split at {k}");
    }
    let e = model.start(&input, 0..model.num_blocks() + 1).unwrap_err();
    assert!(matches!(e, Error::InvalidInput(_)), "{e}");
}
