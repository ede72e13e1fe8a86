//! Token adaptation on a live server: the merge plan of each pass (OTAS, SPEC §4).
//!
//! A serving process runs its batches as passes through the blocks; when a pass begins it asks
//! its [`PassTokenPolicy`] for a [`TokenPlan`], the tokens each block merges away (ToMe) for
//! that whole pass. Requests that join the pass at a later block (the shared-model server's
//! split points) are merged from that block on; each row merges its own tokens, so a batch
//! mixes rows of unequal token counts (padded and masked) without one row's tokens ever
//! merging into another's.
//!
//! Live plans merge only (gamma <= 0). Prompt tokens (gamma > 0) need prompts and a head
//! trained per task, and the wire carries no task; they stay with the trace-driven serving
//! of `collab_policies::token::serve`.
//!
//! A [`TokenPolicyConfig`] names a policy in a pipeline config (`[server.tokens]`), registered
//! with `typetag` like every other pluggable part.

use std::fmt::Debug;

use serde::{Deserialize, Serialize};

use super::{Batch, Gamma, LoadInfo};
use crate::{Error, Result};

/// What a server knows when it begins a pass.
#[derive(Clone, Copy, Debug)]
pub struct PassContext<'a> {
    /// Seconds on the server's clock.
    pub now: f64,
    /// Every request waiting to run, as queries: its arrival and deadline on the same clock;
    /// `task` 0 and `utility` 1 (the wire carries neither; a policy may set its own).
    pub waiting: &'a Batch,
    /// The measured arrival rate and the server's uptime.
    pub load: LoadInfo,
}

/// The token merging of one pass: `merges[l]` tokens merged away in block `l` (each row of the
/// batch merges its own, capped at what its token count allows).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenPlan {
    /// The gamma the plan stands for (<= 0), for reports and metrics.
    pub gamma: Gamma,
    /// Tokens merged away per block; blocks past the end merge nothing.
    pub merges: Vec<usize>,
}

impl TokenPlan {
    /// The plan that merges nothing (gamma 0).
    pub fn none() -> Self {
        Self::default()
    }

    /// Whether it merges nothing.
    pub fn is_none(&self) -> bool {
        self.merges.iter().all(|&r| r == 0)
    }

    /// Checks the plan against a model of `layers` blocks seeing `tokens` tokens of which
    /// `protected` are kept: one count per block at most, gamma <= 0, and every count within
    /// what the running token count allows (`(n - protected) / 2` in a block that sees `n`).
    ///
    /// # Errors
    /// [`Error::Config`] naming the first block that breaks it.
    pub fn check(&self, layers: usize, tokens: usize, protected: usize) -> Result<()> {
        let bad = |m: String| Err(Error::Config(format!("token plan: {m}")));
        if self.gamma > 0 {
            return bad(format!(
                "gamma {} > 0: live serving merges only (gamma <= 0)",
                self.gamma
            ));
        }
        if self.merges.len() > layers {
            return bad(format!(
                "{} per-block counts for {layers} blocks",
                self.merges.len()
            ));
        }
        let mut n = tokens;
        for (l, &r) in self.merges.iter().enumerate() {
            let cap = n.saturating_sub(protected) / 2;
            if r > cap {
                return bad(format!(
                    "block {l} merges {r} of {n} tokens ({protected} protected): at most {cap}"
                ));
            }
            n -= r;
        }
        Ok(())
    }
}

/// Chooses the token merging of each pass a live server runs (OTAS, SPEC §4).
///
/// # Contract
/// [`plan`](Self::plan) never panics, whatever the context (no request waiting, NaN rates,
/// deadlines already past), and returns a plan that passes [`TokenPlan::check`] for the model
/// it was built for. A server calls it on its compute thread before a pass begins, and again
/// (while none has begun) whenever a request arrives, so it must be quick (well under a
/// millisecond); the last plan asked for runs the pass. `collab_policies::token::conformance` checks all
/// of this on a user's policy.
pub trait PassTokenPolicy: Debug + Send {
    /// A short name for reports (e.g. `"otas(dp)"`, `"fixed(-8)"`).
    fn name(&self) -> String;

    /// The plan of the pass about to begin.
    fn plan(&mut self, pass: &PassContext<'_>) -> TokenPlan;
}

/// What a token policy is built for: the model the server runs and its batch budget.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TokenPolicyContext {
    /// Blocks of the model.
    pub layers: usize,
    /// Tokens entering block 0 (197 for DeiT-Tiny at 224 px; a text model's longest input).
    pub tokens: usize,
    /// Leading tokens never merged (the class token).
    pub protected: usize,
    /// The most requests a pass runs at once (the batch policy's budget).
    pub batch_budget: usize,
}

/// A token policy as a pipeline config names it (`[server.tokens]`), registered with `typetag`.
///
/// ```
/// use collab_core::adaptive::{
///     PassContext, PassTokenPolicy, TokenPlan, TokenPolicyConfig, TokenPolicyContext,
/// };
/// use serde::{Deserialize, Serialize};
///
/// /// Merges 4 tokens per block whenever more than `queue` requests wait.
/// #[derive(Debug)]
/// struct MergeWhenBusy { queue: usize, layers: usize }
///
/// impl PassTokenPolicy for MergeWhenBusy {
///     fn name(&self) -> String { format!("merge-when-busy({})", self.queue) }
///     fn plan(&mut self, pass: &PassContext<'_>) -> TokenPlan {
///         if pass.waiting.len() > self.queue {
///             TokenPlan { gamma: -4, merges: vec![4; self.layers] }
///         } else {
///             TokenPlan::none()
///         }
///     }
/// }
///
/// #[derive(Debug, Serialize, Deserialize)]
/// struct MergeWhenBusyConfig { queue: usize }
///
/// #[typetag::serde(name = "merge-when-busy")]
/// impl TokenPolicyConfig for MergeWhenBusyConfig {
///     fn build(&self, c: &TokenPolicyContext) -> collab_core::Result<Box<dyn PassTokenPolicy>> {
///         Ok(Box::new(MergeWhenBusy { queue: self.queue, layers: c.layers }))
///     }
/// }
///
/// let config: Box<dyn TokenPolicyConfig> =
///     serde_json::from_str(r#"{ "kind": "merge-when-busy", "queue": 8 }"#)?;
/// let context = TokenPolicyContext { layers: 12, tokens: 197, protected: 1, batch_budget: 8 };
/// let policy = config.build(&context)?;
/// assert_eq!(policy.name(), "merge-when-busy(8)");
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[typetag::serde(tag = "kind")]
pub trait TokenPolicyConfig: Debug + Send + Sync {
    /// The policy, for the model `context` describes.
    ///
    /// # Errors
    /// [`Error::Config`] naming what does not fit (a missing profile, a bad gamma).
    fn build(&self, context: &TokenPolicyContext) -> Result<Box<dyn PassTokenPolicy>>;
}
