//! Tests of the prompt adapter (hand-checked insertion, masks, typed errors, the adapter
//! conformance suite) and of the prompt repository (round trip, counts, error texts).
#![allow(clippy::unwrap_used)]

use collab_backends::candle::CandleBackend;
use collab_core::model::{Hidden, Linear};
use collab_core::token::TokenAdapter;
use collab_core::{Backend, Error};

use super::conformance::{AdapterCase, check_adapter};
use super::prompt::{PromptAdapter, PromptSet};
use super::repo::{EntryMeta, PromptEntry, PromptRepository, task_head};
use crate::shard::layout::test_models::{TempDir, tiny_bert, tiny_vit};

fn be() -> CandleBackend {
    CandleBackend::cpu()
}

/// A set whose layer `l` holds `gamma` rows `[base + 10 l + g, -(base + 10 l + g)]` (d = 2).
fn set(layers: usize, gamma: usize, base: f32) -> PromptSet<CandleBackend> {
    let per_layer = (0..layers)
        .map(|l| {
            let v = (0..gamma)
                .flat_map(|g| {
                    let x = base + 10.0 * l as f32 + g as f32;
                    [x, -x]
                })
                .collect();
            be().from_vec(v, &[gamma, 2]).unwrap()
        })
        .collect();
    PromptSet::new(&be(), per_layer).unwrap()
}

/// Hidden states `[2, 3, 2]` with token `t` of row `r` = `[r + t / 10, r + t / 10]`.
fn hidden() -> Hidden<CandleBackend> {
    let v = (0..2)
        .flat_map(|r| (0..3).flat_map(move |t| [r as f32 + t as f32 / 10.0; 2]))
        .collect();
    Hidden::new(be().from_vec(v, &[2, 3, 2]).unwrap(), 1)
}

fn rows(h: &Hidden<CandleBackend>) -> Vec<Vec<f32>> {
    let (b, n, d) = h.dims3(&be()).unwrap();
    let v = be().to_vec(&h.x).unwrap();
    (0..b * n).map(|i| v[i * d..(i + 1) * d].to_vec()).collect()
}

#[test]
fn prompts_go_after_the_class_token_and_accumulate() {
    let (a, b) = (set(2, 1, 100.0), set(2, 1, 200.0));
    let adapter = PromptAdapter::for_rows(&be(), &[&a, &b]).unwrap();
    assert_eq!(
        (0..3)
            .map(|l| TokenAdapter::<CandleBackend>::gamma(&adapter, l))
            .collect::<Vec<_>>(),
        [1, 1, 0]
    );
    let h = adapter.before_attention(&be(), 0, hidden()).unwrap();
    let h = adapter.before_attention(&be(), 1, h).unwrap();
    let h = adapter.before_attention(&be(), 2, h).unwrap(); // beyond the set: unchanged
    assert_eq!(h.protected, 1);
    // Row 0: class token, layer-1 prompt, layer-0 prompt, then the two patch tokens.
    let expect = [
        [0.0, 0.0],
        [110.0, -110.0],
        [100.0, -100.0],
        [0.1, 0.1],
        [0.2, 0.2],
        [1.0, 1.0],
        [210.0, -210.0],
        [200.0, -200.0],
        [1.1, 1.1],
        [1.2, 1.2],
    ];
    let got = rows(&h);
    assert_eq!(got.len(), expect.len());
    for (g, e) in got.iter().zip(expect) {
        assert!(
            (g[0] - e[0]).abs() < 1e-6 && (g[1] - e[1]).abs() < 1e-6,
            "{got:?}"
        );
    }
}

