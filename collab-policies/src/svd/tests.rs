//! Property tests of the codecs: exact byte counts, error monotone in rank, lossless full rank,
//! and typed rejection of foreign payloads.

use std::sync::Arc;

use collab_core::split::{Activation, ActivationCodec, truncation_ratio};
use proptest::prelude::*;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::*;

mod bases;
mod masked;
mod transform;

/// A low-rank-plus-noise activation with a few outlier features, like a residual stream.
fn activation(seed: u64, n: usize, d: usize) -> Activation {
    let mut rng = StdRng::seed_from_u64(seed);
    let k = 4.min(d);
    let a: Vec<f32> = (0..n * k).map(|_| rng.random_range(-1.0..1.0)).collect();
    let b: Vec<f32> = (0..k * d).map(|_| rng.random_range(-1.0..1.0)).collect();
    let mut values = vec![0f32; n * d];
    for i in 0..n {
        for j in 0..d {
            let low: f32 = (0..k).map(|t| a[i * k + t] * b[t * d + j]).sum();
            let outlier = if j % 17 == 3 { 8.0 } else { 0.0 };
            values[i * d + j] = low + outlier + 0.1 * rng.random_range(-1.0..1.0f32);
        }
    }
    Activation {
        tokens: n,
        features: d,
        values,
    }
}

fn error(x: &Activation, codec: &dyn ActivationCodec) -> f64 {
    let bytes = codec.encode(x).expect("encode");
    let y = codec.decode(&bytes).expect("decode");
    assert_eq!((y.tokens, y.features), (x.tokens, x.features));
    x.values
        .iter()
        .zip(&y.values)
        .map(|(a, b)| f64::from(a - b).powi(2))
        .sum::<f64>()
        .sqrt()
}

/// `x` with token `seed % n` scaled up 30 times: a token whose spread dwarfs the others', as
/// a ViT's residual stream has.
fn with_loud_token(mut x: Activation, seed: u64) -> Activation {
    let d = x.features;
    let i = (seed as usize) % x.tokens;
    x.values[i * d..(i + 1) * d]
        .iter_mut()
        .for_each(|v| *v *= 30.0);
    x
}

/// The token-relative squared error of `y` for `x` ([`ErrorMetric::TokenRelative`]).
fn relative_error_of(x: &Activation, y: &Activation) -> f64 {
    let w = ErrorMetric::TokenRelative.row_weights(x);
    super::metric::weighted_squared_error(x, y, w.as_deref())
}

/// The token-relative squared error of a round trip through `codec`.
fn relative_error(x: &Activation, codec: &dyn ActivationCodec) -> f64 {
    let y = codec
        .decode(&codec.encode(x).expect("encode"))
        .expect("decode");
    relative_error_of(x, &y)
}

/// What the families that need shared state hold, fitted on seeded calibration items.
struct Bases {
    pca: Arc<Basis>,
    weight: Arc<Basis>,
    centre: Arc<PositionMean>,
    /// PCA of the calibration items centred on `centre`.
    centred_pca: Arc<Basis>,
}

fn bases(n: usize, d: usize, seed: u64) -> Bases {
    let items: Vec<Activation> = (0..3).map(|s| activation(seed + 100 + s, n, d)).collect();
    let calib: Vec<f32> = items.iter().flat_map(|a| a.values.clone()).collect();
    let pca = Basis::fit_pca(&calib, d, "test").expect("pca");
    let centre = PositionMean::fit(&items, "test").expect("position mean");
    let centred_pca = centre
        .fit_centred_pca(&items, "test centred")
        .expect("centred pca");
    let mut rng = StdRng::seed_from_u64(seed);
    let w: Vec<f32> = (0..3 * d * d)
        .map(|_| rng.random_range(-1.0..1.0))
        .collect();
    let weight = Basis::from_weight(&w, 3 * d, d, "test").expect("weight svd");
    Bases {
        pca: Arc::new(pca),
        weight: Arc::new(weight),
        centre: Arc::new(centre),
        centred_pca: Arc::new(centred_pca),
    }
}

