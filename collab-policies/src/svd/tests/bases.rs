//! [`SplitBases`]: the file both sides of a network split load round-trips every calibrated
//! codec's payloads, and a damaged or foreign file is a typed error.

use super::*;

fn items(seed: u64, n: usize, d: usize) -> Vec<Activation> {
    (0..3).map(|s| activation(seed + s, n, d)).collect()
}

fn fitted(d: usize) -> SplitBases {
    let mut bases = SplitBases::new("test-model");
    for split in [1, 3] {
        let basis = SplitBasis::fit(&items(10 * split as u64, 9, d), &format!("block {split}"))
            .expect("fit");
        bases.insert(split, basis).expect("insert");
    }
    bases
}

#[test]
fn a_file_round_trip_keeps_every_calibrated_codecs_payloads() {
    let bases = fitted(24);
    let loaded = SplitBases::from_bytes(&bases.to_bytes().expect("bytes")).expect("load");
    assert_eq!(loaded, bases);
    assert_eq!(loaded.model(), "test-model");
    assert_eq!(loaded.splits().collect::<Vec<_>>(), vec![1, 3]);
    assert_eq!(loaded.features(), Some(24));
    let x = activation(7, 9, 24);
    let mut checked = 0;
    for family in ALL {
        let (Some(a), Some(b)) = (bases.shared(3, family), loaded.shared(3, family)) else {
            assert_eq!(family.basis_need(), BasisNeed::Weight, "{family}");
            continue;
        };
        let a = family.build_with(4, a).expect("build");
        let b = family.build_with(4, b).expect("build");
        let payload = a.encode(&x).expect("encode");
        assert_eq!(b.encode(&x).expect("encode"), payload, "{family}");
        assert_eq!(
            b.decode(&payload).expect("decode"),
            a.decode(&payload).expect("decode"),
            "{family}"
        );
        checked += 1;
    }
    let weight = ALL
        .iter()
        .filter(|f| f.basis_need() == BasisNeed::Weight)
        .count();
    assert_eq!(checked, ALL.len() - weight, "every family but wsvd");
    assert!(checked >= 20);
}

#[test]
fn shared_names_only_what_is_held() {
    let bases = fitted(16);
    assert!(matches!(
        bases.shared(2, Family::Plain(Precision::Int8)),
        Some(Shared::None)
    ));
    assert!(matches!(
        bases.shared(2, Family::Svd(Precision::F32)),
        Some(Shared::None)
    ));
    assert!(
        bases
            .shared(2, Family::CentredPca(Precision::F32))
            .is_none()
    );
    assert!(bases.shared(1, Family::WeightSvd(Precision::F32)).is_none());
    assert!(matches!(
        bases.shared(1, Family::MaskedPca),
        Some(Shared::CentredBasis(..))
    ));
    assert!(matches!(
        bases.shared(1, Family::Pca(Precision::F32)),
        Some(Shared::Basis(_))
    ));
    assert!(matches!(
        bases.shared(3, Family::CentredSvd(Precision::F32)),
        Some(Shared::PositionMean(_))
    ));
    let int8 = Family::Plain(Precision::Int8);
    assert!(matches!(
        SplitBases::lookup(None, 2, int8),
        Some(Shared::None)
    ));
    assert!(SplitBases::lookup(None, 1, Family::MaskedPca).is_none());
    assert!(matches!(
        SplitBases::lookup(Some(&bases), 1, Family::MaskedPca),
        Some(Shared::CentredBasis(..))
    ));
}

fn invalid(result: collab_core::Result<SplitBases>, needle: &str) {
    match result {
        Err(collab_core::Error::InvalidInput(m)) => assert!(m.contains(needle), "{m}"),
        other => panic!("expected InvalidInput naming `{needle}`, got {other:?}"),
    }
}

#[test]
fn a_value_changed_after_fitting_is_caught_by_its_fingerprint() {
    let mut bases = fitted(16);
    let mut basis = bases.get(3).expect("held").clone();
    let mut centred = Basis::clone(&basis.centred_pca);
    centred.components[5] += 1e-3;
    basis.centred_pca = Arc::new(centred);
    bases.insert(3, basis.clone()).expect("insert");
    invalid(
        SplitBases::from_bytes(&bases.to_bytes().expect("bytes")),
        "fingerprint",
    );

    let mut centre = PositionMean::clone(&basis.centre);
    centre.values[0] = f32::NAN;
    centre.fingerprint = 1;
    let mut bases = fitted(16);
    basis.centred_pca = bases.get(3).expect("held").centred_pca.clone();
    basis.centre = Arc::new(centre);
    bases.insert(3, basis).expect("insert");
    invalid(
        SplitBases::from_bytes(&bases.to_bytes().expect("bytes")),
        "non-finite",
    );
}

#[test]
fn bytes_that_are_not_a_bases_file_are_refused() {
    let bytes = fitted(16).to_bytes().expect("bytes");
    invalid(
        SplitBases::from_bytes(&bytes[..bytes.len() / 2]),
        "not a split-bases file",
    );
    invalid(SplitBases::from_bytes(&[]), "not a split-bases file");
    let other =
        postcard::to_stdvec(&("collab-split-bases/0", "m", Vec::<u8>::new())).expect("encode");
    invalid(
        SplitBases::from_bytes(&other),
        "format `collab-split-bases/0`",
    );
    let empty = postcard::to_stdvec(&(BASES_FORMAT, "m", Vec::<u8>::new())).expect("encode");
    let empty = SplitBases::from_bytes(&empty).expect("an empty file is a file");
    assert_eq!(empty.features(), None);
}

#[test]
fn split_zero_and_mixed_feature_counts_are_refused() {
    let mut bases = fitted(16);
    let basis = SplitBasis::fit(&items(5, 9, 16), "block 0").expect("fit");
    assert!(matches!(
        bases.insert(0, basis),
        Err(collab_core::Error::InvalidInput(m)) if m.contains("split 0")
    ));
    let wider = SplitBasis::fit(&items(5, 9, 24), "block 2").expect("fit");
    assert!(matches!(
        bases.insert(2, wider),
        Err(collab_core::Error::InvalidInput(m)) if m.contains("24 features beside bases of 16")
    ));
}

#[test]
fn save_and_load_go_through_a_real_file() {
    let bases = fitted(16);
    let path = std::env::temp_dir().join(format!("collab-bases-{}.bin", std::process::id()));
    bases.save(&path).expect("save");
    let loaded = SplitBases::load(&path);
    std::fs::remove_file(&path).expect("remove");
    assert_eq!(loaded.expect("load"), bases);
    assert!(matches!(
        SplitBases::load(&path),
        Err(collab_core::Error::Io { .. })
    ));
}
