//! Tests of prompt learning on the tiny seeded ViT: the differentiable backend's forward,
//! autograd against finite differences, learning a separable task, iterative training's frozen
//! prompts; and the labelled tasks' loading and splitting.
#![allow(clippy::unwrap_used)]

use candle_core::{Tensor, Var};
use collab_backends::candle::CandleBackend;
use collab_core::model::{Linear, Transformer};
use collab_core::{Backend, Error};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::prompt::PromptSet;
use super::repo::task_head;
use super::tasks::{self, LabelledImages};
use super::train::{TrainConfig, evaluate, logits, train_iterative, train_prompts};
use crate::shard::layout::test_models::{tiny_vit, tiny_vit_on};

fn auto() -> CandleBackend {
    CandleBackend::differentiable()
}

fn random(rng: &mut StdRng, n: usize, scale: f32) -> Vec<f32> {
    (0..n).map(|_| rng.random_range(-scale..scale)).collect()
}

fn prompts<B: Backend>(backend: &B, gamma: usize, seed: u64) -> PromptSet<B> {
    let mut rng = StdRng::seed_from_u64(seed);
    let per_layer = (0..3)
        .map(|_| {
            backend
                .from_vec(random(&mut rng, gamma * 32, 0.5), &[gamma, 32])
                .unwrap()
        })
        .collect();
    PromptSet::new(backend, per_layer).unwrap()
}

fn fc<B: Backend>(backend: &B, classes: usize, seed: u64) -> Linear<B> {
    let mut rng = StdRng::seed_from_u64(seed);
    Linear {
        w: backend
            .from_vec(random(&mut rng, classes * 32, 0.3), &[classes, 32])
            .unwrap(),
        b: Some(
            backend
                .from_vec(random(&mut rng, classes, 0.1), &[classes])
                .unwrap(),
        ),
    }
}

/// `per_class` images per class of 32 x 32 noise; class `c < 3` has channel `c` brightened,
/// class 3 none.
fn channels(per_class: usize, seed: u64) -> LabelledImages {
    let mut rng = StdRng::seed_from_u64(seed);
    let (mut images, mut labels) = (vec![], vec![]);
    for i in 0..4 * per_class {
        let class = i % 4;
        let mut img = random(&mut rng, 3 * 32 * 32, 1.0);
        if class < 3 {
            for v in &mut img[class * 1024..(class + 1) * 1024] {
                *v += 1.0;
            }
        }
        images.push(img);
        labels.push(class);
    }
    LabelledImages {
        name: "channels".into(),
        classes: 4,
        images,
        labels,
    }
}

fn cfg(epochs: usize) -> TrainConfig {
    TrainConfig {
        epochs,
        batch: 16,
        lr: 2e-2,
        weight_decay: 0.0,
        seed: 3,
        progress: false,
    }
}

#[test]
fn differentiable_backend_matches_the_fast_forward() {
    let (fast, slow) = (tiny_vit(11).unwrap(), tiny_vit_on(auto(), 11).unwrap());
    assert_eq!(auto().name(), "candle-cpu-autograd");
    assert!(auto().is_differentiable() && !CandleBackend::cpu().is_differentiable());
    let data = channels(2, 1);
    let (images, _) = data.batch(&auto(), &[0, 1, 2, 3, 4, 5]).unwrap();
    let set = prompts(&auto(), 2, 5);
    for p in [None, Some(&set)] {
        let a = logits(
            &fast,
            &task_head(&fast, fc(&auto(), 4, 9)).unwrap(),
            p,
            &images,
        );
        let b = logits(
            &slow,
            &task_head(&slow, fc(&auto(), 4, 9)).unwrap(),
            p,
            &images,
        );
        let (a, b) = (
            auto().to_vec(&a.unwrap()).unwrap(),
            auto().to_vec(&b.unwrap()).unwrap(),
        );
        let diff = a
            .iter()
            .zip(&b)
            .map(|(x, y)| (x - y).abs())
            .fold(0.0, f32::max);
        assert!(diff < 1e-5, "max |fast - differentiable| = {diff}");
    }
}