fn codec(family: Family, rank: usize, b: &Bases) -> Box<dyn ActivationCodec> {
    let shared = match family.basis_need() {
        BasisNeed::None => Shared::None,
        BasisNeed::Calibrated => Shared::Basis(b.pca.clone()),
        BasisNeed::Weight => Shared::Basis(b.weight.clone()),
        BasisNeed::PositionMean => Shared::PositionMean(b.centre.clone()),
        BasisNeed::CentredCalibrated => {
            Shared::CentredBasis(b.centred_pca.clone(), b.centre.clone())
        }
    };
    family.build_with(rank, shared).expect("build")
}

const ALL: [Family; 25] = [
    Family::Plain(Precision::F32),
    Family::Plain(Precision::F16),
    Family::Plain(Precision::Bf16),
    Family::Plain(Precision::Int8),
    Family::Svd(Precision::F32),
    Family::Svd(Precision::Bf16),
    Family::Svd(Precision::Int8),
    Family::CentredSvd(Precision::F32),
    Family::CentredSvd(Precision::Bf16),
    Family::Pca(Precision::F32),
    Family::Pca(Precision::F16),
    Family::Pca(Precision::Int8),
    Family::CentredPca(Precision::F32),
    Family::CentredPca(Precision::Int8),
    Family::AdaptiveSvd(Precision::F32),
    Family::AdaptiveSvd(Precision::Int8),
    Family::HybridSvd(Precision::F32),
    Family::HybridSvd(Precision::Int8),
    Family::LayerNormSvd(Precision::F32),
    Family::LayerNormSvd(Precision::Int8),
    Family::WeightSvd(Precision::F32),
    Family::WeightSvd(Precision::F16),
    Family::WeightSvd(Precision::Int8),
    Family::TransformPca,
    Family::MaskedPca,
];

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]

    #[test]
    fn rho_is_the_bytes_actually_produced(seed in 0u64..1000, n in 1usize..40, d in 2usize..40, rank in 1usize..40) {
        let x = activation(seed, n, d);
        let b = bases(n.max(2), d, seed);
        for family in ALL {
            let c = codec(family, rank, &b);
            let bytes = c.encode(&x).expect("encode");
            prop_assert_eq!(bytes.len(), c.encoded_len(n, d), "{}", c.name());
            prop_assert_eq!(bytes.len(), family.encoded_len(rank.min(d), n, d), "{}", c.name());
            let rho = truncation_ratio(bytes.len(), n, d);
            if let Some(r) = family.rank_for_ratio(rho, n, d, d) {
                let best = family.build(r, Some(b.pca.clone())).is_ok();
                prop_assert!(best || family.basis_need() != BasisNeed::None);
                prop_assert!(truncation_ratio(family.encoded_len(r, n, d), n, d) >= rho - 1e-12);
            }
        }
    }

    #[test]
    fn error_is_monotone_in_rank(seed in 0u64..1000, n in 8usize..40, d in 8usize..40) {
        let x = activation(seed, n, d);
        let b = bases(n, d, seed);
        for family in [Family::Svd(Precision::F32), Family::CentredSvd(Precision::F32), Family::Pca(Precision::F32), Family::CentredPca(Precision::F32), Family::AdaptiveSvd(Precision::F32), Family::HybridSvd(Precision::F32), Family::WeightSvd(Precision::F32)] {
            let errs: Vec<f64> = (1..=d.min(n)).map(|r| error(&x, codec(family, r, &b).as_ref())).collect();
            let scale = x.values.iter().map(|v| f64::from(*v).powi(2)).sum::<f64>().sqrt();
            for pair in errs.windows(2) {
                prop_assert!(pair[1] <= pair[0] + 1e-4 * scale, "{family}: {errs:?}");
            }
        }
    }

    /// `lsvd` minimises the token-relative error, so that error (not Frobenius) is monotone
    /// in rank: its candidates at a larger rank include those at a smaller one.
    #[test]
    fn token_relative_error_is_monotone_in_rank(seed in 0u64..1000, n in 8usize..40, d in 8usize..40) {
        let x = with_loud_token(activation(seed, n, d), seed);
        let b = bases(n, d, seed);
        let errs: Vec<f64> = (1..=d.min(n))
            .map(|r| relative_error(&x, codec(Family::LayerNormSvd(Precision::F32), r, &b).as_ref()))
            .collect();
        let scale = relative_error_of(&x, &Activation { values: vec![0.0; n * d], ..x.clone() });
        for pair in errs.windows(2) {
            prop_assert!(pair[1] <= pair[0] + 1e-4 * scale, "{errs:?}");
        }
    }

    /// Under the token-relative error `lsvd` is never worse than `hsvd`: the weighted SVD is
    /// the best rank-r fit in that error, the projections are the same, and it compares its
    /// candidates in that error.
    #[test]
    fn token_relative_choice_is_never_worse_than_hsvd(seed in 0u64..1000, n in 8usize..32, d in 8usize..32, rank in 1usize..8) {
        let x = with_loud_token(activation(seed, n, d), seed);
        let b = bases(n, d, seed);
        let lsvd = relative_error(&x, codec(Family::LayerNormSvd(Precision::F32), rank, &b).as_ref());
        let hsvd = relative_error(&x, codec(Family::HybridSvd(Precision::F32), rank, &b).as_ref());
        prop_assert!(lsvd <= hsvd * (1.0 + 1e-4) + 1e-9, "lsvd {lsvd} hsvd {hsvd}");
    }

    #[test]
    fn full_rank_reconstructs(seed in 0u64..1000, n in 1usize..30, d in 1usize..30) {
        let x = activation(seed, n, d);
        let b = bases(n.max(2), d, seed);
        let scale = x.values.iter().fold(0f32, |m, v| m.max(v.abs()));
        for family in [Family::Plain(Precision::F32), Family::Svd(Precision::F32), Family::CentredSvd(Precision::F32), Family::Pca(Precision::F32), Family::CentredPca(Precision::F32), Family::AdaptiveSvd(Precision::F32), Family::HybridSvd(Precision::F32), Family::LayerNormSvd(Precision::F32), Family::WeightSvd(Precision::F32)] {
            let c = codec(family, d, &b);
            let y = c.decode(&c.encode(&x).expect("encode")).expect("decode");
            for (a, b) in x.values.iter().zip(&y.values) {
                prop_assert!((a - b).abs() <= 1e-4 * scale.max(1.0), "{}: {a} vs {b}", c.name());
            }
        }
    }
}

