//! The policy against collab's baselines on the same fleet: five Jetson-like devices that
//! split ViT-B/16 at blocks 4 to 6, replayed on the H100 per-block profile shipped with
//! collab-bench (an estimate from a roofline, not a measurement; replace it with one that
//! `cargo xtask exp block-profile` measured on your server). Prints one line of ratios.

use std::sync::Arc;

use collab_bench::compare::{FleetDevice, Scenario, compare};
use collab_bench::estimate::shipped;
use collab_policies::batch::{PerSplitConfig, SharedModelConfig};
use {{crate}}::EdfConfig;

fn fleet() -> Vec<FleetDevice> {
    [
        ("agx-maxn", 40e6, 0.005, 0.30, 50.0, 4),
        ("agx-30w", 20e6, 0.010, 0.25, 100.0, 4),
        ("nx-15w", 10e6, 0.010, 0.20, 200.0, 5),
        ("nano-10w", 5e6, 0.020, 0.15, 400.0, 5),
        ("nano-5w", 2.5e6, 0.020, 0.10, 800.0, 6),
    ]
    .into_iter()
    .map(
        |(label, bandwidth, rtt, share, slowdown, split)| FleetDevice {
            label: label.into(),
            bandwidth,
            rtt,
            share,
            slowdown,
            split,
            request_bytes: 197 * 768 * 4,
        },
    )
    .collect()
}

#[test]
fn against_the_shared_model_and_per_split_baselines() {
    let profile = Arc::new(shipped("h100-vit_base_patch16_224").expect("shipped profile"));
    println!("server profile: {}", profile.provenance());
    let scenario = Scenario::fleet(profile, 197, &fleet(), 0.9, 4000).expect("scenario");
    let rates = compare(
        &scenario,
        &[
            ("{{name}}", &EdfConfig { budget: 8 }),
            ("shared", &SharedModelConfig::new(8)),
            ("per-split", &PerSplitConfig { budget: 8 }),
        ],
    )
    .expect("comparison");
    for (name, r) in &rates {
        println!(
            "{name:<12} sustains {:>8.1} req/s (mean batch {:.2}, {:.3} on time)",
            r.rate,
            r.trial.mean_batch(),
            r.trial.met()
        );
        assert!(r.rate > 0.0, "{name} sustained no rate at all");
    }
    println!(
        "{{name}}/shared={:.2} {{name}}/per-split={:.2}",
        rates[0].1.rate / rates[1].1.rate,
        rates[0].1.rate / rates[2].1.rate
    );
}
