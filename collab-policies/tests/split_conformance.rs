//! The split selector, bare and wrapped the way a device runs it, held to the split-strategy
//! conformance suite; and two codecs held to the codec suite through its macro.

use std::sync::Arc;

use collab_core::cost::{CostModel, Workload};
use collab_policies::codec::conformance::CodecSpec;
use collab_policies::split::conformance::SplitSpec;
use collab_policies::split::{
    AccuracyEntry, AccuracyTable, Fallback, FastestWithinLoss, FixedSplit, Hysteresis,
    SelectorConfig, SplitSelector,
};
use collab_policies::svd::{PlainCodec, Precision, SvdCodec};
use collab_policies::{codec_conformance, split_strategy_conformance};

const L: usize = 12;

/// Block time grows with the batch's tokens; embedding and head are cheap.
#[derive(Debug)]
struct Linear(f64);

impl CostModel for Linear {
    fn name(&self) -> String {
        format!("linear {}", self.0)
    }

    fn seconds(&self, work: &Workload) -> collab_core::Result<f64> {
        Ok(match work {
            Workload::Block { .. } => self.0,
            _ => self.0 / 4.0,
        })
    }
}

fn entry(split: usize, codec: &str, rank: usize, bytes: f64, loss: f64) -> AccuracyEntry {
    AccuracyEntry {
        split,
        codec: codec.into(),
        rank,
        bytes,
        rho: 1.0 - bytes / (4.0 * 197.0 * 192.0),
        loss,
        agreement: 1.0 - loss,
        encode_s: 1e-3,
        decode_s: 1e-3,
    }
}

fn selector() -> Arc<SplitSelector> {
    let entries = (1..L)
        .flat_map(|k| {
            [
                entry(k, "int8", 192, 38_600.0, 0.001),
                entry(k, "svd-int8", 24, 9_000.0, 0.004 * k as f64),
            ]
        })
        .collect();
    let table = AccuracyTable {
        model: "deit-like".into(),
        metric: "top1".into(),
        baseline: 0.8,
        tokens: 197,
        features: 192,
        layers: L,
        entries,
    };
    let config = SelectorConfig {
        layers: L,
        tokens: 197,
        features: 192,
        raw_input_bytes: 3 * 224 * 224,
        response_bytes: 64,
        device_codec_scale: 4.0,
        allow_device_only: true,
    };
    Arc::new(
        SplitSelector::new(
            Arc::new(Linear(0.02)),
            Arc::new(Linear(0.002)),
            table,
            config,
        )
        .expect("selector"),
    )
}

split_strategy_conformance!(bare_selector, selector, SplitSpec::new(L));
split_strategy_conformance!(
    device_default,
    || Hysteresis::new(Fallback::new(
        selector(),
        FastestWithinLoss::new(selector())
    )),
    SplitSpec::new(L)
);

split_strategy_conformance!(
    fixed_server_only,
    || FixedSplit::new(0, "int8".parse().expect("id"), L).expect("fixed"),
    SplitSpec::new(L)
);
split_strategy_conformance!(
    fixed_int8,
    || FixedSplit::new(6, "int8".parse().expect("id"), L).expect("fixed"),
    SplitSpec::new(L)
);

codec_conformance!(
    int8,
    || PlainCodec {
        precision: Precision::Int8
    },
    CodecSpec {
        max_relative_error: Some(0.02),
        ..CodecSpec::default()
    }
);
codec_conformance!(
    svd_full_rank,
    || SvdCodec {
        rank: 64,
        precision: Precision::F32
    },
    CodecSpec {
        max_relative_error: Some(1e-4),
        ..CodecSpec::default()
    }
);
