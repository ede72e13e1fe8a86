//! Quantisation: packing round trips, error bounds and monotonicity, exact outliers and f32,
//! sizes known before encoding, and decoders that reject any damage without panicking.
use proptest::prelude::*;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rand_distr::{Distribution, Normal};

use super::super::layout::test_models::{tiny_bert, tiny_vit};
use super::super::layout::{ShardWeights, cut_layer};
use super::super::{FIDELITIES, Fidelity, QUANT_BITS, ShardGeometry};
use super::*;

/// Gaussian weights (std 0.05) with `spikes` values of magnitude 1..2 planted at random.
fn gaussian(seed: u64, n: usize, spikes: usize) -> Vec<f32> {
    let mut rng = StdRng::seed_from_u64(seed);
    let normal = Normal::new(0.0f32, 0.05).expect("normal");
    let mut v: Vec<f32> = (0..n).map(|_| normal.sample(&mut rng)).collect();
    for _ in 0..spikes {
        let i = rng.random_range(0..n);
        let sign = if rng.random_bool(0.5) { 1.0 } else { -1.0 };
        v[i] = sign * rng.random_range(1.0..2.0f32);
    }
    v
}

fn rms(a: &[f32], b: &[f32]) -> f64 {
    let s: f64 = a.iter().zip(b).map(|(x, y)| f64::from(x - y).powi(2)).sum();
    (s / a.len() as f64).sqrt()
}

fn is_sti_codec(r: &Result<impl std::fmt::Debug>) -> bool {
    matches!(r, Err(Error::Codec { codec, .. }) if codec == CODEC)
}

/// A geometry and its shards' weights: d = 32, 4 heads of 8, FFN slices of 16.
fn bert_shards() -> (ShardGeometry, Vec<ShardWeights>) {
    let model = tiny_bert(9).expect("tiny bert");
    let g = ShardGeometry::of(model.config().encoder()).expect("geometry");
    (g, cut_layer(&model, 1).expect("cut").0)
}

proptest! {
    #[test]
    fn packing_round_trips_every_width(bits in 1u8..=8, codes in prop::collection::vec(any::<u8>(), 0..300)) {
        let mask = ((1u16 << bits) - 1) as u8;
        let codes: Vec<u8> = codes.into_iter().map(|c| c & mask).collect();
        let packed = pack_codes(&codes, bits);
        prop_assert_eq!(packed.len(), packed_len(codes.len(), bits));
        prop_assert_eq!(unpack_codes(&packed, bits, codes.len()).expect("unpack"), codes.clone());
        if !packed.is_empty() {
            prop_assert!(unpack_codes(&packed[1..], bits, codes.len()).is_err());
        }
    }

    #[test]
    fn decoders_never_panic_on_arbitrary_bytes(bytes in prop::collection::vec(any::<u8>(), 0..600)) {
        let (g, _) = bert_shards();
        let _ = decode_shard(&bytes, &g);
        let _ = decode_attention(&bytes, &g);
        let _ = decode_ffn(&bytes, &g);
        let _ = shard_fidelity(&bytes);
    }

    #[test]
    fn garbage_sections_behind_a_valid_header_never_panic(
        fid in 0usize..FIDELITIES.len(),
        body in prop::collection::vec(any::<u8>(), 0..3000),
        split in any::<prop::sample::Index>(),
    ) {
        let (g, shards) = bert_shards();
        let blob = encode_shard(&shards[0], &g, FIDELITIES[fid], &QuantOptions::default()).expect("encode");
        let attention = split.index(body.len() + 1) as u64;
        let mut b = blob[..HEADER_LEN].to_vec();
        b[24..32].copy_from_slice(&attention.to_le_bytes());
        b[32..40].copy_from_slice(&(body.len() as u64 - attention).to_le_bytes());
        b.extend(&body);
        for r in [decode_attention(&b, &g).map(|_| ()), decode_ffn(&b, &g).map(|_| ())] {
            prop_assert!(r.is_ok() || is_sti_codec(&r));
        }
    }

    #[test]
    fn damaged_blobs_are_errors_or_values_never_panics(
        fid in 0usize..FIDELITIES.len(),
        cut in any::<prop::sample::Index>(),
        flips in prop::collection::vec((any::<prop::sample::Index>(), 0u8..8), 1..4),
    ) {
        let (g, shards) = bert_shards();
        let blob = encode_shard(&shards[0], &g, FIDELITIES[fid], &QuantOptions::default()).expect("encode");
        let truncated = &blob[..cut.index(blob.len())];
        prop_assert!(is_sti_codec(&decode_shard(truncated, &g)));
        let mut longer = blob.clone();
        longer.push(0);
        prop_assert!(is_sti_codec(&decode_shard(&longer, &g)));
        let mut flipped = blob.clone();
        for (at, bit) in flips {
            let i = at.index(flipped.len());
            flipped[i] ^= 1 << bit;
        }
        match decode_shard(&flipped, &g) {
            Ok(w) => prop_assert_eq!(w.attention.qkv.len(), shards[0].attention.qkv.len()),
            Err(e) => prop_assert!(matches!(e, Error::Codec { .. }), "{e}"),
        }
    }
}

