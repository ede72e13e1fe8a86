//! Per-pass merge plans for a live server (OTAS, SPEC §4): the built-in
//! [`PassTokenPolicy`]s and the configs that name them in `[server.tokens]`.
//!
//! - [`FixedTokens`] (`kind = "fixed"`): every pass merges at one gamma (the fixed-merging
//!   baseline of SPEC §4);
//! - [`OtasTokens`] (`kind = "otas"`): each pass's gamma chosen by the OTAS allocator (Alg. 2,
//!   handing over to the load-based rule of Alg. 3 for short queues and the first 2 s) from a
//!   profile that `cargo xtask exp token-profile` measured ([`SavedTokenProfile`]), using the
//!   merge schedule the profile chose for each gamma.
//!
//! Both merge only (gamma <= 0; see [`collab_core::adaptive::TokenPlan`] for why).

use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;

use collab_core::adaptive::{
    Batch, Gamma, PassContext, PassTokenPolicy, ProfileTable, Query, TokenAllocator, TokenPlan,
    TokenPolicyConfig, TokenPolicyContext, TokenProfile,
};
use collab_core::{Error, Result};
use serde::{Deserialize, Serialize};

use super::allocate::{DpAllocator, DpParams};
use super::load_rule::{LoadRule, RateTable};
use super::saved::SavedTokenProfile;
use super::schedule::{MergeSchedule, ScheduleKind};

/// The plan of `gamma` for the model `context` describes: no merging at gamma 0, else
/// `schedule` (or the constant one) fitted to the model's tokens and checked.
///
/// # Errors
/// [`Error::Config`] for gamma > 0, or a schedule that does not fit the model's blocks.
pub fn plan_for_gamma(
    gamma: Gamma,
    schedule: Option<&MergeSchedule>,
    context: &TokenPolicyContext,
) -> Result<TokenPlan> {
    let c = context;
    if gamma > 0 {
        return Err(Error::Config(format!(
            "token policy: gamma {gamma} > 0 adds prompt tokens, which a live server does not \
             serve (it merges only: gamma <= 0)"
        )));
    }
    if gamma == 0 {
        return Ok(TokenPlan::none());
    }
    let schedule = match schedule {
        Some(s) => s.fitted(c.tokens, c.protected),
        None => MergeSchedule::for_gamma(
            gamma,
            ScheduleKind::Constant,
            c.layers,
            c.tokens,
            c.protected,
        )?,
    };
    let plan = TokenPlan {
        gamma,
        merges: schedule.per_layer().to_vec(),
    };
    plan.check(c.layers, c.tokens, c.protected)?;
    Ok(plan)
}

/// A policy that returns the same plan for every pass.
#[derive(Clone, Debug)]
pub struct FixedPlan(pub TokenPlan);

impl PassTokenPolicy for FixedPlan {
    fn name(&self) -> String {
        format!("fixed({})", self.0.gamma)
    }

    fn plan(&mut self, _pass: &PassContext<'_>) -> TokenPlan {
        self.0.clone()
    }
}

/// `kind = "fixed"`: every pass merges `|gamma|` tokens per block on average, with `schedule`
/// (default constant; `"Linear"`, or `{ FrontLoaded = { depth = 4 } }`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FixedTokens {
    /// Gamma, <= 0.
    pub gamma: Gamma,
    /// The shape of the per-block counts (default constant).
    #[serde(default)]
    pub schedule: Option<ScheduleKind>,
}

#[typetag::serde(name = "fixed")]
impl TokenPolicyConfig for FixedTokens {
    fn build(&self, context: &TokenPolicyContext) -> Result<Box<dyn PassTokenPolicy>> {
        let kind = self.schedule.unwrap_or(ScheduleKind::Constant);
        let plan = if self.gamma < 0 {
            let c = context;
            let s = MergeSchedule::for_gamma(self.gamma, kind, c.layers, c.tokens, c.protected)
                .map_err(|e| Error::Config(format!("token policy `fixed`: {e}")))?;
            plan_for_gamma(self.gamma, Some(&s), context)?
        } else {
            plan_for_gamma(self.gamma, None, context)?
        };
        Ok(Box::new(FixedPlan(plan)))
    }
}