/// The rank travels with the payload: a decoder built at rank 1 (as a server builds it, not
/// knowing the device's rank) decodes every rank's payload exactly as the encoder's own
/// decoder does.
#[test]
fn any_ranks_payload_decodes_without_knowing_the_rank() {
    let (n, d) = (9, 24);
    let b = bases(n, d, 3);
    let x = with_loud_token(activation(4, n, d), 2);
    for family in ALL {
        let server = codec(family, 1, &b);
        for rank in [1, 2, 5, 9, 24] {
            let device = codec(family, rank, &b);
            let payload = device.encode(&x).expect("encode");
            let want = device.decode(&payload).expect("own decode");
            match server.decode(&payload) {
                Ok(got) => assert_eq!(got, want, "{family} at rank {rank}"),
                Err(e) => panic!("{family} at rank {rank}: {e}"),
            }
        }
    }
}

#[test]
fn rank_for_ratio_is_the_largest_within_budget() {
    let (n, d) = (197, 192);
    for family in Family::SWEEP {
        for rho in [0.1, 0.3, 0.5, 0.7, 0.9] {
            match family.rank_for_ratio(rho, n, d, d) {
                Some(r) if !matches!(family, Family::Plain(_)) => {
                    assert!(truncation_ratio(family.encoded_len(r, n, d), n, d) >= rho);
                    if r < d {
                        assert!(truncation_ratio(family.encoded_len(r + 1, n, d), n, d) < rho);
                    }
                }
                Some(_) => assert!(truncation_ratio(family.encoded_len(d, n, d), n, d) >= rho),
                None => assert!(truncation_ratio(family.encoded_len(1, n, d), n, d) < rho),
            }
        }
    }
    // The numbers in the module table: int8 removes about 74% at DeiT-Tiny's split.
    assert_eq!(
        Family::Plain(Precision::Int8).rank_for_ratio(0.74, n, d, d),
        Some(d)
    );
    assert_eq!(
        Family::Plain(Precision::Int8).rank_for_ratio(0.75, n, d, d),
        None
    );
}

