//! The three batch policies of SPEC §2 held to the batch-policy conformance suite, and a
//! property test over seeds, budgets and arrival rates.

use collab_policies::batch::conformance::{Load, Scenario, check_policy};
use collab_policies::batch::{PerSplit, ServerOnly, SharedModel};
use collab_policies::batch_policy_conformance;
use proptest::prelude::*;

batch_policy_conformance!(shared_model, |b| SharedModel::new(b).expect("budget >= 1"));
batch_policy_conformance!(per_split, |b| PerSplit::new(b).expect("budget >= 1"));
batch_policy_conformance!(server_only, |b| ServerOnly::new(b).expect("budget >= 1"));

fn scenario(seed: u64, budget: usize, load: f64, fail: bool) -> Scenario {
    let kind = if fail { Load::Failing } else { Load::Heavy };
    Scenario {
        budget,
        load,
        ..Scenario::random(seed, kind)
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]

    #[test]
    fn shared_model_conforms(
        seed in any::<u64>(),
        budget in 1usize..=16,
        load in 0.05f64..6.0,
        major in 0.05f64..=1.0,
        fail in any::<bool>(),
    ) {
        let make = |b| SharedModel::new(b).and_then(|p| p.with_major_share(major)).expect("valid");
        let s = scenario(seed, budget, load, fail);
        check_policy(make, &s, true).map_err(|e| TestCaseError::fail(format!("{s:?}\n{e}")))?;
    }

    #[test]
    fn baselines_conform(
        seed in any::<u64>(),
        budget in 1usize..=16,
        load in 0.05f64..6.0,
        fail in any::<bool>(),
    ) {
        let s = scenario(seed, budget, load, fail);
        let per_split = |b| PerSplit::new(b).expect("budget");
        check_policy(per_split, &s, true).map_err(|e| TestCaseError::fail(format!("{s:?}\n{e}")))?;
        let server_only = |b| ServerOnly::new(b).expect("budget");
        check_policy(server_only, &s, true).map_err(|e| TestCaseError::fail(format!("{s:?}\n{e}")))?;
    }
}
