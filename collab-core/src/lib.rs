//! collab-core: the interfaces of collab and the data they speak.
//!
//! - [`Backend`]: tensor primitives, implemented per kind of hardware in `collab-backends`;
//! - [`batch`]: the `BatchPolicy` trait of the shared-model server (SPEC §2), the queue view it
//!   decides on and the per-request `Response`;
//! - [`model`]: one generic Transformer (ViT/DeiT and BERT) written once against `Backend`,
//!   with split execution (`embed`, `run_blocks`, `head`) and safetensors loading;
//! - [`token`]: the `TokenAdapter` hook points inside each block;
//! - [`adaptive`]: serving by token adaptation (SPEC §4): queries, batches, token profiles and
//!   the `BatchFormer` and `TokenAllocator` traits;
//! - [`split`]: the `ActivationCodec` and `SplitStrategy` traits of split inference;
//! - [`graph`]: the two-level IR of a LLaMA-style decoder (layer graph lowered to an operator
//!   graph with FLOPs, bytes and data movement) that operator placement plans over (SPEC §7);
//! - [`cost`]: the `CostModel` trait and a measured per-block profile;
//! - [`distill`]: the `Distiller` trait of selective feature distillation (SPEC §6) and what a
//!   device uploads;
//! - [`input`]: image preprocessing and tokenisation for the real checkpoints;
//! - [`json`]: pretty JSON files for profiles, calibrations and tables;
//! - [`seed`]: seeds and round counts of the randomised conformance suites;
//! - [`stats`]: rank correlation and cosine similarity for evaluations;
//! - [`fixtures`]: where the real checkpoints and evaluation data are found.
//!
//! collab-core depends on no backend, no transport and no async runtime.

pub mod adaptive;
mod backend;
pub mod batch;
pub mod cost;
pub mod distill;
mod error;
pub mod fixtures;
pub mod graph;
pub mod input;
pub mod json;
pub mod model;
pub mod seed;
pub mod split;
pub mod stats;
pub mod token;

pub use backend::{Backend, shape};
pub use error::{Error, Result};