#[test]
fn foreign_or_damaged_payloads_are_typed_errors() {
    let x = activation(7, 20, 16);
    let b = bases(20, 16, 7);
    let svd = codec(Family::Svd(Precision::F32), 4, &b);
    let bytes = svd.encode(&x).expect("encode");
    let is_codec_err =
        |r: collab_core::Result<Activation>| matches!(r, Err(collab_core::Error::Codec { .. }));
    assert!(is_codec_err(svd.decode(&bytes[..bytes.len() - 1])));
    assert!(is_codec_err(svd.decode(&bytes[..10])));
    let mut longer = bytes.clone();
    longer.push(0);
    assert!(is_codec_err(svd.decode(&longer)));
    assert!(is_codec_err(
        codec(Family::Svd(Precision::Int8), 4, &b).decode(&bytes)
    ));
    assert!(is_codec_err(
        codec(Family::Plain(Precision::F32), 4, &b).decode(&bytes)
    ));
    // A payload projected on one basis is refused by a server holding another.
    let on_pca = codec(Family::Pca(Precision::F32), 4, &b)
        .encode(&x)
        .expect("encode");
    let other = bases(20, 16, 8);
    assert!(is_codec_err(
        codec(Family::Pca(Precision::F32), 4, &other).decode(&on_pca)
    ));
    // A centred payload needs its own position mean: plain svd, another mean and the
    // reverse are all refused.
    let centred = codec(Family::CentredSvd(Precision::F32), 4, &b);
    let on_centre = centred.encode(&x).expect("encode");
    assert!(is_codec_err(svd.decode(&on_centre)));
    assert!(is_codec_err(
        codec(Family::CentredSvd(Precision::F32), 4, &other).decode(&on_centre)
    ));
    assert!(is_codec_err(centred.decode(&bytes)));
    // Building without a mean is an error.
    assert!(
        Family::CentredSvd(Precision::F32)
            .build(4, Some(b.pca.clone()))
            .is_err()
    );
    // Non-finite values are refused before encoding; a wrong feature count too.
    let mut bad = x.clone();
    bad.values[5] = f32::NAN;
    assert!(svd.encode(&bad).is_err());
    let narrow = activation(1, 20, 8);
    assert!(
        codec(Family::Pca(Precision::F32), 4, &b)
            .encode(&narrow)
            .is_err()
    );
}

#[test]
fn adaptive_keeps_the_better_reduction_and_checks_its_layout() {
    let b = bases(20, 16, 11);
    let x = activation(12, 20, 16);
    for rank in 1..=6 {
        let asvd = codec(Family::AdaptiveSvd(Precision::F32), rank, &b);
        let csvd = codec(Family::CentredSvd(Precision::F32), rank, &b);
        let bytes = asvd.encode(&x).expect("encode");
        assert_eq!(bytes.len(), 1 + csvd.encoded_len(20, 16));
        let chosen = error(&x, asvd.as_ref());
        // Never worse than the SVD alone; when it picks the projection, the projection won.
        assert!(chosen <= error(&x, csvd.as_ref()) + 1e-6, "rank {rank}");
        let mut damaged = bytes.clone();
        damaged[0] = 7;
        assert!(asvd.decode(&damaged).is_err());
        if bytes[0] == 1 {
            let mut padded = bytes.clone();
            *padded.last_mut().expect("padding") = 1;
            assert!(asvd.decode(&padded).is_err(), "non-zero padding");
        }
        assert!(asvd.decode(&bytes[..bytes.len() - 1]).is_err());
    }
}

/// Calibration item 0 of `bases(n, d, seed)` plus a rank-2 part of its own: the shared basis
/// explains the first, the request's own SVD the second.
fn shared_plus_own(n: usize, d: usize, seed: u64) -> Activation {
    let mut x = activation(seed + 100, n, d);
    let own = activation(77, n, 2);
    let mut rng = StdRng::seed_from_u64(3);
    let dirs: Vec<f32> = (0..2 * d).map(|_| rng.random_range(-1.0..1.0)).collect();
    for i in 0..n {
        for j in 0..d {
            x.values[i * d + j] +=
                3.0 * (own.values[i * 2] * dirs[j] + own.values[i * 2 + 1] * dirs[d + j]);
        }
    }
    x
}