#[test]
fn error_decreases_with_bits() {
    let opts = QuantOptions::default();
    for seed in 0..3 {
        let w = gaussian(seed, 384 * 128, 40);
        let errors: Vec<f64> = QUANT_BITS
            .iter()
            .map(|&b| {
                rms(
                    &w,
                    &quantize_matrix(&w, b, &opts)
                        .expect("quantize")
                        .dequantize(),
                )
            })
            .collect();
        assert!(errors.windows(2).all(|e| e[0] > e[1]), "{errors:?}");
        // 8 bits: a step of range / 255 with range ~ 8 std, uniform rounding error step / sqrt 12
        assert!(errors[5] < 0.05 * 8.0 / 255.0, "{errors:?}");
    }
}

#[test]
fn outliers_are_the_largest_and_come_back_exactly() {
    let opts = QuantOptions::default();
    let w = gaussian(7, 300 * 64 + 24, 30);
    let k = opts.outliers(w.len());
    assert_eq!(k, w.len() / 256);
    let mut mags: Vec<f32> = w.iter().map(|v| v.abs()).collect();
    mags.sort_by(|a, b| b.total_cmp(a));
    for &b in &QUANT_BITS {
        let q = quantize_matrix(&w, b, &opts).expect("quantize");
        let back = q.dequantize();
        let outliers: Vec<(u32, f32)> = q.outliers().collect();
        assert_eq!(outliers.len(), k);
        for &(i, v) in &outliers {
            assert_eq!(v.to_bits(), w[i as usize].to_bits());
            assert_eq!(back[i as usize].to_bits(), v.to_bits());
            assert!(v.abs() >= mags[k - 1]);
        }
        // every planted spike (|w| >= 1) is an outlier, since there are fewer than k of them
        assert!(w.iter().zip(&back).all(|(a, b)| a.abs() < 1.0 || a == b));
    }
}

#[test]
fn every_value_is_within_half_a_step_of_its_group() {
    let opts = QuantOptions {
        group: 64,
        outlier_frac: 1.0 / 128.0,
    };
    let w = gaussian(3, 64 * 50 + 40, 10);
    for &b in &QUANT_BITS {
        let q = quantize_matrix(&w, b, &opts).expect("quantize");
        let back = q.dequantize();
        let params: Vec<(f32, f32)> = q.group_params().collect();
        assert_eq!(params.len(), w.len().div_ceil(64));
        for (g, (chunk, got)) in w.chunks(64).zip(back.chunks(64)).enumerate() {
            let (_, scale) = params[g];
            for (a, b) in chunk.iter().zip(got) {
                let tol = scale / 2.0 * (1.0 + 1e-5) + 4.0 * f32::EPSILON * a.abs().max(1.0);
                assert!(
                    (a - b).abs() <= tol,
                    "{b}-bit group {g}: {a} vs {b}, step {scale}"
                );
            }
        }
    }
}

#[test]
fn constant_groups_have_zero_step_and_come_back_exactly() {
    let w = vec![0.5f32; 64 * 3];
    let q = quantize_matrix(&w, 3, &QuantOptions::default()).expect("quantize");
    assert!(q.group_params().all(|(m, s)| m == 0.5 && s == 0.0));
    assert_eq!(q.dequantize(), w);
    let z = quantize_matrix(&[0.0; 10], 2, &QuantOptions::default()).expect("zeros");
    assert_eq!(z.dequantize(), vec![0.0; 10]);
}

#[test]
fn matrix_bytes_round_trip_and_reject_bad_counts() {
    let w = gaussian(4, 1000, 5);
    let opts = QuantOptions::default();
    for &b in &QUANT_BITS {
        let q = quantize_matrix(&w, b, &opts).expect("quantize");
        let mut bytes = vec![];
        q.to_bytes(&mut bytes);
        assert_eq!(
            bytes.len(),
            QuantMatrix::byte_len(1000, b, 64, opts.outliers(1000))
        );
        let back = QuantMatrix::from_bytes(&bytes, 1000, b, 64).expect("parse");
        assert_eq!(back, q);
        let mut absurd = bytes.clone();
        absurd[..4].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(is_sti_codec(&QuantMatrix::from_bytes(&absurd, 1000, b, 64)));
    }
    let mut out = vec![0.0; 3];
    let q = quantize_matrix(&w, 4, &opts).expect("quantize");
    assert!(matches!(
        q.dequantize_into(&mut out),
        Err(Error::Shape { .. })
    ));
}

