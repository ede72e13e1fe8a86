//! Backend implementations for collab.
//!
//! - [`candle::CandleBackend`] (feature `candle`, default): candle tensors on CPU;
//! - [`reference::ReferenceBackend`]: an `f64` ndarray backend, the oracle of the conformance
//!   suite;
//! - [`conformance`]: the suite every backend must pass, as the [`backend_conformance!`] macro.

#[cfg(feature = "candle")]
pub mod candle;
pub mod conformance;
pub mod reference;
