//! Warm-up fine-tuning on a tiny seeded ViT: it learns with merging in the loop, task heads
//! replace the classifier, and an ensemble of two warmed models is an ordinary model.
#![allow(clippy::unwrap_used)]

use collab_backends::candle::CandleBackend;
use collab_core::model::{NamedTensors, Transformer};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::ensemble::{average, ensemble_weights};
use super::warmup::{accuracy_at, logits_at, tome_at, warm_up, with_task_head};
use crate::shard::layout::test_models::tiny_vit_on;
use crate::token::tasks::LabelledImages;
use crate::train::{TrainConfig, TrainableModel};

/// 4 classes: the bright quadrant of a noisy 32 px image.
fn quadrants(n: usize, seed: u64) -> LabelledImages {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut images = vec![];
    let mut labels = vec![];
    for i in 0..n {
        let q = i % 4;
        let mut img: Vec<f32> = (0..3 * 32 * 32)
            .map(|_| rng.random_range(-0.3..0.3))
            .collect();
        for c in 0..3 {
            for y in 0..16 {
                for x in 0..16 {
                    let (yy, xx) = (y + 16 * (q / 2), x + 16 * (q % 2));
                    img[(c * 32 + yy) * 32 + xx] += 1.0;
                }
            }
        }
        images.push(img);
        labels.push(q);
    }
    LabelledImages {
        name: "quadrants".into(),
        classes: 4,
        images,
        labels,
    }
}

fn task_model(seed: u64) -> Transformer<CandleBackend> {
    let base = tiny_vit_on(CandleBackend::differentiable(), seed).unwrap();
    let mut rng = StdRng::seed_from_u64(seed);
    let w: Vec<f32> = (0..4 * 32).map(|_| rng.random_range(-0.1..0.1)).collect();
    with_task_head(&base, w, vec![0.0; 4]).unwrap()
}

#[test]
fn warm_up_learns_with_merging_in_every_forward() {
    let data = quadrants(32, 1);
    let model = TrainableModel::new(task_model(2)).unwrap();
    assert_eq!(
        model
            .model()
            .head(
                &model
                    .model()
                    .embed(&collab_core::model::Input::Images(
                        data.batch(model.model().backend(), &[0]).unwrap().0
                    ))
                    .unwrap()
            )
            .unwrap()
            .dims(),
        &[1, 4],
        "the task head has 4 classes"
    );
    let cfg = TrainConfig {
        epochs: 15,
        batch: 8,
        lr: 2e-3,
        weight_decay: 0.0,
        seed: 3,
        progress: false,
    };
    let report = warm_up(&model, &data, 3, &cfg, "test").unwrap();
    assert_eq!(report.steps, 15 * 4);
    let (first, last) = (report.losses[0], *report.losses.last().unwrap());
    assert!(last < 0.5 * first, "loss {first} -> {last}");
    let fast = model.snapshot(CandleBackend::cpu()).unwrap();
    let merged = accuracy_at(&fast, &data, 3, 16).unwrap();
    assert!(merged >= 0.9, "train accuracy at r = 3: {merged}");
    // r = 0 is the plain forward; merging changes the token count.
    let (x, _) = data.batch(fast.backend(), &[0, 1]).unwrap();
    let plain = fast
        .forward(&collab_core::model::Input::Images(x.clone()))
        .unwrap();
    let at0 = logits_at(&fast, &x, 0).unwrap();
    assert_eq!(
        plain.to_vec2::<f32>().unwrap(),
        at0.to_vec2::<f32>().unwrap()
    );
    assert!(tome_at(&fast, 0).unwrap().is_none());
    assert!(tome_at(&fast, 3).unwrap().is_some());
}

#[test]
fn an_ensemble_of_warmed_models_is_an_ordinary_model() {
    let (a, b) = (task_model(4), task_model(5));
    let w = ensemble_weights(&[0.9, 0.3]).unwrap();
    let avg = average(
        &[a.named_parameters().unwrap(), b.named_parameters().unwrap()],
        &w,
    )
    .unwrap();
    let model = Transformer::new(
        CandleBackend::cpu(),
        a.config().clone(),
        &NamedTensors::new(avg),
    )
    .unwrap();
    let (pa, pb, pm) = (
        a.named_parameters().unwrap(),
        b.named_parameters().unwrap(),
        model.named_parameters().unwrap(),
    );
    for ((x, y), m) in pa.iter().zip(&pb).zip(&pm) {
        assert_eq!(x.name, m.name);
        for ((u, v), z) in x.values.iter().zip(&y.values).zip(&m.values) {
            assert!((0.75 * u + 0.25 * v - z).abs() < 1e-6);
        }
    }
    let data = quadrants(8, 6);
    accuracy_at(&model, &data, 2, 4).unwrap();
    assert!(with_task_head(&a, vec![0.0; 5], vec![0.0; 4]).is_err());
}
