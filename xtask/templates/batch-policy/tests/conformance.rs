//! collab's batch-policy conformance suite: every request answered exactly once, budgets
//! respected, no starvation, under light, heavy and failing loads.

use collab_policies::batch_policy_conformance;
use {{crate}}::EarliestDeadlineFirst;

batch_policy_conformance!(edf, |budget| EarliestDeadlineFirst::new(budget));
