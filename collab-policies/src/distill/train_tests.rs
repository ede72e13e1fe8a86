//! Tests of feature distillation on tiny seeded ViTs: the student's loss falls, gradients reach
//! every parameter (and a graph-cutting backend is refused), a trained student leaves the
//! training backend unchanged, and the fusion head fits, scores and refuses bad vectors.
#![allow(clippy::unwrap_used)]

use collab_backends::candle::CandleBackend;
use collab_core::Error;
use collab_core::model::weights::SeededRandom;
use collab_core::model::{
    EncoderConfig, Input, ModelConfig, NormPlacement, Transformer, VitConfig,
};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::train::{FusionHead, class_token_features, distil, outputs};
use crate::shard::layout::test_models::tiny_vit_on;
use crate::token::tasks::LabelledImages;
use crate::train::{TrainConfig, TrainableModel};

/// `n` random 3 x 32 x 32 images with labels `i % classes`.
fn images(n: usize, classes: usize, seed: u64) -> LabelledImages {
    let mut rng = StdRng::seed_from_u64(seed);
    LabelledImages {
        name: "random".into(),
        classes,
        images: (0..n)
            .map(|_| {
                (0..3 * 32 * 32)
                    .map(|_| rng.random_range(-1.0..1.0))
                    .collect()
            })
            .collect(),
        labels: (0..n).map(|i| i % classes).collect(),
    }
}

/// A one-block student on 16 px images whose head outputs `features` values.
fn student<B: collab_core::Backend>(backend: B, features: usize) -> Transformer<B> {
    let cfg = ModelConfig::Vit(VitConfig {
        encoder: EncoderConfig {
            hidden: 16,
            layers: 1,
            heads: 2,
            intermediate: 32,
            layer_norm_eps: 1e-6,
            norm: NormPlacement::Pre,
        },
        image_size: 16,
        patch_size: 8,
        channels: 3,
        num_classes: features,
    });
    Transformer::new(backend, cfg, &SeededRandom::new(5)).unwrap()
}

fn cfg(epochs: usize) -> TrainConfig {
    TrainConfig {
        epochs,
        batch: 8,
        lr: 1e-2,
        weight_decay: 0.0,
        seed: 3,
        progress: false,
    }
}

#[test]
fn a_student_learns_the_teachers_features_and_leaves_training_unchanged() {
    let data = images(32, 4, 1);
    let teacher = tiny_vit_on(CandleBackend::cpu(), 1).unwrap();
    let all: Vec<usize> = (0..data.len()).collect();
    let targets = class_token_features(&teacher, &data, &all, 8).unwrap();
    assert_eq!((targets.len(), targets[0].len()), (32, 32));
    let small = data.downsampled(2).unwrap();
    let trainable = TrainableModel::new(student(CandleBackend::differentiable(), 32)).unwrap();
    assert_eq!(
        trainable.named_vars().len(),
        trainable.model().named_parameters().unwrap().len()
    );
    let report = distil(&trainable, &small, &targets, &all, &cfg(40), "test").unwrap();
    let (first, last) = (report.losses[0], *report.losses.last().unwrap());
    assert!(
        last < 0.3 * first,
        "the feature MSE falls from {first} to {last}"
    );
    // The trained student on the fast backend computes what it computed while training.
    let fast = trainable.snapshot(CandleBackend::cpu()).unwrap();
    let a = outputs(&fast, &small, &all, 8).unwrap();
    let b = outputs(trainable.model(), &small, &all, 8).unwrap();
    for (x, y) in a.iter().flatten().zip(b.iter().flatten()) {
        assert!((x - y).abs() < 1e-4, "{x} vs {y}");
    }
    // A subset trains only on itself: the loss of a one-sample subset reaches near zero.
    let one = TrainableModel::new(student(CandleBackend::differentiable(), 32)).unwrap();
    let r = distil(&one, &small, &targets, &[3], &cfg(60), "one").unwrap();
    assert_eq!(r.samples, 1);
    assert!(
        *r.losses.last().unwrap() < 0.05 * r.losses[0],
        "{:?}",
        r.losses
    );
}

#[test]
fn distillation_refuses_a_graph_cutting_backend_and_bad_targets() {
    let data = images(8, 2, 2).downsampled(2).unwrap();
    let targets = vec![vec![0.5f32; 12]; 8];
    let fused = TrainableModel::new(student(CandleBackend::cpu(), 12)).unwrap();
    let e = distil(&fused, &data, &targets, &[0, 1], &cfg(1), "t").unwrap_err();
    assert!(
        matches!(&e, Error::Config(m) if m.contains("no gradient")),
        "{e}"
    );
    let ok = TrainableModel::new(student(CandleBackend::differentiable(), 12)).unwrap();
    for (t, subset) in [
        (&targets[..7], &[0usize][..]),
        (&targets[..], &[][..]),
        (&targets[..], &[8][..]),
    ] {
        assert!(
            matches!(
                distil(&ok, &data, t, subset, &cfg(1), "t"),
                Err(Error::InvalidInput(_))
            ),
            "{} targets, subset {subset:?}",
            t.len()
        );
    }
    let wide = vec![vec![0.5f32; 13]; 8];
    assert!(distil(&ok, &data, &wide, &[0], &cfg(1), "t").is_err());
    let mut zero = cfg(1);
    zero.epochs = 0;
    assert!(distil(&ok, &data, &targets, &[0], &zero, "t").is_err());
}

#[test]
fn the_fusion_head_fits_separable_features_and_refuses_bad_vectors() {
    let mut rng = StdRng::seed_from_u64(9);
    let (features, labels): (Vec<Vec<f32>>, Vec<usize>) = (0..90)
        .map(|i| {
            let class = i % 3;
            let mut f: Vec<f32> = (0..6).map(|_| rng.random_range(-0.3..0.3)).collect();
            f[class * 2] += 2.0;
            (f, class)
        })
        .unzip();
    let head = FusionHead::fit(&features, &labels, 3, &cfg(30)).unwrap();
    assert_eq!(head.accuracy(&features, &labels).unwrap(), 1.0);
    let p = head.probabilities(&features[0]).unwrap();
    assert!((p.iter().sum::<f32>() - 1.0).abs() < 1e-5);
    assert_eq!(head.predict(&features[4]).unwrap(), 1);
    assert!(head.logits(&[1.0; 5]).is_err());
    assert!(
        FusionHead::fit(&features, &labels, 2, &cfg(1)).is_err(),
        "a label of 2 with 2 classes"
    );
    assert!(FusionHead::fit(&[], &[], 3, &cfg(1)).is_err());
}

#[test]
fn trainable_models_forward_as_the_model_they_came_from() {
    let model = tiny_vit_on(CandleBackend::differentiable(), 4).unwrap();
    let data = images(4, 2, 4);
    let (x, _) = data.batch(model.backend(), &[0, 1, 2, 3]).unwrap();
    let want = model.forward(&Input::Images(x.clone())).unwrap();
    let trainable = TrainableModel::new(model).unwrap();
    let got = trainable.model().forward(&Input::Images(x)).unwrap();
    let diff = (want - got)
        .unwrap()
        .abs()
        .unwrap()
        .max_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap();
    assert_eq!(diff, 0.0);
}