#[test]
fn bad_options_and_values_are_rejected() {
    let w = vec![0.1f32; 100];
    let bad_group = QuantOptions {
        group: 12,
        ..QuantOptions::default()
    };
    assert!(matches!(
        quantize_matrix(&w, 4, &bad_group),
        Err(Error::Config(_))
    ));
    assert!(matches!(
        quantize_matrix(&w, 7, &QuantOptions::default()),
        Err(Error::Config(_))
    ));
    let mut nan = w.clone();
    nan[3] = f32::NAN;
    assert!(matches!(
        quantize_matrix(&nan, 4, &QuantOptions::default()),
        Err(Error::InvalidInput(_))
    ));
}

#[test]
fn f32_round_trip_is_exact_and_q8_close() {
    let (g, shards) = bert_shards();
    let opts = QuantOptions::default();
    for w in &shards {
        let blob = encode_shard(w, &g, Fidelity::F32, &opts).expect("encode");
        assert_eq!(shard_fidelity(&blob).expect("header"), Fidelity::F32);
        assert_eq!(&decode_shard(&blob, &g).expect("decode"), w);
        let q8 = decode_shard(
            &encode_shard(w, &g, Fidelity::Bits(8), &opts).expect("q8"),
            &g,
        )
        .expect("decode q8");
        assert!(w.relative_error(&q8) < 0.01, "{}", w.relative_error(&q8));
        assert_eq!(q8.attention.qkv_bias, w.attention.qkv_bias);
        assert_eq!(q8.ffn.fc1_bias, w.ffn.fc1_bias);
    }
}

#[test]
fn encoded_len_matches_the_blobs() {
    let vit = tiny_vit(1).expect("tiny vit");
    let (gv, sv) = (
        ShardGeometry::of(vit.config().encoder()).expect("geometry"),
        cut_layer(&vit, 2).expect("cut").0,
    );
    let (gb, sb) = bert_shards();
    let odd = QuantOptions {
        group: 24,
        outlier_frac: 0.01,
    };
    for (g, shards) in [(&gv, &sv), (&gb, &sb)] {
        for opts in [QuantOptions::default(), odd] {
            for f in FIDELITIES {
                let blob = encode_shard(&shards[0], g, f, &opts).expect("encode");
                assert_eq!(
                    blob.len() as u64,
                    encoded_len(g, f, &opts).expect("len"),
                    "{f}"
                );
            }
        }
    }
    assert!(encoded_len(&gv, Fidelity::Bits(7), &QuantOptions::default()).is_err());
}

#[test]
fn header_damage_is_named() {
    let (g, shards) = bert_shards();
    let blob =
        encode_shard(&shards[1], &g, Fidelity::Bits(4), &QuantOptions::default()).expect("encode");
    let message = |b: &[u8]| match decode_shard(b, &g) {
        Err(Error::Codec { codec, message }) if codec == CODEC => message,
        other => panic!("expected a codec error, got {other:?}"),
    };
    let mut m = blob.clone();
    m[0] = b'X';
    assert!(message(&m).contains("magic"));
    let mut v = blob.clone();
    v[4] = 9;
    assert!(message(&v).contains("version"));
    let mut f = blob.clone();
    f[6] = 7;
    assert!(message(&f).contains("7-bit"));
    assert!(message(&blob[..blob.len() - 1]).contains("announces"));
    let other = ShardGeometry {
        hidden: 64,
        ..g.clone()
    };
    assert!(is_sti_codec(&decode_attention(&blob, &other)));
    assert!(message(&blob[..10]).contains("too short"));
}

#[test]
fn sections_decode_independently() {
    let (g, shards) = bert_shards();
    let mut blob =
        encode_shard(&shards[2], &g, Fidelity::Bits(5), &QuantOptions::default()).expect("encode");
    let h = shard_header(&blob).expect("header");
    // an absurd outlier count at the start of fc1 (after the s f32 biases) breaks only the FFN
    let fc1 = HEADER_LEN + h.attention_len as usize + 4 * g.ffn_slice();
    blob[fc1..fc1 + 4].copy_from_slice(&u32::MAX.to_le_bytes());
    let attention = decode_attention(&blob, &g).expect("attention intact");
    let exact = decode_attention(
        &encode_shard(&shards[2], &g, Fidelity::Bits(5), &QuantOptions::default()).expect("e"),
        &g,
    )
    .expect("decode");
    assert_eq!(attention, exact);
    assert!(is_sti_codec(&decode_ffn(&blob, &g)));
}
