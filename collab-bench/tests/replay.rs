//! The harness on the shipped H100 estimate: a fleet splitting ViT-B/16 at different blocks,
//! the shared model against its baselines, replayed without compute.

#![allow(clippy::unwrap_used)]

use std::sync::Arc;

use collab_bench::compare::{FleetDevice, Scenario, compare};
use collab_bench::estimate::shipped;
use collab_core::batch::BatchPolicyConfig;
use collab_core::cost::MeasuredProfile;
use collab_policies::batch::{PerSplitConfig, ServerOnlyConfig, SharedModelConfig};

fn profile() -> Arc<MeasuredProfile> {
    Arc::new(shipped("h100-vit_base_patch16_224").unwrap())
}

/// Five Jetson-like devices (50x to 800x slower than the server per block) that split at
/// blocks 4 to 6 and send f32 activations (197 × 768 × 4 bytes).
fn fleet(split: bool) -> Vec<FleetDevice> {
    [
        ("agx-maxn", 40e6, 0.005, 0.30, 50.0, 4),
        ("agx-30w", 20e6, 0.010, 0.25, 100.0, 4),
        ("nx-15w", 10e6, 0.010, 0.20, 200.0, 5),
        ("nano-10w", 5e6, 0.020, 0.15, 400.0, 5),
        ("nano-5w", 2.5e6, 0.020, 0.10, 800.0, 6),
    ]
    .into_iter()
    .map(|(label, bandwidth, rtt, share, slowdown, k)| FleetDevice {
        label: label.into(),
        bandwidth,
        rtt,
        share,
        slowdown,
        split: if split { k } else { 0 },
        request_bytes: if split { 197 * 768 * 4 } else { 3 * 224 * 224 },
    })
    .collect()
}

fn config(kind: &str) -> Arc<dyn BatchPolicyConfig> {
    match kind {
        "shared" => Arc::new(SharedModelConfig::new(8)),
        "per-split" => Arc::new(PerSplitConfig { budget: 8 }),
        _ => Arc::new(ServerOnlyConfig { budget: 8 }),
    }
}

#[test]
fn the_estimate_says_what_it_is() {
    let p = profile();
    assert!(p.provenance().starts_with("ESTIMATE"), "{}", p.provenance());
    assert_eq!(p.layers, 12);
}

#[test]
fn sharing_blocks_across_splits_sustains_more_than_batching_each_split_alone() {
    let p = profile();
    let split = Scenario::fleet(p.clone(), 197, &fleet(true), 0.9, 4000).unwrap();
    let raw = Scenario::fleet(p, 197, &fleet(false), 0.9, 4000).unwrap();
    let shared = config("shared");
    let per_split = config("per-split");
    let server_only = config("server-only");
    let rates = compare(
        &split,
        &[
            ("shared", shared.as_ref()),
            ("per-split", per_split.as_ref()),
        ],
    )
    .unwrap();
    let only = raw.sustainable_rate(server_only.as_ref()).unwrap();
    let (s, g) = (rates[0].1, rates[1].1);
    println!(
        "shared {:.0} per-split {:.0} server-only {:.0} req/s",
        s.rate, g.rate, only.rate
    );
    assert!(s.rate > 0.0 && g.rate > 0.0 && only.rate > 0.0);
    assert!(!s.capped && !g.capped, "searches ended inside their range");
    assert!(
        s.rate > 1.1 * g.rate,
        "shared {} against per-split {}",
        s.rate,
        g.rate
    );
    assert!(s.trial.mean_batch() > g.trial.mean_batch());
    // Replay is deterministic: the same scenario gives the same answer.
    assert_eq!(split.sustainable_rate(shared.as_ref()).unwrap(), s);
}

#[test]
fn a_policy_that_refuses_a_split_is_an_error_not_a_zero() {
    let split = Scenario::fleet(profile(), 197, &fleet(true), 0.9, 4000).unwrap();
    let err = split
        .sustainable_rate(config("server-only").as_ref())
        .unwrap_err();
    assert!(err.to_string().contains("refused"), "{err}");
}

#[test]
fn bad_fleets_are_config_errors() {
    let mut f = fleet(true);
    f[0].split = 13;
    assert!(Scenario::fleet(profile(), 197, &f, 0.9, 4000).is_err());
    let mut f = fleet(true);
    f[1].bandwidth = 0.0;
    assert!(Scenario::fleet(profile(), 197, &f, 0.9, 4000).is_err());
    assert!(Scenario::fleet(profile(), 197, &[], 0.9, 4000).is_err());
    assert!(Scenario::fleet(profile(), 197, &fleet(true), 0.0, 4000).is_err());
}
