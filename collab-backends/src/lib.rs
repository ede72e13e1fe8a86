//! Backend implementations for collab.
//!
//! - `candle::CandleBackend` (feature `candle`, default): candle tensors on CPU, or on CUDA
//!   with the `cuda` feature;
//! - `candle::quantized::QuantizedCandleBackend` (feature `arm`): the device backend, candle CPU
//!   with 8- or 4-bit linear weights (cross-built for aarch64 by `cargo xtask check-arm`);
//! - `tch::TchBackend` (feature `tch`): libtorch 2.11 on CPU or CUDA;
//! - [`reference::ReferenceBackend`]: an `f64` ndarray backend, the oracle of the conformance
//!   suite;
//! - [`any`]: a backend chosen by name at run time (`AnyBackend`), per side of a split
//!   (`SplitBackends`), and a model on it (`AnyTransformer`);
//! - [`conformance`]: the suite every backend must pass, as the [`backend_conformance!`] macro;
//! - [`profiled`]: any backend with every primitive timed (per-operator profiles).

pub mod any;
#[cfg(feature = "candle")]
pub mod candle;
pub mod conformance;
pub mod profiled;
pub mod reference;
#[cfg(feature = "tch")]
pub mod tch;