/// A calibration item plus a rank-2 part of its own: the shared basis explains the first, the
/// request's own SVD the second, so the hybrid reduction should win somewhere.
#[test]
fn hybrid_is_never_worse_than_adaptive_and_checks_its_layout() {
    let (n, d) = (24, 20);
    let b = bases(n, d, 11);
    let x = shared_plus_own(n, d, 11);
    let mut tags = vec![];
    for rank in 1..=8 {
        let hsvd = codec(Family::HybridSvd(Precision::F32), rank, &b);
        let asvd = codec(Family::AdaptiveSvd(Precision::F32), rank, &b);
        let bytes = hsvd.encode(&x).expect("encode");
        assert_eq!(bytes.len(), asvd.encoded_len(n, d), "rank {rank}");
        assert!(
            error(&x, hsvd.as_ref()) <= error(&x, asvd.as_ref()) + 1e-6,
            "rank {rank}"
        );
        tags.push(bytes[0]);
        if bytes[0] == 2 {
            // asvd does not read a hybrid payload; the hybrid refuses damage.
            assert!(asvd.decode(&bytes).is_err());
            let mut padded = bytes.clone();
            *padded.last_mut().expect("padding") = 1;
            assert!(hsvd.decode(&padded).is_err(), "non-zero padding");
            assert!(hsvd.decode(&bytes[..bytes.len() - 1]).is_err());
            let mut bad_tag = bytes.clone();
            bad_tag[0] = 3;
            assert!(hsvd.decode(&bad_tag).is_err());
        }
    }
    assert!(tags.contains(&2), "the hybrid never won: tags {tags:?}");
}

