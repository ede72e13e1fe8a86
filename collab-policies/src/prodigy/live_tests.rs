//! The live reduction scheduler: its gamma follows the load, it passes the pass-policy
//! conformance suite, and a pipeline config names it.
#![allow(clippy::unwrap_used)]

use collab_core::adaptive::{
    Batch, LoadInfo, PassContext, PassTokenPolicy, Query, TokenPolicyConfig,
};

use super::live::{ProdigyPolicy, ProdigyTokens};
use crate::token::conformance::check_pass_policy;
// The OTAS live tests' synthetic profile (a test aid, not a measurement): at batch 8, gamma 0
// serves 166/s, -8 250/s and -16 333/s.
use crate::token::live_tests::{DEIT, profile};

fn config() -> ProdigyTokens {
    ProdigyTokens {
        profile: "unused.json".into(),
        task: 0,
        headroom: 0.9,
    }
}

fn waiting(n: usize) -> Batch {
    Batch::new(
        (0..n)
            .map(|i| Query {
                id: i as u64,
                task: 0,
                arrival: 0.99,
                deadline: 1.5,
                utility: 1.0,
            })
            .collect(),
    )
}

#[test]
fn the_pass_merges_more_as_the_load_outgrows_each_gamma() {
    let p = ProdigyPolicy::new(&profile(), &config(), &DEIT).unwrap();
    let w = waiting(8);
    let gamma = |rate: f64| {
        p.gamma(&PassContext {
            now: 1.0,
            waiting: &w,
            load: LoadInfo { rate, uptime: 60.0 },
        })
    };
    // 0.9 x (166.7, 250, 333.3) = 150, 225, 300 queries/s.
    assert_eq!(gamma(100.0), 0);
    assert_eq!(gamma(200.0), -8);
    assert_eq!(gamma(280.0), -16);
    assert_eq!(gamma(1e5), -16);
    // Nothing waiting: no merging.
    let empty = Batch::default();
    let none = p.gamma(&PassContext {
        now: 1.0,
        waiting: &empty,
        load: LoadInfo {
            rate: 1e5,
            uptime: 60.0,
        },
    });
    assert_eq!(none, 0);
}

#[test]
fn the_policy_conforms_and_a_pipeline_names_it() {
    let mut p = ProdigyPolicy::new(&profile(), &config(), &DEIT).unwrap();
    check_pass_policy(&mut p, &DEIT, 200, 7).unwrap();
    assert_eq!(p.name(), "prodigy");
    let dir = std::env::temp_dir().join(format!("collab-prodigy-live-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("token-profile.json");
    profile().save(&path).unwrap();
    let toml = format!(
        "kind = \"prodigy\"\nprofile = {:?}\nheadroom = 0.8\n",
        path.display().to_string()
    );
    let c: Box<dyn TokenPolicyConfig> = toml::from_str(&toml).unwrap();
    let mut built = c.build(&DEIT).unwrap();
    check_pass_policy(built.as_mut(), &DEIT, 50, 8).unwrap();
    // Unknown fields, a bad headroom and a missing file are refused.
    assert!(toml::from_str::<Box<dyn TokenPolicyConfig>>(&format!("{toml}nope = 1\n")).is_err());
    let bad: Box<dyn TokenPolicyConfig> = toml::from_str(&toml.replace("0.8", "1.5")).unwrap();
    assert!(bad.build(&DEIT).is_err());
    let missing: Box<dyn TokenPolicyConfig> =
        toml::from_str("kind = \"prodigy\"\nprofile = \"/no/such/profile.json\"\n").unwrap();
    assert!(missing.build(&DEIT).is_err());
    std::fs::remove_dir_all(&dir).unwrap();
}