/// Which OTAS allocator chooses each pass's gamma.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum OtasAllocator {
    /// The dynamic programme of Alg. 2 (the load-based rule for short queues and the first
    /// 2 s).
    #[default]
    Dp,
    /// The load-based rule of Alg. 3 alone.
    LoadRule,
}

fn default_utility() -> f64 {
    0.5
}

pub(crate) fn default_headroom() -> f64 {
    0.9
}

/// The token profile a live policy named `kind` reads, or a config error saying how to make it.
pub(crate) fn load_profile(kind: &str, path: &std::path::Path) -> Result<SavedTokenProfile> {
    SavedTokenProfile::load(path).map_err(|e| {
        Error::Config(format!(
            "token policy `{kind}`: {e} (make it with `cargo xtask exp token-profile`)"
        ))
    })
}

/// The requests waiting for a pass as a policy plans with them: each a query of `task` (with
/// `utility`, when given; the wire carries neither), in deadline order, cut into batches of at
/// most `budget` (at least 1).
pub(crate) fn waiting_batches(
    pass: &PassContext<'_>,
    task: usize,
    utility: Option<f64>,
    budget: usize,
) -> Vec<Batch> {
    let mut queries: Vec<Query> = pass
        .waiting
        .queries
        .iter()
        .map(|q| Query {
            task,
            utility: utility.unwrap_or(q.utility),
            ..*q
        })
        .collect();
    queries.sort_by(|a, b| a.deadline.total_cmp(&b.deadline));
    queries
        .chunks(budget.max(1))
        .map(|c| Batch::new(c.to_vec()))
        .collect()
}

/// The plan of each of `gammas` (the profile's merge schedule where it has one, else the
/// constant one), checked against the model.
pub(crate) fn plans_for(
    gammas: &[Gamma],
    saved: &SavedTokenProfile,
    context: &TokenPolicyContext,
) -> Result<BTreeMap<Gamma, TokenPlan>> {
    gammas
        .iter()
        .map(|&g| Ok((g, plan_for_gamma(g, saved.schedules.get(&g), context)?)))
        .collect()
}

/// `kind = "otas"`: each pass's gamma from the OTAS allocator over the requests waiting.
///
/// - `profile`: the file `cargo xtask exp token-profile` writes (`results/otas/
///   token-profile.json`), measured on the serving machine; only its gammas <= 0 are used;
/// - `allocator`: `"dp"` (default) or `"load-rule"`;
/// - `task`: the profile's task whose accuracy and times stand for the served model (default 0);
/// - `utility`: the utility of every request (default 0.5; above the load rule's kappa = 0.8
///   a batch always runs at the largest gamma, SPEC §4);
/// - `headroom`: the load rule's rate table serves each gamma up to this share of its profiled
///   throughput (default 0.9; [`RateTable::profiled`]).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OtasTokens {
    /// The token-profile file.
    pub profile: PathBuf,
    /// Which allocator.
    #[serde(default)]
    pub allocator: OtasAllocator,
    /// The profile's task standing for the served model.
    #[serde(default)]
    pub task: usize,
    /// Utility of each request.
    #[serde(default = "default_utility")]
    pub utility: f64,
    /// Share of the profiled throughput the rate table serves at each gamma.
    #[serde(default = "default_headroom")]
    pub headroom: f64,
}

#[typetag::serde(name = "otas")]
impl TokenPolicyConfig for OtasTokens {
    fn build(&self, context: &TokenPolicyContext) -> Result<Box<dyn PassTokenPolicy>> {
        let saved = load_profile("otas", &self.profile)?;
        Ok(Box::new(OtasPolicy::new(&saved, self, context)?))
    }
}

/// A profile's gammas <= 0 only: what a live server can run.
#[derive(Clone, Debug)]
struct MergeOnly {
    table: ProfileTable,
    gammas: Vec<Gamma>,
}

impl TokenProfile for MergeOnly {
    fn gammas(&self) -> &[Gamma] {
        &self.gammas
    }

    fn accuracy(&self, task: usize, gamma: Gamma) -> Option<f64> {
        (gamma <= 0).then(|| self.table.accuracy(task, gamma))?
    }

