//! What a codec that chooses its reduction per request minimises (the `lsvd` family; our
//! addition to SPEC §1's codecs, measured beside them in `cargo xtask exp svd-accuracy`).
//!
//! The block after a split starts with a LayerNorm, which divides each token by its own
//! standard deviation across features. To first order the next block therefore sees each
//! token's error relative to that token's spread, not its absolute size: a Frobenius-optimal
//! reduction spends its rank on the tokens with the largest values, which the norm shrinks
//! most. [`ErrorMetric::TokenRelative`] weights token `i`'s squared error by
//! `w_i = 1 / (var_i + 1e-6)`, `var_i` the variance of the token's features before coding
//! (`1e-6` is DeiT's and MiniLM's LayerNorm epsilon, order of magnitude).
//!
//! The rank-`r` minimiser of `sum_i w_i |x_i - y_i|^2` is the truncated SVD of
//! `diag(sqrt w) X` with its left factor divided back by `sqrt w_i` row by row
//! ([`super::SvdCodec`] with row weights), so the payload is the plain SVD's and the server
//! needs no weights. A projection on a fixed basis is per-token optimal under any row weights
//! and does not change.

use collab_core::split::Activation;

/// The error a per-request choice minimises.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum ErrorMetric {
    /// The squared Frobenius error of the activation.
    #[default]
    Frobenius,
    /// Each token's squared error over the variance of its features (module docs).
    TokenRelative,
}

/// LayerNorm's epsilon, order of magnitude: keeps a constant token's weight finite.
const VARIANCE_FLOOR: f64 = 1e-6;

impl ErrorMetric {
    /// The per-token weights of `x` under this metric; `None` means all ones.
    pub fn row_weights(self, x: &Activation) -> Option<Vec<f32>> {
        match self {
            ErrorMetric::Frobenius => None,
            ErrorMetric::TokenRelative => Some(
                x.values
                    .chunks(x.features.max(1))
                    .map(|row| {
                        let n = row.len() as f64;
                        let mean = row.iter().map(|&v| f64::from(v)).sum::<f64>() / n;
                        let var = row
                            .iter()
                            .map(|&v| (f64::from(v) - mean).powi(2))
                            .sum::<f64>()
                            / n;
                        (1.0 / (var + VARIANCE_FLOOR)) as f32
                    })
                    .collect(),
            ),
        }
    }
}

/// `sum_i w_i |a_i - b_i|^2` over the tokens (rows) of two activations of one shape; all
/// weights one for `None`.
pub(crate) fn weighted_squared_error(a: &Activation, b: &Activation, w: Option<&[f32]>) -> f64 {
    let d = a.features.max(1);
    a.values
        .chunks(d)
        .zip(b.values.chunks(d))
        .enumerate()
        .map(|(i, (ra, rb))| {
            let weight = w.map_or(1.0, |w| f64::from(w[i]));
            weight
                * ra.iter()
                    .zip(rb)
                    .map(|(x, y)| f64::from(x - y).powi(2))
                    .sum::<f64>()
        })
        .sum()
}