#[test]
fn mask_and_sizes_get_ones_for_the_prompts() {
    let adapter = PromptAdapter::uniform(&be(), &set(1, 2, 1.0), 2).unwrap();
    let mut h = hidden();
    h.mask = Some(
        be().from_vec(vec![1., 1., 0., 1., 1., 1.], &[2, 3])
            .unwrap(),
    );
    h.sizes = Some(
        be().from_vec(vec![1., 3., 2., 1., 1., 4.], &[2, 3])
            .unwrap(),
    );
    let h = adapter.before_attention(&be(), 0, h).unwrap();
    assert_eq!(be().dims(&h.x), [2, 5, 2]);
    let mask = be().to_vec(h.mask.as_ref().unwrap()).unwrap();
    assert_eq!(mask, [1., 1., 1., 1., 0., 1., 1., 1., 1., 1.]);
    let sizes = be().to_vec(h.sizes.as_ref().unwrap()).unwrap();
    assert_eq!(sizes, [1., 1., 1., 3., 2., 1., 1., 1., 1., 4.]);
}

#[test]
fn mixed_gammas_layers_and_batch_mismatches_are_typed_errors() {
    let (one, two, short) = (set(2, 1, 0.0), set(2, 2, 0.0), set(1, 1, 0.0));
    for sets in [[&one, &two], [&one, &short]] {
        let e = PromptAdapter::for_rows(&be(), &sets).unwrap_err();
        assert!(
            matches!(e, Error::InvalidInput(ref m) if m.contains("one gamma")),
            "{e}"
        );
    }
    assert!(matches!(
        PromptAdapter::for_rows(&be(), &[]),
        Err(Error::InvalidInput(_))
    ));
    let three = PromptAdapter::uniform(&be(), &one, 3).unwrap();
    let e = three.before_attention(&be(), 0, hidden()).unwrap_err();
    assert!(
        matches!(e, Error::InvalidInput(ref m) if m.contains("batch of 3")),
        "{e}"
    );
    // Prompt sets: no layers, a 1-D tensor, unequal layers.
    assert!(matches!(
        PromptSet::<CandleBackend>::new(&be(), vec![]),
        Err(Error::InvalidInput(_))
    ));
    let flat = be().from_vec(vec![1.0; 4], &[4]).unwrap();
    assert!(matches!(
        PromptSet::new(&be(), vec![flat]),
        Err(Error::Shape { .. })
    ));
    let (a, b) = (be().zeros(&[2, 4]).unwrap(), be().zeros(&[3, 4]).unwrap());
    assert!(matches!(
        PromptSet::new(&be(), vec![a, b]),
        Err(Error::Shape { .. })
    ));
}

#[test]
fn prompt_adapters_pass_the_conformance_suite() {
    let per_layer = |base: f32| {
        (0..2)
            .map(|l| {
                let v = (0..3 * 8).map(|i| base + (i + l) as f32 / 24.0).collect();
                be().from_vec(v, &[3, 8]).unwrap()
            })
            .collect::<Vec<_>>()
    };
    let (a, b) = (
        PromptSet::new(&be(), per_layer(0.0)).unwrap(),
        PromptSet::new(&be(), per_layer(-0.5)).unwrap(),
    );
    let case = AdapterCase {
        batch: 2,
        tokens: 5,
        hidden: 8,
        heads: 2,
        protected: 1,
        layers: 3,
        seed: 7,
    };
    check_adapter(
        &be(),
        &PromptAdapter::for_rows(&be(), &[&a, &b]).unwrap(),
        &case,
    )
    .unwrap();
    let uniform = PromptAdapter::uniform(&be(), &a, 3).unwrap();
    check_adapter(
        &be(),
        &uniform,
        &AdapterCase {
            batch: 3,
            protected: 2,
            ..case
        },
    )
    .unwrap();
}

fn entry(task: &str, prompts: Option<PromptSet<CandleBackend>>) -> PromptEntry<CandleBackend> {
    let w = (0..3 * 2).map(|i| i as f32 * 0.25 - 0.7).collect();
    PromptEntry {
        task: task.into(),
        prompts,
        fc: Linear {
            w: be().from_vec(w, &[3, 2]).unwrap(),
            b: Some(be().from_vec(vec![0.1, -0.2, 0.3], &[3]).unwrap()),
        },
        classes: 3,
        meta: EntryMeta {
            train_examples: 64,
            epochs: 2,
            train_accuracy: 0.75,
            test_accuracy: Some(0.5),
            seconds: 1.5,
        },
    }
}

