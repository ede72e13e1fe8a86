//! The built-in batch policies as [`BatchPolicyConfig`]s, named in a pipeline config by their
//! `kind`:
//!
//! | `kind` | policy | fields |
//! | --- | --- | --- |
//! | `shared` | [`SharedModel`] | `budget`, optional `major_share` (default [`DEFAULT_MAJOR_SHARE`]) |
//! | `per-split` | [`PerSplit`] | `budget` |
//! | `server-only` | [`ServerOnly`] | `budget` |
//!
//! ```
//! use collab_core::batch::BatchPolicyConfig;
//! let config: Box<dyn BatchPolicyConfig> =
//!     serde_json::from_str(r#"{ "kind": "shared", "budget": 16 }"#)?;
//! let policy = config.build()?;
//! assert!(policy.name().starts_with("shared-model"));
//! assert_eq!(policy.budget(), 16);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use collab_core::Result;
use collab_core::batch::{BatchPolicy, BatchPolicyConfig};
use serde::{Deserialize, Serialize};

use super::{DEFAULT_MAJOR_SHARE, PerSplit, ServerOnly, SharedModel};

/// The default budget batch size of the built-in configs.
pub const DEFAULT_BUDGET: usize = 8;

fn default_budget() -> usize {
    DEFAULT_BUDGET
}

/// Config of [`SharedModel`] (`kind = "shared"`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SharedModelConfig {
    /// The budget batch size (default [`DEFAULT_BUDGET`]).
    #[serde(default = "default_budget")]
    pub budget: usize,
    /// The prioritised queue's share of the budget (default [`DEFAULT_MAJOR_SHARE`]).
    #[serde(default)]
    pub major_share: Option<f64>,
}

impl SharedModelConfig {
    /// The config with budget `budget` and the default share.
    pub fn new(budget: usize) -> Self {
        Self {
            budget,
            major_share: None,
        }
    }
}

#[typetag::serde(name = "shared")]
impl BatchPolicyConfig for SharedModelConfig {
    fn build(&self) -> Result<Box<dyn BatchPolicy>> {
        let policy = SharedModel::new(self.budget)?
            .with_major_share(self.major_share.unwrap_or(DEFAULT_MAJOR_SHARE))?;
        Ok(Box::new(policy))
    }
}

/// Config of [`PerSplit`] (`kind = "per-split"`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PerSplitConfig {
    /// The budget batch size (default [`DEFAULT_BUDGET`]).
    #[serde(default = "default_budget")]
    pub budget: usize,
}

#[typetag::serde(name = "per-split")]
impl BatchPolicyConfig for PerSplitConfig {
    fn build(&self) -> Result<Box<dyn BatchPolicy>> {
        Ok(Box::new(PerSplit::new(self.budget)?))
    }
}

/// Config of [`ServerOnly`] (`kind = "server-only"`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerOnlyConfig {
    /// The budget batch size (default [`DEFAULT_BUDGET`]).
    #[serde(default = "default_budget")]
    pub budget: usize,
}

#[typetag::serde(name = "server-only")]
impl BatchPolicyConfig for ServerOnlyConfig {
    fn build(&self) -> Result<Box<dyn BatchPolicy>> {
        Ok(Box::new(ServerOnly::new(self.budget)?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(json: &str) -> std::result::Result<Box<dyn BatchPolicyConfig>, String> {
        serde_json::from_str(json).map_err(|e| e.to_string())
    }

    #[test]
    fn every_built_in_kind_builds_its_policy() {
        for (json, name, budget) in [
            (r#"{"kind":"shared"}"#, "shared-model", DEFAULT_BUDGET),
            (
                r#"{"kind":"shared","budget":3,"major_share":0.5}"#,
                "shared-model",
                3,
            ),
            (r#"{"kind":"per-split","budget":4}"#, "per-split", 4),
            (r#"{"kind":"server-only","budget":2}"#, "server-only", 2),
        ] {
            let policy = parse(json).expect(json).build().expect(json);
            assert!(policy.name().starts_with(name), "{json}: {}", policy.name());
            assert_eq!(policy.budget(), budget, "{json}");
        }
    }

    #[test]
    fn bad_configs_name_what_is_wrong() {
        let unknown = parse(r#"{"kind":"fifo"}"#).expect_err("unknown kind");
        assert!(
            unknown.contains("fifo") && unknown.contains("per-split"),
            "{unknown}"
        );
        let field = parse(r#"{"kind":"shared","bugdet":3}"#).expect_err("unknown field");
        assert!(field.contains("bugdet"), "{field}");
        let zero = parse(r#"{"kind":"per-split","budget":0}"#).expect("parses");
        let e = zero.build().expect_err("budget 0").to_string();
        assert!(e.contains("at least 1"), "{e}");
        let share = parse(r#"{"kind":"shared","major_share":1.5}"#).expect("parses");
        assert!(share.build().is_err());
    }
}