#[test]
fn families_parse_from_their_names() {
    for family in ALL {
        assert_eq!(family.to_string().parse::<Family>().expect("parse"), family);
    }
    assert!("svd-int4".parse::<Family>().is_err());
    assert!("zip".parse::<Family>().is_err());
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// Untrusted bytes (a server decodes what the network sends): a valid header with any
    /// declared sizes, then any tail, is a typed error or an activation, never a panic or an
    /// allocation the bytes do not pay for.
    #[test]
    fn decoding_arbitrary_payloads_never_panics(
        kind in 0u8..5, tag in 0u8..4,
        tokens in prop_oneof![Just(u32::MAX), 0u32..64, any::<u32>()],
        features in prop_oneof![Just(u32::MAX), 0u32..64, any::<u32>()],
        rank in prop_oneof![Just(u32::MAX), 0u32..64, any::<u32>()],
        tail in proptest::collection::vec(any::<u8>(), 0..600),
    ) {
        let mut bytes = b"CB\x01".to_vec();
        bytes.extend([kind, tag]);
        for v in [tokens, features, rank] {
            bytes.extend(v.to_le_bytes());
        }
        bytes.extend(0u64.to_le_bytes());
        bytes.extend(&tail);
        let b = bases(8, 16, 1);
        for family in ALL {
            let c = codec(family, 4, &b);
            if let Ok(a) = c.decode(&bytes) {
                prop_assert_eq!(a.values.len(), a.tokens * a.features);
            }
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// A hybrid payload (two headers in one) with bytes overwritten or cut off is a typed error
    /// or an activation of the declared shape, never a panic.
    #[test]
    fn damaged_hybrid_payloads_never_panic(
        edits in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..6),
        cut in any::<prop::sample::Index>(),
    ) {
        let (n, d) = (24, 20);
        let b = bases(n, d, 11);
        let x = shared_plus_own(n, d, 11);
        let hsvd = codec(Family::HybridSvd(Precision::F32), 4, &b);
        let mut bytes = hsvd.encode(&x).expect("encode");
        prop_assert_eq!(bytes[0], 2, "the hybrid layout is what this test damages");
        for (at, v) in edits {
            let i = at.index(bytes.len());
            bytes[i] = v;
        }
        for len in [bytes.len(), cut.index(bytes.len())] {
            if let Ok(a) = hsvd.decode(&bytes[..len]) {
                prop_assert_eq!(a.values.len(), a.tokens * a.features);
            }
        }
    }
}

/// An item longer than every calibration item (text) still round-trips: its later positions
/// are centred on the overall mean, on both sides alike, so full rank is lossless and the
/// centring is the overall mean there.
#[test]
fn positions_past_the_fitted_mean_use_the_overall_mean() {
    let (d, fitted) = (16, 12);
    let b = bases(fitted, d, 5);
    assert_eq!(b.centre.tokens, fitted);
    assert_eq!(b.centre.overall.len(), d);
    // The overall mean is the mean of the per-position means when every item has every
    // position.
    for j in 0..d {
        let mean: f32 =
            (0..fitted).map(|i| b.centre.values[i * d + j]).sum::<f32>() / fitted as f32;
        assert!((mean - b.centre.overall[j]).abs() < 1e-4, "feature {j}");
    }
    let long = activation(9, fitted + 7, d);
    for family in [
        Family::CentredSvd(Precision::F32),
        Family::CentredPca(Precision::F32),
        Family::AdaptiveSvd(Precision::F32),
    ] {
        let full = codec(family, d, &b);
        let err = error(&long, full.as_ref());
        let norm = long
            .values
            .iter()
            .map(|v| f64::from(*v).powi(2))
            .sum::<f64>()
            .sqrt();
        assert!(
            err <= 1e-4 * norm,
            "{family}: full-rank error {err} of {norm}"
        );
    }
    // What each position is centred on: shifting zeros gives the means themselves.
    let mut zeros = Activation {
        tokens: fitted + 7,
        features: d,
        values: vec![0.0; (fitted + 7) * d],
    };
    b.centre.shift(&mut zeros, 1.0, "test").expect("shift");
    let row = fitted + 3;
    assert_eq!(
        &zeros.values[row * d..(row + 1) * d],
        b.centre.overall.as_slice()
    );
    assert_eq!(&zeros.values[..fitted * d], b.centre.values.as_slice());
    // Another feature count is still refused, with the codec's name.
    let mut narrow = activation(1, 4, d - 1);
    assert!(b.centre.shift(&mut narrow, 1.0, "test").is_err());
}

/// On an activation with one loud token the token-relative metric changes the outcome: at
/// some rank `lsvd`'s token-relative error is well below `hsvd`'s (the weighting is not a
/// no-op), and its payload is one `hsvd` could have sent (the same layout and length).
#[test]
fn token_relative_weighting_pays_on_a_loud_token() {
    let (n, d) = (24, 20);
    let b = bases(n, d, 11);
    let x = with_loud_token(shared_plus_own(n, d, 11), 5);
    let mut gains = vec![];
    for rank in 1..=8 {
        let lsvd = codec(Family::LayerNormSvd(Precision::F32), rank, &b);
        let hsvd = codec(Family::HybridSvd(Precision::F32), rank, &b);
        let bytes = lsvd.encode(&x).expect("encode");
        assert_eq!(bytes.len(), hsvd.encoded_len(n, d), "rank {rank}");
        assert!(bytes[0] <= 2, "tag {}", bytes[0]);
        gains.push(relative_error(&x, hsvd.as_ref()) / relative_error(&x, lsvd.as_ref()));
    }
    assert!(
        gains.iter().any(|&g| g > 1.2),
        "token-relative error of hsvd over lsvd per rank: {gains:?}"
    );
}

/// Uniform row weights give the plain SVD's factors; a weight per token is required.
#[test]
fn row_weighted_svd_with_equal_weights_is_the_plain_svd() {
    let x = activation(3, 12, 10);
    let svd = SvdCodec {
        rank: 3,
        precision: Precision::F32,
    };
    let plain = svd
        .decode(&svd.encode(&x).expect("encode"))
        .expect("decode");
    let ones = vec![4.0f32; 12];
    let weighted = svd
        .decode(
            &svd.encode_tagged(&x, 0, "svd", Some(&ones))
                .expect("encode"),
        )
        .expect("decode");
    for (a, b) in plain.values.iter().zip(&weighted.values) {
        assert!((a - b).abs() < 1e-4, "{a} vs {b}");
    }
    assert!(svd.encode_tagged(&x, 0, "svd", Some(&ones[..11])).is_err());
}
