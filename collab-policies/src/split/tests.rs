//! The selector never returns a configuration that breaks a constraint it knows of, returns
//! the deepest feasible one, and re-selects when bandwidth or server load move.

use std::sync::Arc;

use collab_core::Result;
use collab_core::cost::{CostModel, Workload};
use collab_core::split::{Conditions, SplitStrategy};
use proptest::prelude::*;

use super::*;

/// Fixed seconds per stage, whatever the batch.
#[derive(Debug)]
struct PerStage {
    embed: f64,
    block: f64,
    head: f64,
}

impl CostModel for PerStage {
    fn name(&self) -> String {
        "per-stage".into()
    }

    fn seconds(&self, work: &Workload) -> Result<f64> {
        Ok(match work {
            Workload::Embed { .. } => self.embed,
            Workload::Block { .. } => self.block,
            Workload::Head { .. } => self.head,
            Workload::Operator { .. } | Workload::Shard { .. } => {
                unreachable!("the selector prices no operators or shards")
            }
        })
    }
}

const L: usize = 12;
const N: usize = 197;
const D: usize = 192;

fn table(losses: &[f64]) -> AccuracyTable {
    let mut entries = vec![];
    for k in 1..L {
        for (i, rho) in [0.5, 0.7, 0.9].into_iter().enumerate() {
            entries.push(AccuracyEntry {
                split: k,
                codec: format!("c{i}"),
                rank: 10 * (i + 1),
                bytes: (1.0 - rho) * (4 * N * D) as f64,
                rho,
                loss: losses[(k * 3 + i) % losses.len()],
                agreement: 1.0,
                encode_s: 0.001,
                decode_s: 0.0005,
            });
        }
    }
    AccuracyTable {
        model: "test".into(),
        metric: "top1".into(),
        baseline: 0.8,
        tokens: N,
        features: D,
        layers: L,
        entries,
    }
}

fn selector(device_block: f64, losses: &[f64]) -> SplitSelector {
    let device = Arc::new(PerStage {
        embed: 2.0 * device_block,
        block: device_block,
        head: 0.1 * device_block,
    });
    let server = Arc::new(PerStage {
        embed: 0.002,
        block: 0.004,
        head: 0.0005,
    });
    let config = SelectorConfig {
        layers: L,
        tokens: N,
        features: D,
        raw_input_bytes: 3 * 224 * 224,
        response_bytes: 4000,
        device_codec_scale: 2.0,
        allow_device_only: true,
    };
    SplitSelector::new(device, server, table(losses), config).expect("selector")
}

/// The latency of a table entry, written out independently of the selector.
fn latency_of(k: usize, bytes: f64, enc: f64, dec: f64, device_block: f64, c: &Conditions) -> f64 {
    let device = 2.0 * device_block + k as f64 * device_block + 2.0 * enc;
    let server = c.server_queue + dec + (L - k) as f64 * 0.004 + 0.0005;
    device + bytes / c.bandwidth + c.rtt + 4000.0 / c.bandwidth + server
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    #[test]
    fn returns_the_deepest_feasible_configuration(
        device_block in 0.001f64..0.05,
        bandwidth in 1e5f64..1e8,
        rtt in 0.0f64..0.05,
        queue in 0.0f64..0.2,
        deadline in 0.01f64..1.0,
        max_loss in 0.0f64..0.05,
        losses in proptest::collection::vec(0.0f64..0.08, 5..40),
    ) {
        let s = selector(device_block, &losses);
        let c = Conditions { bandwidth, rtt, server_queue: queue, deadline, max_loss };
        let t = table(&losses);
        // Brute force over the same candidate set, with the latency written out here.
        let mut feasible: Vec<(usize, f64)> = t
            .entries
            .iter()
            .map(|e| (e.split, latency_of(e.split, e.bytes, e.encode_s, e.decode_s, device_block, &c), e.loss))
            .chain((1..L).map(|k| (k, latency_of(k, (4 * N * D) as f64, 0.0, 0.0, device_block, &c), 0.0)))
            .chain(std::iter::once((0, 0.002 + L as f64 * 0.004 + 0.0005 + queue + (3 * 224 * 224) as f64 / bandwidth + rtt + 4000.0 / bandwidth, 0.0)))
            .chain(std::iter::once((L, 2.0 * device_block + L as f64 * device_block + 0.1 * device_block, 0.0)))
            .filter(|(_, lat, loss)| *lat <= deadline && *loss <= max_loss)
            .map(|(k, lat, _)| (k, lat))
            .collect();
        feasible.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.total_cmp(&b.1)));
        match s.choose(&c) {
            Ok(choice) => {
                prop_assert!(choice.latency <= deadline, "{choice:?}");
                prop_assert!(choice.loss <= max_loss, "{choice:?}");
                let (k, lat) = feasible[0];
                prop_assert_eq!(choice.split, k);
                prop_assert!((choice.latency - lat).abs() < 1e-9, "{} vs {}", choice.latency, lat);
            }
            Err(e) => {
                prop_assert!(feasible.is_empty(), "selector found nothing ({e}) but {feasible:?} fit");
                let typed = matches!(e, collab_core::Error::NoPrediction { .. });
                prop_assert!(typed, "untyped error");
            }
        }
    }
}

#[test]
fn reselects_when_bandwidth_or_load_moves() -> Result<()> {
    let s = Hysteresis::new(selector(0.01, &[0.0, 0.0, 0.01]));
    let mut c = Conditions {
        bandwidth: 2e6,
        rtt: 0.01,
        server_queue: 0.0,
        deadline: 0.2,
        max_loss: 0.02,
    };
    let (first, fresh) = s.observe(&c)?;
    assert!(fresh);
    let (again, fresh) = s.observe(&c)?;
    assert!(!fresh);
    assert_eq!(first, again);
    // A much slower link makes transfer dominate: the choice is recomputed, stays feasible,
    // and the bytes sent do not grow.
    c.bandwidth = 4e5;
    let (slow, fresh) = s.observe(&c)?;
    assert!(fresh);
    assert!(slow.latency <= c.deadline);
    assert!(slow.bytes <= first.bytes, "{slow:?} vs {first:?}");
    // A loaded server is observed too.
    c.server_queue = 0.05;
    assert!(s.observe(&c)?.1);
    Ok(())
}

#[test]
fn invalid_conditions_and_foreign_tables_are_refused() {
    let s = selector(0.01, &[0.0]);
    let c = Conditions {
        bandwidth: 0.0,
        rtt: 0.01,
        server_queue: 0.0,
        deadline: 1.0,
        max_loss: 0.01,
    };
    assert!(matches!(
        s.choose(&c),
        Err(collab_core::Error::InvalidInput(_))
    ));
    let mut t = table(&[0.0]);
    t.features = 768;
    let device = Arc::new(PerStage {
        embed: 0.0,
        block: 0.0,
        head: 0.0,
    });
    let cfg = SelectorConfig {
        layers: L,
        tokens: N,
        features: D,
        raw_input_bytes: 1,
        response_bytes: 1,
        device_codec_scale: 1.0,
        allow_device_only: true,
    };
    assert!(SplitSelector::new(device.clone(), device, t, cfg).is_err());
}
