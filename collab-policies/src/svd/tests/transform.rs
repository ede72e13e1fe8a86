//! `tpca`: error monotone in the budget, better than `cpca-int8` at its bytes, close to
//! lossless with bytes to spare, and typed errors for damaged payloads.

use super::*;

/// `x` minus the position mean: the part of `x` a centred codec has to send.
fn centred_norm(x: &Activation, b: &Bases) -> f64 {
    let mut y = x.clone();
    b.centre.shift(&mut y, -1.0, "test").expect("shift");
    y.values
        .iter()
        .map(|v| f64::from(*v).powi(2))
        .sum::<f64>()
        .sqrt()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]

    /// The allocation runs the same moves further on a larger budget (module docs of
    /// `transform`), so the error never rises with the rank that sets the budget.
    #[test]
    fn tpca_error_is_monotone_in_its_budget(seed in 0u64..1000, n in 1usize..40, d in 2usize..40) {
        let x = activation(seed, n, d);
        let b = bases(n.max(2), d, seed);
        let errs: Vec<f64> = (1..=d).map(|r| error(&x, codec(Family::TransformPca, r, &b).as_ref())).collect();
        for pair in errs.windows(2) {
            prop_assert!(pair[1] <= pair[0], "{errs:?}");
        }
    }
}

/// At `cpca-int8`'s bytes, per-column widths and ranges over every component beat 8 bits per
/// leading coefficient with one scale per token, on a residual-stream-like activation (a few
/// loud features, low rank plus noise) seen by a basis calibrated on its kind.
#[test]
fn tpca_beats_cpca_int8_at_its_bytes() {
    let (n, d) = (40, 32);
    for seed in 0..6 {
        let x = activation(seed, n, d);
        let b = bases(n, d, seed);
        for rank in [2, 4, 8, 16] {
            let tpca = codec(Family::TransformPca, rank, &b);
            let cpca = codec(Family::CentredPca(Precision::Int8), rank, &b);
            assert_eq!(tpca.encoded_len(n, d), cpca.encoded_len(n, d));
            let (t, c) = (error(&x, tpca.as_ref()), error(&x, cpca.as_ref()));
            assert!(t < c, "seed {seed} rank {rank}: tpca {t} vs cpca-int8 {c}");
        }
    }
}

/// With 9 bits per value of budget (about 7 after the 24 column ranges), every column gets a
/// fine grid: the error is within `2^-6` of what the codec has to send (a uniform grid of `b`
/// bits leaves about `2^-b` of a column's spread).
#[test]
fn tpca_with_bytes_to_spare_is_close_to_lossless() {
    let (n, d) = (30, 24);
    let b = bases(n, d, 3);
    let x = activation(3, n, d);
    let rel = error(&x, codec(Family::TransformPca, d, &b).as_ref()) / centred_norm(&x, &b);
    assert!(rel < 1.0 / 64.0, "relative error {rel}");
}

/// Offsets in a `tpca` payload for a basis of `k` components.
fn widths_at(k: usize) -> std::ops::Range<usize> {
    HEADER_LEN..HEADER_LEN + k
}

#[test]
fn damaged_tpca_payloads_are_typed_errors() {
    let (n, d) = (20, 16);
    let b = bases(n, d, 9);
    let tpca = codec(Family::TransformPca, 6, &b);
    let good = tpca.encode(&activation(9, n, d)).expect("encode");
    assert!(tpca.decode(&good).is_ok());
    let widths = widths_at(b.centred_pca.rank());
    let first_active = good[widths.clone()]
        .iter()
        .position(|&w| w > 0)
        .expect("some column is sent");
    let ranges_at = widths.end;

    let mut too_wide = good.clone();
    too_wide[widths.start + first_active] = 17;
    let mut inverted = good.clone();
    inverted[ranges_at..ranges_at + 4].copy_from_slice(&1e9f32.to_le_bytes());
    let mut nan = good.clone();
    nan[ranges_at + 4..ranges_at + 8].copy_from_slice(&f32::NAN.to_le_bytes());
    let mut padded = good.clone();
    *padded.last_mut().expect("bytes") = 1;
    let mut all_wide = good.clone();
    all_wide[widths.clone()].fill(16);
    let cases: [(&str, &[u8], &str); 6] = [
        ("too wide", &too_wide, "bits"),
        ("inverted range", &inverted, "range"),
        ("NaN range", &nan, "range"),
        ("non-zero padding", &padded, "padding"),
        ("widths beyond the bytes", &all_wide, "shorter"),
        ("cut short", &good[..good.len() - 1], "bytes for"),
    ];
    for (what, bytes, says) in cases {
        let err = tpca.decode(bytes).expect_err(what).to_string();
        assert!(err.contains(says), "{what}: {err}");
    }
    let other = bases(n, d, 10);
    let err = codec(Family::TransformPca, 6, &other)
        .decode(&good)
        .expect_err("another basis")
        .to_string();
    assert!(err.contains("basis"), "{err}");
}
