//! The measured cost model on the real DeiT-Tiny: profile a small grid, save, load, predict.

use collab_backends::candle::CandleBackend;
use collab_core::Backend;
use collab_core::cost::{CostModel, MeasuredProfile, ProfileSpec, Workload, profile_model};
use collab_core::model::Input;
use collab_tests::deit_tiny;

#[test]
fn deit_tiny_profile_round_trips_and_predicts_the_grid_and_between() {
    let be = CandleBackend::cpu();
    let model = deit_tiny(be.clone()).expect("load");
    let spec = ProfileSpec {
        batches: vec![1, 2],
        tokens: vec![99, 197],
        repeats: 1,
        per_layer: false,
    };
    let make = |b: usize| -> collab_core::Result<Input<CandleBackend>> {
        Ok(Input::Images(be.zeros(&[b, 3, 224, 224])?))
    };
    let profile = profile_model(&model, "deit_tiny_patch16_224", &spec, &make).expect("profile");
    assert_eq!(profile.layers, 12);
    // embed + head per batch, one block per (batch, tokens).
    assert_eq!(profile.points.len(), 2 * 2 + 2 * 2);
    assert!(
        profile
            .points
            .iter()
            .all(|p| p.seconds > 0.0 && p.seconds.is_finite())
    );

    let path =
        std::env::temp_dir().join(format!("collab-deit-profile-{}.json", std::process::id()));
    profile.save(&path).expect("save");
    let loaded = MeasuredProfile::load(&path).expect("load");
    std::fs::remove_file(&path).ok();
    assert_eq!(loaded, profile);

    let block = |batch, tokens| Workload::Block {
        layer: 7,
        batch,
        tokens,
    };
    let at_grid = loaded.seconds(&block(2, 197)).expect("grid point");
    let measured = profile
        .points
        .iter()
        .find(|p| {
            p.work
                == Workload::Block {
                    layer: 0,
                    batch: 2,
                    tokens: 197,
                }
        })
        .expect("measured")
        .seconds;
    assert_eq!(
        at_grid, measured,
        "block 7 uses the block profile, exactly at grid points"
    );
    let between = loaded.seconds(&block(2, 150)).expect("between");
    let lo = loaded.seconds(&block(2, 99)).expect("lo");
    assert!(
        between >= lo.min(at_grid) && between <= lo.max(at_grid),
        "interpolation stays within its neighbours"
    );
    let total = loaded.blocks_seconds(0..12, 2, 197).expect("sum");
    assert!((total - 12.0 * at_grid).abs() < 1e-12);
}