/// Cross-entropy of the tiny model with prompts `per_layer` on a fixed batch.
fn loss(model: &Transformer<CandleBackend>, per_layer: Vec<Tensor>, images: &Tensor) -> Tensor {
    let set = PromptSet::new(model.backend(), per_layer).unwrap();
    let head = task_head(model, fc(model.backend(), 4, 9)).unwrap();
    let out = logits(model, &head, Some(&set), images).unwrap();
    let targets = Tensor::new(&[0u32, 1, 2, 3], out.device()).unwrap();
    candle_nn::loss::cross_entropy(&out, &targets).unwrap()
}

#[test]
fn prompt_gradients_match_finite_differences() {
    let model = tiny_vit_on(auto(), 11).unwrap();
    let (images, _) = channels(1, 2).batch(&auto(), &[0, 1, 2, 3]).unwrap();
    let base = prompts(&auto(), 2, 5);
    let vars: Vec<Var> = base
        .per_layer()
        .iter()
        .map(|t| Var::from_tensor(t).unwrap())
        .collect();
    let l = loss(
        &model,
        vars.iter().map(|v| v.as_tensor().clone()).collect(),
        &images,
    );
    let grads = l.backward().unwrap();
    for (layer, var) in vars.iter().enumerate() {
        let g = auto().to_vec(grads.get(var.as_tensor()).unwrap()).unwrap();
        // The entry with the largest gradient, so that f32 rounding is small next to it.
        let (at, &ga) = g
            .iter()
            .enumerate()
            .max_by(|a, b| a.1.abs().total_cmp(&b.1.abs()))
            .unwrap();
        assert!(
            ga.abs() > 1e-4,
            "layer {layer}: no gradient reached the prompts"
        );
        let eps = 1e-2;
        let shifted = |delta: f32| -> f64 {
            let per_layer = base
                .per_layer()
                .iter()
                .enumerate()
                .map(|(k, t)| {
                    let mut v = auto().to_vec(t).unwrap();
                    if k == layer {
                        v[at] += delta;
                    }
                    auto().from_vec(v, &[2, 32]).unwrap()
                })
                .collect();
            f64::from(loss(&model, per_layer, &images).to_scalar::<f32>().unwrap())
        };
        let fd = (shifted(eps) - shifted(-eps)) / (2.0 * f64::from(eps));
        let rel = (f64::from(ga) - fd).abs() / fd.abs().max(f64::from(ga.abs()));
        assert!(
            rel < 1e-2,
            "layer {layer}[{at}]: autograd {ga}, finite difference {fd}"
        );
    }
}

#[test]
fn prompt_training_learns_a_separable_task() {
    let model = tiny_vit_on(auto(), 11).unwrap();
    let data = channels(16, 4);
    let (entry, report) = train_prompts(&model, "channels", &data, 2, None, &cfg(8)).unwrap();
    assert_eq!((report.count, report.losses.len()), (2, 8));
    let (first, last) = (report.losses[0], report.losses[7]);
    assert!(last < 0.5 * first, "losses {:?}", report.losses);
    assert!(
        report.train_accuracy > 0.9,
        "train accuracy {}",
        report.train_accuracy
    );
    assert_eq!(entry.prompts.as_ref().unwrap().gamma(), 2);
    // The entry holds plain tensors: it serves on the fast backend as it is.
    let fast = tiny_vit(11).unwrap();
    let acc = evaluate(&fast, &entry, &data, 10).unwrap();
    assert!(acc > 0.9, "accuracy on the fast backend {acc}");
    let slow = evaluate(&model, &entry, &data, 64).unwrap();
    assert!((acc - slow).abs() < 1e-9, "{acc} vs {slow}");
}

