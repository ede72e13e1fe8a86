//! The harness a policy is judged by: the same machinery `cargo xtask exp
//! collabtrans-throughput` uses, as a library, so that a user's [`BatchPolicy`] is compared
//! with the shared-model and per-split baselines the way ours were (SPEC §2, Figure 3).
//!
//! - [`serving`]: a discrete-event simulation of one server [`Worker`] under seeded Poisson
//!   arrivals from devices that split at different blocks. The clock advances by each step's
//!   cost, either the measured wall time of the real model's batched compute
//!   ([`serving::WallClock`]) or a per-block × batch-size cost profile replayed without
//!   compute ([`serving::ProfileClock`] with [`serving::ReplayExecutor`]), so that a profile
//!   measured on a GPU replays on a laptop;
//! - [`search`]: the sustainable rate: the highest arrival rate at which at least 90% of
//!   requests meet their deadline, found by bisection on pooled seeded traces;
//! - [`compare`]: both together: the sustainable rate of any policy on a replayed profile, the
//!   one call a comparison needs;
//! - [`codec_eval`]: one codec's row at one split of a real classifier (accuracy, agreement
//!   with the unsplit model, bytes, reconstruction error), with the PCA bases fitted on
//!   held-out images for the codecs that need them;
//! - [`sweep`]: the codec × split × ratio accuracy sweep of SPEC §1 on a real model, which
//!   produces the `AccuracyTable` and `SplitBases` a device's split selector reads;
//! - [`sti`]: STI's planning inputs, a device's compute costs measured with the streaming
//!   executor's own code;
//! - [`traces`]: arrival traces for serving experiments (a Poisson trace with a moving rate,
//!   and a bursty generator matching the published statistics of a production trace);
//! - [`estimate`]: a per-block cost profile derived from a roofline (peak FLOP/s, memory
//!   bandwidth, a per-kernel launch cost) for hardware we cannot measure, labelled as an
//!   estimate in the profile itself ([`MeasuredProfile::estimate`]).
//!
//! [`BatchPolicy`]: collab_core::batch::BatchPolicy
//! [`Worker`]: collab_policies::batch::Worker
//! [`MeasuredProfile::estimate`]: collab_core::cost::MeasuredProfile::estimate

pub mod codec_eval;
pub mod compare;
pub mod estimate;
pub mod search;
pub mod serving;
pub mod sti;
pub mod sweep;
pub mod traces;
