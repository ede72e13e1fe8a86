//! collab-policies: implementations of collab's policy traits, one concept per folder.
//!
//! - [`svd`]: activation codecs for a split point (SPEC §1): per-request truncated SVD, a
//!   calibrated PCA basis, a basis from the next layer's weight factorisation, and the
//!   f16/bf16/int8 baselines with their combinations;
//! - [`codec`]: codecs by identity: the registry that builds a [`collab_core::split::CodecId`]'s
//!   codec on both sides of a split, the factory trait a user implements to add one, and the
//!   codec conformance suite;
//! - [`split`]: split-point selection from measured cost profiles, the network and an
//!   accuracy table (SPEC §1, "Split selection");
//! - [`batch`]: batch scheduling for the shared-model server (SPEC §2) and its baselines,
//!   with the synchronous server worker that runs them;
//! - [`operator`]: operator-level placement of an LLM between device and cloud (SPEC §7):
//!   device presets, roofline cost models, placement plans and planners;
//! - [`shard`]: elastic on-device execution under a memory budget (SPEC §3, STI): shards at
//!   several fidelities in one file, importance, the pipeline planner and the streaming executor;
//! - [`token`]: elastic serving by token adaptation (SPEC §4, OTAS): ToMe merging, prompt
//!   tokens and their training, adaptive batching and gamma allocation;
//! - [`distill`]: selective feature distillation (SPEC §6): what a device uploads and which
//!   public samples the cloud distils its student on.

pub mod batch;
pub mod codec;
pub mod distill;
pub mod operator;
pub mod prodigy;
pub mod shard;
pub mod split;
pub mod svd;
pub mod token;
pub mod train;
