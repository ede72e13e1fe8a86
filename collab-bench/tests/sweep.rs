//! The accuracy sweep and a codec's row on the real DeiT-Tiny, small enough for the test
//! command: 40 ImageNet sample images (every tenth calibrates), one split.

#![allow(clippy::unwrap_used)]

use collab_backends::candle::CandleBackend;
use collab_bench::codec_eval::{SplitData, evaluate};
use collab_bench::sweep::{Cell, SweepData, SweepPlan, run};
use collab_core::fixtures;
use collab_policies::codec::{CodecContext, CodecRegistry};
use collab_policies::svd::Family;

#[test]
fn a_small_sweep_writes_a_table_and_bases_that_agree_with_its_cells() {
    let mut data = SweepData::deit(CandleBackend::cpu(), 40, 16).unwrap();
    let families: Vec<Family> = ["int8", "svd", "tpca"]
        .iter()
        .map(|f| f.parse().unwrap())
        .collect();
    let plan = SweepPlan {
        blocks: vec![3],
        rhos: vec![0.5, 0.9],
        families: families.clone(),
    };
    let mut seen = 0;
    let sweep = run(&mut data, &plan, &mut |_: &Cell| seen += 1).unwrap();
    assert_eq!(seen, 6, "one call per cell");
    assert_eq!(sweep.cells.len(), 6);
    assert!(sweep.bases.get(3).is_some(), "the swept block's bases");
    let with_result: Vec<&Cell> = sweep.cells.iter().filter(|c| c.result.is_some()).collect();
    assert_eq!(sweep.table.entries.len(), with_result.len());
    assert_eq!((sweep.table.layers, sweep.table.features), (12, 192));
    for c in &with_result {
        let m = c.result.unwrap();
        assert!(m.rho + 1e-9 >= c.rho_target, "{c:?} reaches its target");
        assert!((0.0..=1.0).contains(&m.agreement), "{c:?}");
        assert!(m.bytes > 0.0 && m.rel_error >= 0.0, "{c:?}");
    }
    // int8 keeps three quarters of the bytes off the wire and nearly every answer.
    let int8 = sweep
        .cells
        .iter()
        .find(|c| c.family == families[0] && c.rho_target == 0.5)
        .and_then(|c| c.result)
        .unwrap();
    assert!((int8.rho - 0.75).abs() < 0.01, "{int8:?}");
    assert!(int8.agreement >= 0.9, "{int8:?}");
    // An int8 cell cannot reach 90% fewer bytes.
    assert!(
        sweep
            .cells
            .iter()
            .any(|c| c.family == families[0] && c.rho_target == 0.9 && c.result.is_none())
    );
}

#[test]
fn a_plan_outside_the_model_is_a_config_error() {
    let mut data = SweepData::deit(CandleBackend::cpu(), 20, 10).unwrap();
    for blocks in [vec![0], vec![13], vec![]] {
        let plan = SweepPlan {
            blocks,
            rhos: vec![0.5],
            families: vec!["int8".parse().unwrap()],
        };
        assert!(run(&mut data, &plan, &mut |_: &Cell| {}).is_err());
    }
}

#[test]
fn a_codec_row_counts_bytes_and_agreement() {
    let model = fixtures::deit_tiny(CandleBackend::cpu()).unwrap();
    let images = fixtures::imagenet_sample().unwrap();
    let eval: Vec<_> = images.iter().step_by(50).take(16).cloned().collect();
    let data = SplitData::collect(&model, &eval, 6).unwrap();
    assert_eq!(data.activations.len(), 16);
    let ctx = CodecContext {
        split: 6,
        bases: None,
    };
    let int8 = CodecRegistry::builtin()
        .build(&"int8".parse().unwrap(), &ctx)
        .unwrap();
    let row = evaluate(&model, &data, int8.as_ref()).unwrap();
    assert_eq!(row.bytes, int8.encoded_len(197, 192) as f64);
    assert!(row.agreement >= 0.9, "{row}");
    assert!((row.top1 - row.unsplit_top1).abs() <= 0.2, "{row}");
    // A hand-built data set whose labels do not match its activations is refused.
    let mut bad = data.clone();
    bad.labels.pop();
    assert!(evaluate(&model, &bad, int8.as_ref()).is_err());
}