#[test]
fn iterative_training_freezes_the_inherited_prompts() {
    let model = tiny_vit_on(auto(), 11).unwrap();
    let data = channels(4, 6);
    let runs = train_iterative(&model, "channels", &data, &[0, 1, 3], &cfg(2)).unwrap();
    let counts: Vec<usize> = runs.iter().map(|(e, _)| e.count()).collect();
    assert_eq!(counts, [0, 1, 3]);
    assert!(runs[0].0.prompts.is_none());
    let (one, three) = (
        runs[1].0.prompts.as_ref().unwrap(),
        runs[2].0.prompts.as_ref().unwrap(),
    );
    for (a, b) in one.per_layer().iter().zip(three.per_layer()) {
        let (a, b) = (auto().to_vec(a).unwrap(), auto().to_vec(b).unwrap());
        assert_eq!(a, b[..32], "inherited prompts changed");
        assert_ne!(b[32..], vec![0.0; 64][..]);
    }
    // Bad schedules and inits are typed errors.
    let e = train_iterative(&model, "channels", &data, &[2, 2], &cfg(1)).unwrap_err();
    assert!(matches!(e, Error::InvalidInput(_)), "{e}");
    let e = train_prompts(&model, "channels", &data, 1, Some(&runs[1].0), &cfg(1)).unwrap_err();
    assert!(matches!(e, Error::InvalidInput(_)), "{e}");
    let e = train_prompts(&model, "a/b", &data, 1, None, &cfg(1)).unwrap_err();
    assert!(matches!(e, Error::InvalidInput(_)), "{e}");
}

#[test]
fn splits_are_seeded_disjoint_partitions() {
    let data = LabelledImages {
        name: "ids".into(),
        classes: 3,
        images: (0..30).map(|i| vec![i as f32; 3]).collect(),
        labels: (0..30).map(|i| i % 3).collect(),
    };
    let split = data.clone().split(10, 1).unwrap();
    let ids = |d: &LabelledImages| d.images.iter().map(|v| v[0] as usize).collect::<Vec<_>>();
    let (train, test) = (ids(&split.train), ids(&split.test));
    assert_eq!((train.len(), test.len()), (10, 20));
    let mut all = [train.clone(), test].concat();
    all.sort_unstable();
    assert_eq!(all, (0..30).collect::<Vec<_>>());
    assert!(
        split
            .train
            .labels
            .iter()
            .zip(&train)
            .all(|(&l, &i)| l == i % 3)
    );
    assert_eq!(ids(&data.clone().split(10, 1).unwrap().train), train);
    assert_ne!(ids(&data.clone().split(10, 2).unwrap().train), train);
    assert!(matches!(
        data.clone().split(30, 1),
        Err(Error::InvalidInput(_))
    ));
    assert!(matches!(data.split(0, 1), Err(Error::InvalidInput(_))));
}

#[test]
fn digit_images_are_upscaled_and_normalised() {
    let mut pixels = [0u8; 64];
    pixels[0] = 16; // top-left pixel fully inked
    let img = tasks::digit_image(&pixels);
    assert_eq!(img.len(), 3 * 224 * 224);
    let white = (1.0 - 0.485) / 0.229;
    let black = -0.456 / 0.224; // channel 1
    assert!((img[0] - white).abs() < 1e-5, "{}", img[0]);
    assert!((img[224 * 224 + 223 * 224 + 223] - black).abs() < 1e-5);
    // Bilinear: the ink fades across the first source pixel's edge (at 28 px).
    assert!(img[10 * 224 + 40] > img[10 * 224 + 60]);

    let split = tasks::digits(600, 0).unwrap();
    assert_eq!((split.train.len(), split.test.len()), (600, 1197));
    assert_eq!(split.train.classes, 10);
    assert!(split.train.images.iter().all(|i| i.len() == 3 * 224 * 224));
    let mut seen = [0usize; 10];
    for &l in split.train.labels.iter().chain(&split.test.labels) {
        seen[l] += 1;
    }
    assert!(seen.iter().all(|&n| (170..=190).contains(&n)), "{seen:?}");
}
