//! Every built-in codec family passes the suite through the registry, and the registry's own
//! rules: unknown families, duplicates, missing ranks and bases are typed errors naming them.

use std::sync::Arc;

use collab_core::split::{Activation, CodecId};

use super::*;
use crate::codec::{BuiltinCodecs, CodecContext, CodecRegistry};
use crate::svd::{SplitBases, SplitBasis};

const D: usize = 24;

fn bases() -> SplitBases {
    let mut rng = StdRng::seed_from_u64(5);
    let calibration: Vec<Activation> = (0..4).map(|_| draw(&mut rng, 17, D)).collect();
    let mut bases = SplitBases::new("conformance");
    bases
        .insert(2, SplitBasis::fit(&calibration, "block 2").expect("fit"))
        .expect("insert");
    bases
}

#[test]
fn every_builtin_family_passes_at_a_few_ranks() {
    let (bases, registry) = (bases(), CodecRegistry::builtin());
    let context = CodecContext {
        split: 2,
        bases: Some(&bases),
    };
    let spec = CodecSpec {
        shapes: vec![(17, D), (3, D), (40, D)],
        random_payloads: 16,
        ..CodecSpec::default()
    };
    let mut checked = 0;
    for family in registry.families() {
        for rank in [1, 4, D as u32] {
            let id = CodecId::new(family, Some(rank)).expect("id");
            let Ok(codec) = registry.build(&id, &context) else {
                assert!(family.starts_with("wsvd"), "{id} does not build");
                continue;
            };
            for check in [CodecCheck::RoundTrip, CodecCheck::Hostile] {
                check_codec(codec.as_ref(), &spec, check, 11 + u64::from(rank))
                    .unwrap_or_else(|e| panic!("{id} / {check:?}: {e}"));
            }
            checked += 1;
        }
    }
    assert_eq!(checked, 3 * (38 - 4), "every family but the four wsvd");
}

#[test]
fn lossless_codecs_meet_a_tight_error_bound() {
    let registry = CodecRegistry::builtin();
    let spec = CodecSpec {
        max_relative_error: Some(1e-6),
        ..CodecSpec::default()
    };
    let f32_codec = registry
        .build(&"f32".parse().expect("id"), &CodecContext::default())
        .expect("f32");
    check_codec(f32_codec.as_ref(), &spec, CodecCheck::RoundTrip, 3).expect("f32 is exact");
    let lossy = CodecSpec {
        max_relative_error: Some(1e-4),
        ..spec
    };
    let svd = registry
        .build(&"svd-r1".parse().expect("id"), &CodecContext::default())
        .expect("svd");
    let e = check_codec(svd.as_ref(), &lossy, CodecCheck::RoundTrip, 3).expect_err("rank 1");
    assert!(e.contains("relative error"), "{e}");
}

#[test]
fn the_registry_names_unknown_families_and_refuses_duplicates() {
    let mut registry = CodecRegistry::builtin();
    let e = registry
        .build(&"top-k-r4".parse().expect("id"), &CodecContext::default())
        .expect_err("unknown")
        .to_string();
    assert!(
        e.contains("unknown codec `top-k-r4`") && e.contains("tpca"),
        "{e}"
    );
    let e = registry
        .register(Arc::new(BuiltinCodecs))
        .expect_err("twice")
        .to_string();
    assert!(e.contains("registered twice"), "{e}");
    assert_eq!(registry.families().count(), 38);
    assert!(CodecRegistry::empty().families().next().is_none());
}

#[test]
fn builtin_ids_need_their_rank_and_their_bases() {
    let registry = CodecRegistry::builtin();
    let none = CodecContext::default();
    let build = |id: &str, context: &CodecContext<'_>| {
        registry
            .build(&id.parse().expect("id"), context)
            .map(|c| c.name())
            .map_err(|e| e.to_string())
    };
    assert_eq!(build("int8", &none).as_deref(), Ok("int8"));
    assert!(
        build("int8-r192", &none).is_ok(),
        "plain codecs ignore a rank"
    );
    let e = build("svd-int8", &none).expect_err("no rank");
    assert!(e.contains("needs a rank"), "{e}");
    let e = build("tpca-r8", &none).expect_err("no bases");
    assert!(e.contains("no bases are loaded"), "{e}");
    let bases = bases();
    let at = |split| CodecContext {
        split,
        bases: Some(&bases),
    };
    assert!(build("tpca-r8", &at(2)).is_ok());
    let e = build("tpca-r8", &at(3)).expect_err("other split");
    assert!(e.contains("splits [2]"), "{e}");
}