fn same(a: &candle_core::Tensor, b: &candle_core::Tensor) {
    assert_eq!(be().dims(a), be().dims(b));
    assert_eq!(be().to_vec(a).unwrap(), be().to_vec(b).unwrap());
}

#[test]
fn repository_round_trips_entries_and_lists_counts() {
    let dir = TempDir::new("prompt-repo");
    let repo = PromptRepository::open(dir.path().join("repo")).unwrap();
    let with = entry("digits", Some(set(3, 2, 5.0)));
    let without = entry("digits", None);
    repo.save(&be(), &with).unwrap();
    repo.save(&be(), &without).unwrap();
    repo.save(&be(), &entry("other-task", None)).unwrap();
    assert_eq!(repo.counts("digits").unwrap(), [0, 2]);
    assert_eq!(repo.counts("never").unwrap(), Vec::<usize>::new());

    let back = repo.load(&be(), "digits", 2).unwrap();
    let (p, q) = (
        with.prompts.as_ref().unwrap(),
        back.prompts.as_ref().unwrap(),
    );
    assert_eq!((q.layers(), q.gamma(), q.hidden()), (3, 2, 2));
    for (a, b) in p.per_layer().iter().zip(q.per_layer()) {
        same(a, b);
    }
    same(&with.fc.w, &back.fc.w);
    same(with.fc.b.as_ref().unwrap(), back.fc.b.as_ref().unwrap());
    assert_eq!((back.task.as_str(), back.classes), ("digits", 3));
    assert_eq!(back.meta.test_accuracy, Some(0.5));
    assert_eq!(back.meta.train_examples, 64);
    assert!(repo.load(&be(), "digits", 0).unwrap().prompts.is_none());
}

#[test]
fn repository_errors_name_the_entry_and_reject_bad_names() {
    let dir = TempDir::new("prompt-repo-errors");
    let repo = PromptRepository::open(dir.path()).unwrap();
    repo.save(&be(), &entry("digits", None)).unwrap();
    let e = repo.load(&be(), "digits", 4).unwrap_err();
    let text = e.to_string();
    assert!(matches!(e, Error::MissingFile { .. }), "{e}");
    assert!(
        text.contains("`digits`") && text.contains("4 prompts") && text.contains("token-train"),
        "{text}"
    );
    for bad in ["../up", "a/b", "", "a.b"] {
        assert!(
            matches!(repo.counts(bad), Err(Error::InvalidInput(_))),
            "{bad}"
        );
        assert!(
            matches!(repo.load(&be(), bad, 0), Err(Error::InvalidInput(_))),
            "{bad}"
        );
        assert!(
            matches!(
                repo.save(&be(), &entry(bad, None)),
                Err(Error::InvalidInput(_))
            ),
            "{bad}"
        );
    }
    std::fs::write(repo.path("digits", 8).unwrap(), b"not a safetensors file").unwrap();
    assert!(matches!(
        repo.load(&be(), "digits", 8),
        Err(Error::BadFile { .. })
    ));
    // A head that does not match the classes is refused before writing.
    let mut wrong = entry("digits", None);
    wrong.classes = 4;
    assert!(matches!(repo.save(&be(), &wrong), Err(Error::Shape { .. })));
}

#[test]
fn task_heads_reuse_the_backbone_norm_and_need_a_classifier() {
    let vit = tiny_vit(1).unwrap();
    let fc = Linear {
        w: be().zeros(&[5, 32]).unwrap(),
        b: None,
    };
    let head = task_head(&vit, fc.clone()).unwrap();
    let h = Hidden::new(
        be().from_vec(vec![0.5; 2 * 3 * 32], &[2, 3, 32]).unwrap(),
        1,
    );
    assert_eq!(be().dims(&head.forward(&be(), &h).unwrap()), [2, 5]);
    let bert = tiny_bert(1).unwrap();
    assert!(matches!(task_head(&bert, fc), Err(Error::Config(_))));
}
