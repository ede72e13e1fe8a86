//! Activation codecs for a split point (SPEC §1), all behind
//! [`collab_core::split::ActivationCodec`]:
//!
//! | family | sends | bytes |
//! | --- | --- | --- |
//! | [`PlainCodec`] `f32`/`f16`/`bf16`/`int8` | the activation | `4nd`, `2nd`, `n(d+4)` |
//! | [`SvdCodec`] `svd[-p]` | `U_r S_r` and `V_r^T`, per request | `r(n+d)` values |
//! | [`CentredSvdCodec`] `csvd[-p]` | the same for `X - M`, `M` a calibrated per-position mean | `r(n+d)` values |
//! | [`ProjectedCodec`] `pca[-p]` | `(X - mean) P_r`, calibrated PCA basis | `nr` values |
//! | [`ProjectedCodec`] `cpca[-p]` | `(X - M - mean) P_r`, PCA of centred calibration activations | `nr` values |
//! | [`AdaptiveSvdCodec`] `asvd[-p]` | per request the better of `csvd` and `cpca` at `csvd`'s bytes | `csvd`'s bytes + 1 |
//! | [`AdaptiveSvdCodec`] `hsvd[-p]` | per request the best of those and a `cpca` projection followed by the SVD of its residual | `csvd`'s bytes + 1 |
//! | [`AdaptiveSvdCodec`] `lsvd[-p]` | `hsvd`'s candidates, each SVD and the choice by each token's error relative to its spread ([`ErrorMetric::TokenRelative`]) | `csvd`'s bytes + 1 |
//! | [`TransformCodec`] `tpca` | every coefficient of `X - M` in the centred PCA basis, each column at its own width (0-16 bits) chosen per request | `cpca-int8`'s bytes |
//! | [`MaskedPcaCodec`] `mpca` | per request the largest coefficients of `X - M` in the centred PCA basis (`f32`) and a bitmask of where they are, or `cpca`'s payload if that is better | `cpca`'s bytes + 1 |
//! | [`ProjectedCodec`] `wsvd[-p]` | `X V_r`, next layer's weight SVD basis | `nr` values |
//!
//! Every payload starts with a 25-byte header (shape, rank, precision, basis fingerprint);
//! `int8` adds a 4-byte scale per row. The truncation ratio is measured on these bytes.
//!
//! SVDs and eigendecompositions use faer: a pure-Rust dense linear-algebra crate that is well
//! maintained, fast enough on the shapes here (the per-request SVD codec encodes a 197 x 192 activation
//! in 5-9 ms in `cargo xtask exp svd-accuracy` on a 2-core EPYC), needs
//! no system BLAS/LAPACK (so CI and the aarch64 cross build need nothing installed), and gives
//! singular values sorted, which truncation relies on.

mod adaptive;
mod bases;
mod basis;
mod bits;
mod centre;
mod family;
mod masked;
mod metric;
mod plain;
mod projected;
mod quant;
mod request;
mod transform;
mod wire;

pub use adaptive::AdaptiveSvdCodec;
pub use bases::{BASES_FORMAT, SplitBases, SplitBasis};
pub use basis::Basis;
pub use centre::{CentredSvdCodec, PositionMean};
pub use family::{BasisNeed, Family, Shared};
pub use masked::MaskedPcaCodec;
pub use metric::ErrorMetric;
pub use plain::PlainCodec;
pub use projected::ProjectedCodec;
pub use quant::Precision;
pub use request::SvdCodec;
pub use transform::TransformCodec;
pub use wire::HEADER_LEN;

#[cfg(test)]
mod tests;
