//! PRODIGY's reduction scheduler on a live server (SPEC §5): `kind = "prodigy"` in a
//! pipeline's `[server.tokens]` names [`ProdigyTokens`], whose policy merges each pass at the
//! smallest reduction whose throughput, at the batches waiting, exceeds the measured arrival
//! rate ([`ReductionScheduler`]), from a token profile measured on the serving machine. Every
//! pass merges a constant `r = -gamma` tokens per block, the way PRODIGY's models are warmed
//! up (`exp token-profile` also picks a constant schedule at every gamma on DeiT-Tiny; a profile
//! whose schedules differ times another merging than the one run).
//!
//! A live server runs the one model it was started with at every merging number; switching
//! weights per number, as the trace-driven `exp otas` scheme does, is not done live. The
//! server builds its model from a preset with the checkpoint's classifier (DeiT-Tiny:
//! ImageNet-1k), so the task models `exp prodigy` warms up (digits, animal: their own heads)
//! are not served live today; a warmed checkpoint of the preset's classes would be.

use std::collections::BTreeMap;
use std::path::PathBuf;

use collab_core::adaptive::{
    Gamma, PassContext, PassTokenPolicy, TokenPlan, TokenPolicyConfig, TokenPolicyContext,
    TokenProfile,
};
use collab_core::{Error, Result};
use serde::{Deserialize, Serialize};

use super::serving::{ReductionScheduler, WarmedProfile};
use crate::token::live::{default_headroom, load_profile, plan_for_gamma, waiting_batches};
use crate::token::saved::SavedTokenProfile;

/// `kind = "prodigy"`: each pass merges at the reduction scheduler's gamma.
///
/// - `profile`: the file `cargo xtask exp token-profile` writes (`results/otas/
///   token-profile.json`), measured on the serving machine; its gammas <= 0 and their times
///   are used, each run with the constant schedule;
/// - `task`: the profile's task whose times stand for the served model (default 0);
/// - `headroom`: each gamma is loaded up to this share of its throughput (default 0.9).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProdigyTokens {
    /// The token-profile file.
    pub profile: PathBuf,
    /// The profile's task standing for the served model.
    #[serde(default)]
    pub task: usize,
    /// Share of each gamma's throughput the scheduler loads it to.
    #[serde(default = "default_headroom")]
    pub headroom: f64,
}

#[typetag::serde(name = "prodigy")]
impl TokenPolicyConfig for ProdigyTokens {
    fn build(&self, context: &TokenPolicyContext) -> Result<Box<dyn PassTokenPolicy>> {
        let saved = load_profile("prodigy", &self.profile)?;
        Ok(Box::new(ProdigyPolicy::new(&saved, self, context)?))
    }
}

/// The live reduction scheduler: the waiting requests, in deadline order, cut into batches of
/// the server's budget; the pass merges at [`ReductionScheduler::gamma_for`] those batches and
/// the measured rate (no merging when nothing waits).
#[derive(Debug)]
pub struct ProdigyPolicy {
    profile: WarmedProfile,
    plans: BTreeMap<Gamma, TokenPlan>,
    scheduler: ReductionScheduler,
    task: usize,
    budget: usize,
}

impl ProdigyPolicy {
    /// The policy over `saved` as `config` says, for the model `context` describes.
    ///
    /// # Errors
    /// [`Error::Config`] when the headroom is not in (0, 1], the profile has no gamma <= 0 the
    /// task can run at, or a schedule does not fit the model.
    pub fn new(
        saved: &SavedTokenProfile,
        config: &ProdigyTokens,
        context: &TokenPolicyContext,
    ) -> Result<Self> {
        let bad = |m: String| Error::Config(format!("token policy `prodigy`: {m}"));
        let scheduler = ReductionScheduler::new(config.headroom).map_err(|e| bad(e.to_string()))?;
        let profile =
            WarmedProfile::new(saved.table.clone(), vec![]).map_err(|e| bad(e.to_string()))?;
        let gammas: Vec<Gamma> = profile
            .gammas()
            .iter()
            .copied()
            .filter(|&g| profile.accuracy(config.task, g).is_some())
            .collect();
        if gammas.is_empty() {
            return Err(bad(format!(
                "the profile has no gamma <= 0 for task {}",
                config.task
            )));
        }
        let plans = gammas
            .iter()
            .map(|&g| Ok((g, plan_for_gamma(g, None, context)?)))
            .collect::<Result<BTreeMap<_, _>>>()
            .map_err(|e| bad(e.to_string()))?;
        Ok(Self {
            profile,
            plans,
            scheduler,
            task: config.task,
            budget: context.batch_budget.max(1),
        })
    }

    /// The gamma of the pass about to begin.
    pub fn gamma(&self, pass: &PassContext<'_>) -> Gamma {
        let batches = waiting_batches(pass, self.task, None, self.budget);
        self.scheduler
            .gamma_for(&self.profile, &batches, pass.load.rate)
            .filter(|g| self.plans.contains_key(g))
            .unwrap_or(0)
    }
}

impl PassTokenPolicy for ProdigyPolicy {
    fn name(&self) -> String {
        "prodigy".into()
    }

    fn plan(&mut self, pass: &PassContext<'_>) -> TokenPlan {
        let gamma = self.gamma(pass);
        self.plans.get(&gamma).cloned().unwrap_or_default()
    }
}
