//! `mpca`: error monotone in rank and never above `cpca`'s at the same rank, lower than it on a
//! request whose energy the calibration's order misses, lossless at full rank, and typed errors
//! for damaged payloads.

use super::*;

/// Room for float rounding between two reconstructions of nearly the same coefficients.
fn at_most(a: f64, b: f64) -> bool {
    a <= b * (1.0 + 1e-5) + 1e-6
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]

    /// Every candidate of a smaller budget is tried with more values at a larger one, and the
    /// dense candidate is `cpca`'s payload (module docs of `masked`).
    #[test]
    fn mpca_error_is_monotone_in_rank_and_at_most_cpca(seed in 0u64..1000, n in 1usize..40, d in 2usize..40) {
        let x = with_loud_token(activation(seed, n, d), seed);
        let b = bases(n.max(2), d, seed);
        let errs: Vec<f64> = (1..=d).map(|r| error(&x, codec(Family::MaskedPca, r, &b).as_ref())).collect();
        for pair in errs.windows(2) {
            prop_assert!(at_most(pair[1], pair[0]), "{errs:?}");
        }
        for (r, &e) in (1..=d).zip(&errs) {
            let cpca = error(&x, codec(Family::CentredPca(Precision::F32), r, &b).as_ref());
            prop_assert!(at_most(e, cpca), "rank {r}: mpca {e} vs cpca {cpca}");
        }
    }
}

/// A request with one loud token (its energy on components the calibration set ranks late):
/// the largest coefficients beat the leading columns at `cpca`'s bytes (plus the mode byte)
/// once there are enough columns for the bitmask to pay.
#[test]
fn mpca_beats_cpca_on_a_request_unlike_the_calibration() {
    let (n, d) = (64, 48);
    for seed in 0..4 {
        let b = bases(n, d, seed);
        let x = with_loud_token(activation(seed, n, d), seed);
        for rank in [16, 24, 32] {
            let mpca = codec(Family::MaskedPca, rank, &b);
            let cpca = codec(Family::CentredPca(Precision::F32), rank, &b);
            assert_eq!(mpca.encoded_len(n, d), cpca.encoded_len(n, d) + 1);
            let (m, c) = (error(&x, mpca.as_ref()), error(&x, cpca.as_ref()));
            assert!(m < 0.9 * c, "seed {seed} rank {rank}: mpca {m} vs cpca {c}");
        }
    }
}

#[test]
fn mpca_at_full_rank_is_lossless() {
    let (n, d) = (30, 24);
    let b = bases(n, d, 4);
    let x = activation(4, n, d);
    let norm = x
        .values
        .iter()
        .map(|v| f64::from(*v).powi(2))
        .sum::<f64>()
        .sqrt();
    let err = error(&x, codec(Family::MaskedPca, d, &b).as_ref());
    assert!(err <= 1e-5 * norm, "error {err} of {norm}");
}

/// Offset of the mode byte.
const MODE_AT: usize = HEADER_LEN;

#[test]
fn damaged_mpca_payloads_are_typed_errors() {
    let (n, d) = (23, 12);
    let b = bases(n, d, 9);
    let x = with_loud_token(activation(9, n, d), 9);
    let (mut padding_seen, mut masked_seen, mut stray_seen) = (false, false, false);
    for rank in 2..d {
        let mpca = codec(Family::MaskedPca, rank, &b);
        let good = mpca.encode(&x).expect("encode");
        assert!(mpca.decode(&good).is_ok());
        if good[MODE_AT] != 1 {
            continue; // the masked layout is what this test damages
        }
        masked_seen = true;
        let columns = u32::from_le_bytes(good[13..17].try_into().expect("rank")) as usize;
        let mask = MODE_AT + 1..MODE_AT + 1 + (n * columns).div_ceil(8);
        let sent: usize = good[mask.clone()]
            .iter()
            .map(|b| b.count_ones() as usize)
            .sum();
        let padding = mask.end + 4 * sent..good.len();

        let mut bad_mode = good.clone();
        bad_mode[MODE_AT] = 2;
        let mut full_mask = good.clone();
        full_mask[mask.clone()].fill(0xff);
        if !(n * columns).is_multiple_of(8) {
            full_mask[mask.end - 1] = (1u8 << ((n * columns) % 8)) - 1;
        }
        let mut nan = good.clone();
        nan[mask.end..mask.end + 4].copy_from_slice(&f32::NAN.to_le_bytes());
        let mut too_many_columns = good.clone();
        too_many_columns[13..17].copy_from_slice(&(d as u32 + 1).to_le_bytes());
        let mut cases: Vec<(&str, Vec<u8>, &str)> = vec![
            ("unknown mode", bad_mode, "mode"),
            (
                "a mask beyond the bytes",
                full_mask,
                "shorter than its values",
            ),
            ("NaN value", nan, "coefficient"),
            ("columns beyond the basis", too_many_columns, "columns"),
            ("cut short", good[..good.len() - 1].to_vec(), "bytes for"),
        ];
        if !padding.is_empty() {
            padding_seen = true;
            let mut padded = good.clone();
            padded[padding.end - 1] = 1;
            cases.push(("non-zero padding", padded, "padding"));
        }
        if !(n * columns).is_multiple_of(8) {
            stray_seen = true;
            let mut stray = good.clone();
            stray[mask.end - 1] |= 0x80;
            cases.push(("a bit past the mask", stray, "bitmask"));
        }
        for (what, bytes, says) in cases {
            let err = mpca.decode(&bytes).expect_err(what).to_string();
            assert!(err.contains(says), "rank {rank}, {what}: {err}");
        }
        let other = bases(n, d, 10);
        let err = codec(Family::MaskedPca, rank, &other)
            .decode(&good)
            .expect_err("another basis")
            .to_string();
        assert!(err.contains("basis"), "{err}");
    }
    assert!(
        masked_seen && padding_seen && stray_seen,
        "masked {masked_seen}, padding {padding_seen}, bits past the mask {stray_seen}"
    );
}