    fn per_sample_time(&self, task: usize, gamma: Gamma, batch: usize) -> Option<f64> {
        (gamma <= 0).then(|| self.table.per_sample_time(task, gamma, batch))?
    }
}

/// The OTAS per-pass policy: the waiting requests, in deadline order, cut into batches of the
/// server's budget; the allocator's gamma for the first batch it runs is the pass's; when it
/// runs none (nothing can make its deadline), the smallest gamma, the fastest.
pub struct OtasPolicy {
    profile: MergeOnly,
    plans: BTreeMap<Gamma, TokenPlan>,
    allocator: Box<dyn TokenAllocator>,
    task: usize,
    utility: f64,
    budget: usize,
}

impl fmt::Debug for OtasPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OtasPolicy")
            .field("allocator", &self.allocator.name())
            .field("gammas", &self.profile.gammas)
            .field("task", &self.task)
            .finish_non_exhaustive()
    }
}

impl OtasPolicy {
    /// The policy over `saved` as `config` says, for the model `context` describes.
    ///
    /// # Errors
    /// [`Error::Config`] when the profile has no gamma <= 0 the task can run at, the task is
    /// not in it, the utility or headroom is out of range, or a schedule does not fit the model.
    pub fn new(
        saved: &SavedTokenProfile,
        config: &OtasTokens,
        context: &TokenPolicyContext,
    ) -> Result<Self> {
        let bad = |m: String| Error::Config(format!("token policy `otas`: {m}"));
        if !(config.utility.is_finite() && config.utility >= 0.0) {
            return Err(bad(format!(
                "utility {} must be finite and >= 0",
                config.utility
            )));
        }
        let table = saved.table.clone();
        let gammas: Vec<Gamma> = table
            .gammas()
            .iter()
            .copied()
            .filter(|&g| g <= 0 && table.accuracy(config.task, g).is_some())
            .collect();
        if gammas.is_empty() {
            return Err(bad(format!(
                "the profile has no gamma <= 0 for task {} (gammas {:?})",
                config.task,
                table.gammas()
            )));
        }
        let profile = MergeOnly { table, gammas };
        let plans = plans_for(&profile.gammas, saved, context).map_err(|e| bad(e.to_string()))?;
        let rule = LoadRule::new(
            RateTable::profiled(&profile, config.task, config.headroom)
                .map_err(|e| bad(e.to_string()))?,
            LoadRule::PUBLISHED_KAPPA,
        )?;
        let allocator: Box<dyn TokenAllocator> = match config.allocator {
            OtasAllocator::Dp => Box::new(DpAllocator::new(DpParams::published(), rule)?),
            OtasAllocator::LoadRule => Box::new(rule),
        };
        Ok(Self {
            profile,
            plans,
            allocator,
            task: config.task,
            utility: config.utility,
            budget: context.batch_budget.max(1),
        })
    }

    /// The plan it runs at `gamma` (one per gamma <= 0 of the profile): the profile's merge
    /// schedule for that gamma when it has one, else the constant schedule; `None` for a gamma
    /// the profile does not list.
    pub fn plan_for(&self, gamma: Gamma) -> Option<&TokenPlan> {
        self.plans.get(&gamma)
    }

    /// The gamma the allocator gives the pass about to begin.
    pub fn gamma(&mut self, pass: &PassContext<'_>) -> Gamma {
        let (fastest, plainest) = (
            self.profile.gammas[0],
            self.profile.gammas[self.profile.gammas.len() - 1],
        );
        let batches = waiting_batches(pass, self.task, Some(self.utility), self.budget);
        if batches.is_empty() {
            return plainest;
        }
        let allocation = self
            .allocator
            .allocate(pass.now, &batches, &self.profile, &pass.load);
        allocation
            .choices
            .iter()
            .flatten()
            .next()
            .copied()
            .unwrap_or(fastest)
    }
}

impl PassTokenPolicy for OtasPolicy {
    fn name(&self) -> String {
        format!("otas({})", self.allocator.name())
    }

    fn plan(&mut self, pass: &PassContext<'_>) -> TokenPlan {
        let gamma = self.gamma(pass);
        self.plans.get(&gamma).cloned().unwrap_or_default()
    }
}
