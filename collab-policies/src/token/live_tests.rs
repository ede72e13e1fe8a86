//! Tests of the live server's per-pass merge policies.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;

use collab_core::Error;
use collab_core::adaptive::{
    Batch, LoadInfo, PassContext, PassTokenPolicy, ProfileTable, ProfileTableData, Query,
    TokenPlan, TokenPolicyConfig, TokenPolicyContext,
};

use super::conformance::check_pass_policy;
use super::live::{FixedTokens, OtasAllocator, OtasPolicy, OtasTokens};
use super::saved::SavedTokenProfile;
use super::schedule::MergeSchedule;

pub(crate) const DEIT: TokenPolicyContext = TokenPolicyContext {
    layers: 12,
    tokens: 197,
    protected: 1,
    batch_budget: 8,
};

/// A synthetic profile (a test aid, not a measurement): merging trades accuracy for time.
pub(crate) fn profile() -> SavedTokenProfile {
    let table = ProfileTable::new(ProfileTableData {
        gammas: vec![-16, -8, 0, 4],
        batch_sizes: vec![1, 8],
        accuracy: vec![vec![Some(0.70), Some(0.78), Some(0.82), Some(0.83)]],
        per_sample_time: vec![vec![
            Some(vec![0.005, 0.003]),
            Some(vec![0.007, 0.004]),
            Some(vec![0.010, 0.006]),
            Some(vec![0.012, 0.007]),
        ]],
    })
    .unwrap();
    let mut schedules = BTreeMap::new();
    schedules.insert(-8, MergeSchedule::linear(8, 12));
    SavedTokenProfile {
        table,
        schedules,
        schedule_scores: BTreeMap::new(),
        test_examples: vec![100],
    }
}

fn otas(allocator: OtasAllocator, utility: f64) -> OtasPolicy {
    let config = OtasTokens {
        profile: "unused.json".into(),
        allocator,
        task: 0,
        utility,
        headroom: 0.9,
    };
    OtasPolicy::new(&profile(), &config, &DEIT).unwrap()
}

/// `n` requests that arrived just before `now`, due `budget` seconds after `now`.
fn waiting(now: f64, n: usize, budget: f64) -> Batch {
    Batch::new(
        (0..n)
            .map(|i| Query {
                id: i as u64,
                task: 0,
                arrival: now - 0.01,
                deadline: now + budget,
                utility: 1.0,
            })
            .collect(),
    )
}

fn plan(policy: &mut dyn PassTokenPolicy, now: f64, w: &Batch, rate: f64) -> TokenPlan {
    policy.plan(&PassContext {
        now,
        waiting: w,
        load: LoadInfo { rate, uptime: 60.0 },
    })
}

#[test]
fn fixed_plans_merge_every_block_and_refuse_prompts() {
    let mut p = FixedTokens {
        gamma: -8,
        schedule: None,
    }
    .build(&DEIT)
    .unwrap();
    let got = plan(p.as_mut(), 1.0, &waiting(1.0, 3, 0.5), 10.0);
    assert_eq!((got.gamma, got.merges), (-8, vec![8; 12]));
    check_pass_policy(p.as_mut(), &DEIT, 200, 1).unwrap();
    let none = FixedTokens {
        gamma: 0,
        schedule: None,
    }
    .build(&DEIT)
    .unwrap();
    assert_eq!(none.name(), "fixed(0)");
    let e = FixedTokens {
        gamma: 4,
        schedule: None,
    }
    .build(&DEIT)
    .unwrap_err();
    assert!(
        matches!(&e, Error::Config(m) if m.contains("merges only")),
        "{e}"
    );
}

#[test]
fn otas_merges_under_load_and_not_when_idle() {
    for allocator in [OtasAllocator::Dp, OtasAllocator::LoadRule] {
        let mut p = otas(allocator, 0.5);
        // Light: 2 requests at 1 request/s with a loose deadline: the plain model.
        let light = plan(&mut p, 10.0, &waiting(10.0, 2, 1.0), 1.0);
        assert_eq!(light, TokenPlan::none(), "{allocator:?}");
        // Heavy: 48 requests (6 batches of 8) due in 30 ms at 2000 requests/s: only the
        // fastest gamma finishes even the first batch in time (8 x 3 ms = 24 ms; gamma -8
        // takes 32 ms, the plain model 48 ms). (Alg. 2 keeps one state per choice, so with
        // looser deadlines it may run the first batch plain and skip later ones.)
        let heavy = plan(&mut p, 10.0, &waiting(10.0, 48, 0.03), 2000.0);
        assert_eq!(heavy.gamma, -16, "{allocator:?}");
        assert!(heavy.merges.iter().sum::<usize>() > 0);
        check_pass_policy(&mut p, &DEIT, 300, 2).unwrap();
    }
}

#[test]
fn otas_uses_the_profiles_schedule_and_the_fastest_gamma_when_nothing_fits() {
    let mut p = otas(OtasAllocator::Dp, 0.5);
    // Every deadline already past: nothing can make it; run the fastest.
    let late = plan(&mut p, 10.0, &waiting(10.0, 48, -0.5), 2000.0);
    assert_eq!(late.gamma, -16);
    // The profile chose a linear schedule for -8; OTAS's plan follows it, and -16 (no
    // schedule in the profile) is the constant one.
    let linear = MergeSchedule::linear(8, 12).fitted(197, 1);
    assert_eq!(p.plan_for(-8).unwrap().merges, linear.per_layer());
    assert_eq!(
        p.plan_for(-16).unwrap().merges,
        vec![16; 11].into_iter().chain([10]).collect::<Vec<_>>()
    );
    assert_eq!(p.plan_for(0), Some(&TokenPlan::none()));
    assert_eq!(p.plan_for(4), None, "prompts are not served live");
    let config = FixedTokens {
        gamma: -8,
        schedule: Some(super::schedule::ScheduleKind::Linear),
    };
    let fixed = plan(
        config.build(&DEIT).unwrap().as_mut(),
        0.0,
        &waiting(0.0, 1, 1.0),
        0.0,
    );
    assert_eq!(fixed.merges, linear.per_layer());
    // Above the load rule's kappa a batch always runs at the largest gamma.
    let mut precious = otas(OtasAllocator::LoadRule, 0.9);
    let heavy = plan(&mut precious, 10.0, &waiting(10.0, 8, 1.0), 2000.0);
    assert_eq!(heavy.gamma, 0);
}

#[test]
fn otas_is_named_in_toml_and_a_missing_profile_is_a_config_error() {
    let dir = std::env::temp_dir().join(format!("collab-live-tokens-{}", std::process::id()));
    let path = dir.join("token-profile.json");
    profile().save(&path).unwrap();
    let text = format!(
        "kind = \"otas\"\nprofile = {:?}\nallocator = \"load-rule\"\n",
        path.display().to_string()
    );
    let config: Box<dyn TokenPolicyConfig> = toml::from_str(&text).unwrap();
    assert_eq!(config.build(&DEIT).unwrap().name(), "otas(load-rule)");
    let missing: Box<dyn TokenPolicyConfig> =
        toml::from_str("kind = \"otas\"\nprofile = \"no/such/file.json\"\n").unwrap();
    let e = missing.build(&DEIT).unwrap_err();
    assert!(
        matches!(&e, Error::Config(m) if m.contains("exp token-profile")),
        "{e}"
    );
    let typo = toml::from_str::<Box<dyn TokenPolicyConfig>>("kind = \"fixed\"\ngama = -8\n");
    assert!(typo.is_err());
    std::fs::remove_dir_all(&dir).unwrap();
}
