//! Selective feature distillation (SPEC §6): the built-in [`Distiller`]s.
//!
//! | distiller | device uploads | cloud distils on |
//! | --- | --- | --- |
//! | [`AllDistill`] | nothing | every public sample |
//! | [`RandomSelection`] | its sample count | `n` random public samples per private sample |
//! | [`SimilaritySelection`] | one class-probability vector per sample | per vector, the `n` most cosine-similar public samples not yet chosen |
//! | [`PrototypeSelection`] | k-means prototypes of those vectors, each the mean of at least `group_size` | per prototype, `n` x its members most similar |
//!
//! - [`train`]: feature distillation of a [`TrainableModel`](crate::train::TrainableModel)
//!   student through candle autograd, and the cloud's [`FusionHead`](train::FusionHead);
//! - [`compress`]: per-ratio compression modules of a student's features, chosen from the
//!   measured bandwidth;
//! - [`clients`]: a labelled data set shared out as public data and clients' private slices;
//! - [`kmeans`]: the seeded k-means with a smallest group size that prototypes come from;
//! - [`conformance`]: the `Distiller` suite every distiller runs (a user's too).
//!
//! [`Distiller`]: collab_core::distill::Distiller

pub mod clients;
pub mod compress;
pub mod conformance;
pub mod kmeans;
mod select;
mod service;
pub mod train;

pub use select::{AllDistill, PrototypeSelection, RandomSelection, SimilaritySelection};
pub use service::SelectiveDistillation;

#[cfg(test)]
mod tests;

#[cfg(test)]
mod train_tests;
