//! Tests of ToMe merging, merge schedules and the token-adapter conformance suite.
#![allow(clippy::unwrap_used)]

use collab_backends::candle::CandleBackend;
use collab_backends::reference::ReferenceBackend;
use collab_core::model::{Hidden, Input};
use collab_core::token::{IdentityAdapter, TokenAdapter};
use collab_core::{Backend, Error, Result};
use proptest::prelude::*;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::conformance::{AdapterCase, check_adapter};
use super::schedule::{MergeSchedule, ScheduleKind};
use super::tome::{ToMe, merge_tokens};
use crate::shard::layout::test_models::tiny_vit;

fn t<B: Backend>(be: &B, v: &[f32], shape: &[usize]) -> B::Tensor {
    be.from_vec(v.to_vec(), shape).unwrap()
}

fn random(rng: &mut StdRng, len: usize) -> Vec<f32> {
    (0..len).map(|_| rng.random_range(-1.0f32..1.0)).collect()
}

/// 7 tokens, 1 head, head_dim 2, class token protected, r = 2, computed by hand.
fn hand_example<B: Backend>(be: &B) -> Hidden<B> {
    // Keys; the norms (1, 5, 2) are exact in f32 so the ties below are exact.
    // A = positions 0,2,4,6; B = positions 1,3,5 with unit keys (1,0), (0,1), (0,1).
    //   A0 = class token: never a source.
    //   A2 = (0,1):       scores (0, 1, 1)       -> best B3 (tie with B5: the first), 1.0
    //   A4 = (3,4)/5:     scores (.6, .8, .8)    -> best B3 (tie with B5), 0.8
    //   A6 = (4,3)/5:     scores (.8, .6, .6)    -> best B1, 0.8
    // Sorted by score (stable): A2 (1.0), A4 (0.8), A6 (0.8, after A4). r = 2: A2, A4 -> B3.
    let keys = [1., 0., 1., 0., 0., 1., 0., 1., 3., 4., 0., 2., 4., 3.];
    let x = [1., 0., 2., 1., 4., -2., 0., 5., 7., 1., 3., 3., -1., 2.];
    let h = Hidden::new(t(be, &x, &[1, 7, 2]), 1);
    merge_tokens(be, h, &t(be, &keys, &[1, 1, 7, 2]), 2).unwrap()
}

#[test]
fn hand_computed_merge_orders_and_averages_tokens() {
    let be = CandleBackend::cpu();
    let out = hand_example(&be);
    // Output: unmerged A ascending (0, 6), then B (1, 3, 5); B3 = (x3 + x2 + x4) / 3
    // = ((0 + 4 + 7) / 3, (5 - 2 + 1) / 3) = (11/3, 4/3).
    let want = [1., 0., -1., 2., 2., 1., 11. / 3., 4. / 3., 3., 3.];
    let got = be.to_vec(&out.x).unwrap();
    assert_eq!(be.dims(&out.x), [1, 5, 2]);
    for (g, w) in got.iter().zip(want) {
        assert!((g - w).abs() < 1e-6, "{got:?} vs {want:?}");
    }
    assert_eq!(
        be.to_vec(out.sizes.as_ref().unwrap()).unwrap(),
        [1., 1., 1., 3., 1.]
    );
    assert_eq!((out.protected, out.mask.is_none()), (1, true));
}

#[test]
fn a_second_merge_accumulates_sizes_as_weights() {
    let be = CandleBackend::cpu();
    let h = hand_example(&be);
    // Now 5 tokens of sizes (1,1,1,3,1); A = 0,2,4, B = 1,3. Keys: A2 = (0,1) matches B3 = (0,1)
    // with 1.0, A4 = (1,1) scores .707 -> r = 1 merges A2 (x = (2,1), size 1) into B3 (size 3):
    // ((3 * 11/3 + 2) / 4, (3 * 4/3 + 1) / 4) = (13/4, 5/4), size 4.
    let keys = t(
        &be,
        &[1., 0., 1., 0., 0., 1., 0., 1., 1., 1.],
        &[1, 1, 5, 2],
    );
    let out = merge_tokens(&be, h, &keys, 1).unwrap();
    let want = [1., 0., 3., 3., -1., 2., 3.25, 1.25];
    let got = be.to_vec(&out.x).unwrap();
    for (g, w) in got.iter().zip(want) {
        assert!((g - w).abs() < 1e-6, "{got:?} vs {want:?}");
    }
    assert_eq!(
        be.to_vec(out.sizes.as_ref().unwrap()).unwrap(),
        [1., 1., 1., 4.]
    );
}

