//! collab's split-strategy conformance suite: valid choices under any conditions, codecs the
//! registry can build, typed errors instead of panics.

use collab_policies::split::conformance::SplitSpec;
use collab_policies::split_strategy_conformance;
use {{crate}}::BandwidthStep;

split_strategy_conformance!(
    bandwidth_step,
    || BandwidthStep {
        threshold: 1e6,
        low: (9, "int8".parse().expect("id")),
        high: (3, "f16".parse().expect("id")),
    },
    SplitSpec::new(12)
);