#[test]
fn holes_in_the_mask_and_bad_shapes_are_refused() {
    let be = CandleBackend::cpu();
    let mut h = Hidden::new(t(&be, &[0.0; 12], &[1, 6, 2]), 1);
    let keys = t(&be, &[0.5; 12], &[1, 1, 6, 2]);
    h.mask = Some(t(&be, &[1.0, 1.0, 0.0, 1.0, 1.0, 0.0], &[1, 6]));
    let e = merge_tokens(&be, h.clone(), &keys, 1).unwrap_err();
    assert!(
        matches!(&e, Error::InvalidInput(m) if m.contains("padded at the end")),
        "{e}"
    );
    h.mask = Some(t(&be, &[1.0; 5], &[1, 5]));
    assert!(matches!(
        merge_tokens(&be, h.clone(), &keys, 1),
        Err(Error::Shape { .. })
    ));
    h.mask = None;
    let bad = t(&be, &[0.5; 10], &[1, 1, 5, 2]);
    assert!(matches!(
        merge_tokens(&be, h, &bad, 1),
        Err(Error::Shape { .. })
    ));
}

/// Rows of `real` tokens padded at the end to the longest, with garbage in the padding: each
/// row merges exactly as it does alone, and the padding is dropped and rebuilt.
fn check_padded_rows(real: &[usize], p: usize, r: usize, seed: u64) -> Result<(), TestCaseError> {
    let be = CandleBackend::cpu();
    let (heads, hd, d) = (2, 3, 4);
    let (b, n) = (real.len(), real.iter().copied().max().unwrap_or(0));
    let mut rng = StdRng::seed_from_u64(seed);
    let x = random(&mut rng, b * n * d);
    let keys = random(&mut rng, b * heads * n * hd);
    let sizes: Vec<f32> = (0..b * n).map(|_| rng.random_range(1.0f32..4.0)).collect();
    let mask: Vec<f32> = real
        .iter()
        .flat_map(|&k| (0..n).map(move |j| f32::from(u8::from(j < k))))
        .collect();
    let batch = Hidden {
        x: t(&be, &x, &[b, n, d]),
        mask: Some(t(&be, &mask, &[b, n])),
        sizes: Some(t(&be, &sizes, &[b, n])),
        protected: p,
    };
    let out = merge_tokens(&be, batch, &t(&be, &keys, &[b, heads, n, hd]), r)
        .map_err(|e| TestCaseError::fail(e.to_string()))?;
    let (ob, m, od) = out.dims3(&be).unwrap();
    prop_assert_eq!((ob, od), (b, d));
    let ox = be.to_vec(&out.x).unwrap();
    let os = be.to_vec(out.sizes.as_ref().unwrap()).unwrap();
    let om = out.mask.as_ref().map(|t| be.to_vec(t).unwrap());
    for (row, &k) in real.iter().enumerate() {
        // The row alone: its real tokens, its keys for them, no mask.
        let rx: Vec<f32> = x[row * n * d..][..k * d].to_vec();
        let rk: Vec<f32> = (0..heads)
            .flat_map(|h| keys[(row * heads + h) * n * hd..][..k * hd].to_vec())
            .collect();
        let rs = sizes[row * n..][..k].to_vec();
        let alone = Hidden {
            x: t(&be, &rx, &[1, k, d]),
            mask: None,
            sizes: Some(t(&be, &rs, &[1, k])),
            protected: p,
        };
        let alone = merge_tokens(&be, alone, &t(&be, &rk, &[1, heads, k, hd]), r)
            .map_err(|e| TestCaseError::fail(e.to_string()))?;
        let k2 = alone.dims3(&be).unwrap().1;
        let ax = be.to_vec(&alone.x).unwrap();
        let asz = be.to_vec(alone.sizes.as_ref().unwrap()).unwrap();
        for i in 0..k2 * d {
            prop_assert!(
                (ox[row * m * d + i] - ax[i]).abs() < 1e-5,
                "row {} value {}",
                row,
                i
            );
        }
        for j in 0..m {
            let mask_j = om.as_ref().map_or(1.0, |v| v[row * m + j]);
            if j < k2 {
                prop_assert!((os[row * m + j] - asz[j]).abs() < 1e-5);
                prop_assert_eq!(mask_j, 1.0);
            } else {
                prop_assert_eq!(os[row * m + j], 1.0);
                prop_assert_eq!(mask_j, 0.0);
                prop_assert!(ox[(row * m + j) * d..][..d].iter().all(|&v| v == 0.0));
            }
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]
    #[test]
    fn each_padded_row_merges_as_it_does_alone(
        real in proptest::collection::vec(2usize..=24, 1..=4),
        p in 0usize..=1,
        r in 1usize..10,
        seed in any::<u64>(),
    ) {
        check_padded_rows(&real, p, r, seed)?;
    }
}

/// Several consecutive merges on seeded random data, checking the invariants after each.
fn check_invariants(
    b: usize,
    n: usize,
    p: usize,
    r: usize,
    seed: u64,
) -> Result<(), TestCaseError> {
    let be = CandleBackend::cpu();
    let (heads, hd, d) = (2, 3, 4);
    let mut rng = StdRng::seed_from_u64(seed);
    let x0 = random(&mut rng, b * n * d);
    let mut h = Hidden::new(t(&be, &x0, &[b, n, d]), p);
    let mass0: Vec<f32> = x0.chunks(n * d).map(|row| row.iter().sum()).collect();
    let mut count = n;
    for step in 0..3 {
        let keys = t(
            &be,
            &random(&mut rng, b * heads * count * hd),
            &[b, heads, count, hd],
        );
        let before = be.to_vec(&h.x).unwrap();
        let out = merge_tokens(&be, h.clone(), &keys, r)
            .map_err(|e| TestCaseError::fail(e.to_string()))?;
        let m = r.min((count - p) / 2);
        let x = be.to_vec(&out.x).unwrap();
        prop_assert_eq!(be.dims(&out.x), vec![b, count - m, d], "step {}", step);
        if m == 0 {
            prop_assert_eq!(&x, &before);
            prop_assert_eq!(out.sizes.is_some(), h.sizes.is_some());
        }
        count -= m;
        for row in 0..b {
            if p > 0 {
                prop_assert_eq!(&x[row * count * d..][..d], &x0[row * n * d..][..d]);
            }
            let sizes = out.sizes.as_ref().map(|s| be.to_vec(s).unwrap());
            let s = sizes
                .as_ref()
                .map_or(vec![1.0; count], |s| s[row * count..][..count].to_vec());
            prop_assert!((s.iter().sum::<f32>() - n as f32).abs() < 1e-3);
            // Size-weighted sums of the values never change under merging.
            let mass: f32 = (0..count * d)
                .map(|i| x[row * count * d + i] * s[i / d])
                .sum();
            prop_assert!((mass - mass0[row]).abs() < 1e-3 * (1.0 + mass0[row].abs()));
        }
        h = out;
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]
    #[test]
    fn merging_keeps_counts_sizes_mass_and_the_class_token(
        b in 1usize..=3, n in 3usize..=40, p in 0usize..=2, r in 0usize..25, seed in any::<u64>()
    ) {
        check_invariants(b, n, p, r, seed)?;
    }
}

fn merged_values<B: Backend>(be: &B, x: &[f32], keys: &[f32]) -> Vec<f32> {
    let h = Hidden::new(t(be, x, &[2, 15, 4]), 1);
    let out = merge_tokens(be, h, &t(be, keys, &[2, 2, 15, 3]), 5).unwrap();
    be.to_vec(&out.x).unwrap()
}

#[test]
fn merging_agrees_between_candle_and_the_f64_reference() {
    let mut rng = StdRng::seed_from_u64(7);
    let (x, k) = (
        random(&mut rng, 2 * 15 * 4),
        random(&mut rng, 2 * 2 * 15 * 3),
    );
    let a = merged_values(&CandleBackend::cpu(), &x, &k);
    let b = merged_values(&ReferenceBackend::new(), &x, &k);
    assert_eq!((a.len(), b.len()), (2 * 10 * 4, 2 * 10 * 4));
    assert!(
        a.iter().zip(&b).all(|(p, q)| (p - q).abs() < 1e-5),
        "{a:?} vs {b:?}"
    );
}

// ----- schedules -----

#[test]
fn schedules_have_the_promised_totals_and_shapes() {
    assert_eq!(MergeSchedule::constant(8, 12).per_layer(), [8; 12]);
    for (r, l) in [(8, 12), (5, 7), (1, 3), (20, 12), (3, 1)] {
        let s = MergeSchedule::linear(r, l);
        assert_eq!(s.total(), r * l, "{s:?}");
        assert!(s.per_layer().windows(2).all(|w| w[0] >= w[1]), "{s:?}");
        if l > 1 {
            assert_eq!(
                (s.per_layer()[0], s.per_layer()[l - 1]),
                (2 * r, 0),
                "{s:?}"
            );
        }
    }
    let f = MergeSchedule::front_loaded(50, 4, 12);
    assert_eq!(f.per_layer(), [13, 13, 12, 12, 0, 0, 0, 0, 0, 0, 0, 0]);
    assert_eq!(MergeSchedule::front_loaded(7, 20, 3).per_layer(), [3, 2, 2]);
    let s = MergeSchedule::linear(8, 12);
    let json = serde_json::to_string(&s).unwrap();
    assert_eq!(serde_json::from_str::<MergeSchedule>(&json).unwrap(), s);
}

#[test]
fn fitted_schedules_never_exceed_the_cap() {
    for s in [
        MergeSchedule::constant(20, 12),
        MergeSchedule::linear(16, 12),
        MergeSchedule::front_loaded(150, 3, 12),
    ] {
        for (tokens, p) in [(197, 1), (17, 1), (10, 0), (3, 2)] {
            let f = s.fitted(tokens, p);
            let mut n = tokens;
            for &m in f.per_layer() {
                assert!(m <= (n - p) / 2, "{f:?} on {tokens}");
                n -= m;
            }
            assert_eq!(f.fitted(tokens, p), f);
            assert_eq!(s.token_counts(tokens, p).last(), Some(&n));
        }
    }
    // r = 20 on DeiT: 8 layers of 20 take 197 to 37, then the cap (n - 1) / 2 gives 18, 9, 4, 2.
    let c = MergeSchedule::constant(20, 12).fitted(197, 1);
    assert_eq!(c.per_layer(), [20, 20, 20, 20, 20, 20, 20, 20, 18, 9, 4, 2]);
}

#[test]
fn for_gamma_builds_fitted_schedules_and_refuses_bad_gammas() {
    let c = MergeSchedule::for_gamma(-8, ScheduleKind::Constant, 12, 197, 1).unwrap();
    assert_eq!(c.per_layer(), [8; 12]);
    let l = MergeSchedule::for_gamma(-8, ScheduleKind::Linear, 12, 197, 1).unwrap();
    assert_eq!(l.total(), 96);
    let kind = ScheduleKind::FrontLoaded { depth: 4 };
    let f = MergeSchedule::for_gamma(-20, kind, 12, 197, 1).unwrap();
    assert_eq!(f, f.fitted(197, 1));
    assert!(f.per_layer()[4..].iter().all(|&m| m == 0) && f.total() > 0);
    for (g, layers, k) in [(0, 12, kind), (3, 12, kind), (-4, 0, kind)] {
        let e = MergeSchedule::for_gamma(g, k, layers, 197, 1).unwrap_err();
        assert!(matches!(e, Error::InvalidInput(_)), "{e}");
    }
    let zero = ScheduleKind::FrontLoaded { depth: 0 };
    assert!(MergeSchedule::for_gamma(-4, zero, 12, 197, 1).is_err());
}

#[test]
fn profiling_picks_the_best_schedule_and_the_earlier_on_ties() {
    let c = [
        MergeSchedule::constant(8, 4),
        MergeSchedule::linear(8, 4),
        MergeSchedule::front_loaded(32, 2, 4),
    ];
    let scores = [0.5, 0.7, 0.7];
    let (best, got) =
        MergeSchedule::profiled(&c, |s| Ok(scores[c.iter().position(|x| x == s).unwrap()]))
            .unwrap();
    assert_eq!((best, got), (c[1].clone(), scores.to_vec()));
    assert!(MergeSchedule::profiled(&[], |_| Ok(1.0)).is_err());
    let e = MergeSchedule::profiled(&c, |_| Err(Error::InvalidInput("no data".into())));
    assert!(e.is_err());
}

// ----- conformance -----

const CASE: AdapterCase = AdapterCase {
    batch: 2,
    tokens: 17,
    hidden: 8,
    heads: 2,
    protected: 1,
    layers: 4,
    seed: 11,
};

#[test]
fn tome_and_identity_pass_the_conformance_suite() {
    let be = CandleBackend::cpu();
    for s in [
        MergeSchedule::constant(3, 4),
        MergeSchedule::linear(2, 4),
        MergeSchedule::front_loaded(12, 2, 4),
    ] {
        let tome = ToMe::new(s.fitted(CASE.tokens, CASE.protected));
        check_adapter(&be, &tome, &CASE).unwrap();
    }
    check_adapter(&be, &IdentityAdapter, &CASE).unwrap();
}

/// Broken on purpose: claims `gamma = -2` but merges 1, or drops the class token.
#[derive(Debug)]
struct Broken {
    drop_class: bool,
}

impl<B: Backend> TokenAdapter<B> for Broken {
    fn name(&self) -> String {
        "broken".into()
    }
    fn gamma(&self, _layer: usize) -> i32 {
        if self.drop_class { -1 } else { -2 }
    }
    fn before_mlp(&self, be: &B, _l: usize, h: Hidden<B>, keys: &B::Tensor) -> Result<Hidden<B>> {
        if self.drop_class {
            let (_, n, _) = h.dims3(be)?;
            Ok(Hidden {
                x: be.narrow(&h.x, 1, 1, n - 1)?,
                ..h
            })
        } else {
            merge_tokens(be, h, keys, 1)
        }
    }
}

#[test]
fn broken_adapters_fail_the_conformance_suite() {
    let be = CandleBackend::cpu();
    let e = check_adapter(&be, &Broken { drop_class: false }, &CASE).unwrap_err();
    assert!(
        matches!(e, Error::Shape { .. }) && e.to_string().contains("layer 0, before_mlp"),
        "{e}"
    );
    let e = check_adapter(&be, &Broken { drop_class: true }, &CASE).unwrap_err();
    assert!(e.to_string().contains("protected token 0"), "{e}");
}

// ----- models -----

fn images<B: Backend>(be: &B, b: usize, seed: u64) -> Input<B> {
    let mut rng = StdRng::seed_from_u64(seed);
    Input::Images(t(be, &random(&mut rng, b * 3 * 32 * 32), &[b, 3, 32, 32]))
}

#[test]
fn tiny_vit_runs_with_tome_and_r0_is_bit_identical() {
    let model = tiny_vit(3).unwrap();
    let be = model.backend();
    let input = images(be, 2, 4);
    for s in [MergeSchedule::constant(3, 3), MergeSchedule::linear(3, 3)] {
        let tome = ToMe::new(s.fitted(17, 1));
        let h = model
            .run_blocks_with(model.embed(&input).unwrap(), 0..3, &tome)
            .unwrap();
        let want = *s.token_counts(17, 1).last().unwrap();
        assert_eq!(be.dims(&h.x), [2, want, 32]);
        assert!(
            be.to_vec(&model.head(&h).unwrap())
                .unwrap()
                .iter()
                .all(|v| v.is_finite())
        );
    }
    let tome = ToMe::new(MergeSchedule::constant(0, 3));
    let h = model
        .run_blocks_with(model.embed(&input).unwrap(), 0..3, &tome)
        .unwrap();
    let got = be.to_vec(&model.head(&h).unwrap()).unwrap();
    assert_eq!(got, be.to_vec(&model.forward(&input).unwrap()).unwrap());
}

#[test]
fn proportional_attention_makes_a_merged_duplicate_count_twice() {
    let model = tiny_vit(5).unwrap();
    let be = model.backend();
    let attn = &model.blocks()[0].attn;
    let (n, d) = (17, 32);
    let mut x = random(&mut StdRng::seed_from_u64(6), n * d);
    x.copy_within(2 * d..3 * d, 5 * d); // token 5 duplicates token 2
    let x = t(be, &x, &[1, n, d]);
    let (att, keys) = attn.forward(be, &x, None).unwrap();
    let merged = merge_tokens(be, Hidden::new(x, 1), &keys, 1).unwrap();
    // Token 2 (A) merges into token 5 (B, output index 8 + 2); order: 0,4,6,..,16, 1,3,..,15.
    let order: Vec<usize> = (0..n)
        .step_by(2)
        .filter(|&p| p != 2)
        .chain((1..n).step_by(2))
        .collect();
    let sizes = be.to_vec(merged.sizes.as_ref().unwrap()).unwrap();
    assert_eq!(sizes.iter().position(|&s| s == 2.0), Some(10));
    let bias = merged.attention_bias(be).unwrap();
    let with_bias = be
        .to_vec(&attn.forward(be, &merged.x, bias.as_ref()).unwrap().0)
        .unwrap();
    let without = be
        .to_vec(&attn.forward(be, &merged.x, None).unwrap().0)
        .unwrap();
    let att = be.to_vec(&att).unwrap();
    let diff = |got: &[f32]| {
        order
            .iter()
            .enumerate()
            .flat_map(|(i, &p)| (0..d).map(move |j| (i, p, j)))
            .map(|(i, p, j)| (got[i * d + j] - att[p * d + j]).abs())
            .fold(0.0f32, f32::max)
    };
    assert!(diff(&with_bias) < 1e-5, "{}", diff(&with_bias));
    assert!(
        diff(&without) > 1e-4,
        "log(size) must matter: {}",
        diff(&without)
    );
}

#[test]
fn deit_tiny_keeps_top1_on_3_of_4_images_at_r8() {
    let be = CandleBackend::cpu();
    let model = collab_core::fixtures::deit_tiny(be.clone()).unwrap();
    let imgs = collab_core::fixtures::imagenet_sample().unwrap();
    let paths: Vec<&std::path::Path> = imgs[..4].iter().map(|i| i.path.as_path()).collect();
    let pre = collab_core::input::ImagePreprocess::imagenet(224);
    let data = collab_core::input::load_image_batch(&pre, &paths).unwrap();
    let input = Input::Images(be.from_vec(data, &[4, 3, 224, 224]).unwrap());
    let top1 = |logits: &<CandleBackend as Backend>::Tensor| {
        be.index_to_vec(&be.argmax_last(logits).unwrap()).unwrap()
    };
    let plain = top1(&model.forward(&input).unwrap());
    let tome = ToMe::new(MergeSchedule::constant(8, 12).fitted(197, 1));
    let h = model
        .run_blocks_with(model.embed(&input).unwrap(), 0..12, &tome)
        .unwrap();
    assert_eq!(be.dims(&h.x), [4, 197 - 96, 192]);
    let merged = top1(&model.head(&h).unwrap());
    let same = plain.iter().zip(&merged).filter(|(a, b)| a == b).count();
    assert!(same >= 3, "top-1 {plain:?} vs merged {merged:?}");
}

/// Warm-up fine-tuning (PRODIGY, SPEC §5) backpropagates through merging: the gather and
/// scatter of ToMe and its proportional attention carry gradients to every parameter, and a
/// gradient through three merging blocks matches a finite difference.
#[test]
fn gradients_flow_through_tome_to_every_parameter() {
    use crate::shard::layout::test_models::tiny_vit_on;
    use crate::train::TrainableModel;

    let model = tiny_vit_on(CandleBackend::differentiable(), 6).unwrap();
    let trainable = TrainableModel::new(model).unwrap();
    let m = trainable.model();
    let be = m.backend();
    let input = images(be, 2, 9);
    let tome = ToMe::new(MergeSchedule::constant(3, 3).fitted(17, 1));
    let loss_of = |model: &collab_core::model::Transformer<CandleBackend>| {
        let h = model
            .run_blocks_with(model.embed(&input).unwrap(), 0..3, &tome)
            .unwrap();
        assert_eq!(be.dims(&h.x)[1], 17 - 9, "merged 3 per block");
        let logits = model.head(&h).unwrap();
        logits.sqr().unwrap().sum_all().unwrap()
    };
    let loss = loss_of(m);
    let grads = loss.backward().unwrap();
    trainable.check_gradients(&grads).unwrap();
    // A bias before the merges: its gradient against a central finite difference.
    let name = "blocks.0.mlp.fc2.bias";
    let var = &trainable
        .named_vars()
        .iter()
        .find(|(n, _)| n == name)
        .unwrap()
        .1;
    let g = grads
        .get(var.as_tensor())
        .unwrap()
        .to_vec1::<f32>()
        .unwrap()[0];
    let eps = 1e-2f32;
    let at = |delta: f32| {
        let mut shifted = m.clone();
        shifted
            .for_each_parameter_mut(|n, t| {
                if n == name {
                    let mut v = be.to_vec(&t.detach())?;
                    v[0] += delta;
                    *t = be.from_vec(v, &[t.dims()[0]])?;
                }
                Ok(())
            })
            .unwrap();
        loss_of(&shifted).to_scalar::<f32>().unwrap()
    };
    let fd = (at(eps) - at(-eps)) / (2.0 * eps);
    assert!(
        (fd - g).abs() <= 0.05 * g.abs().max(1e-3),
        "autograd {g} vs finite difference {fd}"
    );
}
