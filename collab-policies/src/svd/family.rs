//! Codec families and the rank that reaches a byte budget.
//!
//! A [`Family`] is a codec without its rank; [`Family::rank_for_ratio`] finds the largest rank
//! whose encoding removes at least a fraction `rho` of the `f32` bytes, computed from the
//! exact encoded length (so rho is measured in bytes, header included).

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

use collab_core::split::{ActivationCodec, truncation_ratio};
use collab_core::{Error, Result};
use serde::{Deserialize, Serialize};

use super::adaptive::AdaptiveSvdCodec;
use super::basis::Basis;
use super::centre::{CentredSvdCodec, PositionMean};
use super::masked::MaskedPcaCodec;
use super::metric::ErrorMetric;
use super::plain::PlainCodec;
use super::projected::ProjectedCodec;
use super::quant::Precision;
use super::request::SvdCodec;
use super::transform::TransformCodec;

/// A codec family: how values are reduced and at which precision they are sent.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(into = "String", try_from = "String")]
pub enum Family {
    /// The activation itself (`f32`, `f16`, `bf16`, `int8`); no rank.
    Plain(Precision),
    /// Per-request truncated SVD.
    Svd(Precision),
    /// Per-request truncated SVD around a calibrated per-position mean ([`CentredSvdCodec`]).
    CentredSvd(Precision),
    /// Calibrated PCA basis.
    Pca(Precision),
    /// Calibrated PCA basis of activations centred on the per-position mean, used around it.
    CentredPca(Precision),
    /// Per request, the better of `csvd` and `cpca` at `csvd`'s bytes ([`AdaptiveSvdCodec`]).
    AdaptiveSvd(Precision),
    /// Per request, the best of `csvd`, `cpca` and a `cpca` projection followed by the SVD of
    /// its residual, at `csvd`'s bytes ([`AdaptiveSvdCodec`] with `hybrid`).
    HybridSvd(Precision),
    /// `hsvd` with every SVD and the choice by each token's error relative to its own spread
    /// ([`ErrorMetric::TokenRelative`]), at `csvd`'s bytes.
    LayerNormSvd(Precision),
    /// Basis of the next linear layer's weight SVD.
    WeightSvd(Precision),
    /// Every coefficient in the centred PCA basis, each column at its own width of 0-16 bits
    /// chosen per request, at `cpca-int8`'s bytes ([`TransformCodec`]).
    TransformPca,
    /// The largest coefficients of the request in the centred PCA basis (`f32`) and a bitmask
    /// of where they are, at `cpca`'s bytes plus one ([`MaskedPcaCodec`]).
    MaskedPca,
}

/// Which shared basis a family needs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BasisNeed {
    /// None.
    None,
    /// A PCA basis fitted on calibration activations at the split.
    Calibrated,
    /// The SVD basis of the next linear layer's weight.
    Weight,
    /// The mean activation per token position at the split ([`PositionMean`]).
    PositionMean,
    /// The per-position mean and a PCA basis fitted on calibration activations centred on it.
    CentredCalibrated,
}

/// What both sides of a split hold for a family that needs it (see [`Family::basis_need`]).
#[derive(Clone, Debug, Default)]
pub enum Shared {
    /// Nothing.
    #[default]
    None,
    /// A basis (PCA or weight SVD).
    Basis(Arc<Basis>),
    /// A per-position mean.
    PositionMean(Arc<PositionMean>),
    /// A per-position mean and the PCA basis of activations centred on it.
    CentredBasis(Arc<Basis>, Arc<PositionMean>),
}

impl Family {
    /// The families the accuracy sweep measures, baselines first.
    pub const SWEEP: [Family; 22] = [
        Family::Plain(Precision::F16),
        Family::Plain(Precision::Bf16),
        Family::Plain(Precision::Int8),
        Family::Svd(Precision::F32),
        Family::Svd(Precision::F16),
        Family::Svd(Precision::Int8),
        Family::CentredSvd(Precision::F32),
        Family::CentredSvd(Precision::Int8),
        Family::Pca(Precision::F32),
        Family::Pca(Precision::F16),
        Family::Pca(Precision::Int8),
        Family::CentredPca(Precision::F32),
        Family::CentredPca(Precision::Int8),
        Family::AdaptiveSvd(Precision::F32),
        Family::AdaptiveSvd(Precision::Int8),
        Family::HybridSvd(Precision::F32),
        Family::HybridSvd(Precision::Int8),
        Family::LayerNormSvd(Precision::F32),
        Family::LayerNormSvd(Precision::Int8),
        Family::MaskedPca,
        Family::WeightSvd(Precision::F32),
        Family::TransformPca,
    ];

    /// Every family, each at every precision it takes (38 families).
    pub fn all() -> impl Iterator<Item = Family> {
        let ranked: [fn(Precision) -> Family; 9] = [
            Family::Plain,
            Family::Svd,
            Family::CentredSvd,
            Family::Pca,
            Family::CentredPca,
            Family::AdaptiveSvd,
            Family::HybridSvd,
            Family::LayerNormSvd,
            Family::WeightSvd,
        ];
        ranked
            .into_iter()
            .flat_map(|make| Precision::ALL.into_iter().map(make))
            .chain([Family::TransformPca, Family::MaskedPca])
    }

    /// Whether this is one of the pure SVD codecs (reduction by rank, `f32` values): `mpca`
    /// counts, a truncation in the calibrated basis chosen per request.
    pub fn is_pure_svd(self) -> bool {
        matches!(
            self,
            Family::MaskedPca
                | Family::Svd(Precision::F32)
                | Family::CentredSvd(Precision::F32)
                | Family::Pca(Precision::F32)
                | Family::CentredPca(Precision::F32)
                | Family::AdaptiveSvd(Precision::F32)
                | Family::HybridSvd(Precision::F32)
                | Family::LayerNormSvd(Precision::F32)
                | Family::WeightSvd(Precision::F32)
        )
    }

    /// The basis it needs.
    pub fn basis_need(self) -> BasisNeed {
        match self {
            Family::Plain(_) | Family::Svd(_) => BasisNeed::None,
            Family::Pca(_) => BasisNeed::Calibrated,
            Family::CentredSvd(_) => BasisNeed::PositionMean,
            Family::CentredPca(_)
            | Family::AdaptiveSvd(_)
            | Family::HybridSvd(_)
            | Family::LayerNormSvd(_)
            | Family::TransformPca
            | Family::MaskedPca => BasisNeed::CentredCalibrated,
            Family::WeightSvd(_) => BasisNeed::Weight,
        }
    }

    /// The codec of this family at `rank` (ignored by plain codecs), for the families that need
    /// no [`PositionMean`].
    ///
    /// # Errors
    /// [`Error::Config`] if the family needs a basis and none is given, or `rank` is 0.
    pub fn build(self, rank: usize, basis: Option<Arc<Basis>>) -> Result<Box<dyn ActivationCodec>> {
        self.build_with(rank, basis.map_or(Shared::None, Shared::Basis))
    }

    /// The codec of this family at `rank` with what both sides share.
    ///
    /// # Errors
    /// [`Error::Config`] if the family needs a basis or a position mean and `shared` is not
    /// one, or `rank` is 0.
    pub fn build_with(self, rank: usize, shared: Shared) -> Result<Box<dyn ActivationCodec>> {
        let basis = match &shared {
            Shared::Basis(b) => Some(b.clone()),
            _ => None,
        };
        if rank == 0 && !matches!(self, Family::Plain(_)) {
            return Err(Error::Config(format!("{self}: rank must be at least 1")));
        }
        let need_basis = |label| {
            basis.clone().map(|basis| (label, basis)).ok_or_else(|| {
                Error::Config(format!("{self} needs a shared basis for the split point"))
            })
        };
        let centred_basis = match &shared {
            Shared::CentredBasis(b, c) => Some((b.clone(), c.clone())),
            _ => None,
        };
        let need_centred_basis = || {
            centred_basis.clone().ok_or_else(|| {
                Error::Config(format!(
                    "{self} needs the position mean of the split point and the PCA basis of \
                     activations centred on it"
                ))
            })
        };
        Ok(match self {
            Family::Plain(precision) => Box::new(PlainCodec { precision }),
            Family::Svd(precision) => Box::new(SvdCodec { rank, precision }),
            Family::CentredSvd(precision) => match shared {
                Shared::PositionMean(centre) => Box::new(CentredSvdCodec {
                    centre,
                    rank,
                    precision,
                }),
                _ => {
                    return Err(Error::Config(format!(
                        "{self} needs the position mean of the split point"
                    )));
                }
            },
            Family::Pca(precision) | Family::WeightSvd(precision) => {
                let (label, basis) = need_basis(if matches!(self, Family::Pca(_)) {
                    "pca"
                } else {
                    "wsvd"
                })?;
                Box::new(ProjectedCodec {
                    label,
                    basis,
                    rank,
                    precision,
                    centre: None,
                })
            }
            Family::TransformPca => {
                let (basis, centre) = need_centred_basis()?;
                Box::new(TransformCodec {
                    centre,
                    basis,
                    rank,
                })
            }
            Family::MaskedPca => {
                let (basis, centre) = need_centred_basis()?;
                Box::new(MaskedPcaCodec {
                    centre,
                    basis,
                    rank,
                })
            }
            Family::CentredPca(precision)
            | Family::AdaptiveSvd(precision)
            | Family::HybridSvd(precision)
            | Family::LayerNormSvd(precision) => {
                let (basis, centre) = need_centred_basis()?;
                if matches!(self, Family::CentredPca(_)) {
                    Box::new(ProjectedCodec {
                        label: "cpca",
                        basis,
                        rank,
                        precision,
                        centre: Some(centre),
                    })
                } else {
                    Box::new(AdaptiveSvdCodec {
                        centre,
                        basis,
                        rank,
                        precision,
                        hybrid: matches!(self, Family::HybridSvd(_) | Family::LayerNormSvd(_)),
                        metric: if matches!(self, Family::LayerNormSvd(_)) {
                            ErrorMetric::TokenRelative
                        } else {
                            ErrorMetric::Frobenius
                        },
                    })
                }
            }
        })
    }

    /// Exact encoded bytes at `rank` for a `tokens x features` activation.
    pub fn encoded_len(self, rank: usize, tokens: usize, features: usize) -> usize {
        match self {
            Family::Plain(precision) => PlainCodec { precision }.encoded_len(tokens, features),
            Family::Svd(precision) | Family::CentredSvd(precision) => {
                SvdCodec { rank, precision }.encoded_len(tokens, features)
            }
            Family::AdaptiveSvd(precision)
            | Family::HybridSvd(precision)
            | Family::LayerNormSvd(precision) => {
                1 + SvdCodec { rank, precision }.encoded_len(tokens, features)
            }
            Family::Pca(p) | Family::CentredPca(p) | Family::WeightSvd(p) => {
                ProjectedCodec::len_for(p, rank, tokens)
            }
            Family::TransformPca => TransformCodec::len_for(rank, tokens, features),
            Family::MaskedPca => MaskedPcaCodec::len_for(rank, tokens),
        }
    }

    /// The largest rank in `1..=max_rank` whose encoding has truncation ratio at least `rho`;
    /// for plain codecs `Some(features)` if their fixed ratio reaches `rho`. `None` if no
    /// rank gets there.
    pub fn rank_for_ratio(
        self,
        rho: f64,
        tokens: usize,
        features: usize,
        max_rank: usize,
    ) -> Option<usize> {
        let ratio = |r| truncation_ratio(self.encoded_len(r, tokens, features), tokens, features);
        match self {
            Family::Plain(_) => (ratio(features) >= rho - 1e-12).then_some(features),
            _ => (1..=max_rank).rev().find(|&r| ratio(r) >= rho - 1e-12),
        }
    }
}

impl fmt::Display for Family {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (base, p) = match *self {
            Family::Plain(p) => return f.write_str(p.name()),
            Family::Svd(p) => ("svd", p),
            Family::CentredSvd(p) => ("csvd", p),
            Family::Pca(p) => ("pca", p),
            Family::CentredPca(p) => ("cpca", p),
            Family::AdaptiveSvd(p) => ("asvd", p),
            Family::HybridSvd(p) => ("hsvd", p),
            Family::LayerNormSvd(p) => ("lsvd", p),
            Family::WeightSvd(p) => ("wsvd", p),
            Family::TransformPca => return f.write_str("tpca"),
            Family::MaskedPca => return f.write_str("mpca"),
        };
        match p {
            Precision::F32 => f.write_str(base),
            p => write!(f, "{base}-{}", p.name()),
        }
    }
}

impl FromStr for Family {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        if let Some(p) = Precision::ALL.into_iter().find(|p| p.name() == s) {
            return Ok(Family::Plain(p));
        }
        match s {
            "tpca" => return Ok(Family::TransformPca),
            "mpca" => return Ok(Family::MaskedPca),
            _ => {}
        }
        let (base, precision) = match s.split_once('-') {
            Some((b, p)) => (b, p),
            None => (s, "f32"),
        };
        let p = Precision::ALL
            .into_iter()
            .find(|p| p.name() == precision)
            .ok_or_else(|| {
                Error::Config(format!("unknown codec precision `{precision}` in `{s}`"))
            })?;
        match base {
            "svd" => Ok(Family::Svd(p)),
            "csvd" => Ok(Family::CentredSvd(p)),
            "pca" => Ok(Family::Pca(p)),
            "cpca" => Ok(Family::CentredPca(p)),
            "asvd" => Ok(Family::AdaptiveSvd(p)),
            "hsvd" => Ok(Family::HybridSvd(p)),
            "lsvd" => Ok(Family::LayerNormSvd(p)),
            "wsvd" => Ok(Family::WeightSvd(p)),
            _ => Err(Error::Config(format!(
                "unknown codec `{s}`: expected f32, f16, bf16, int8, tpca, mpca, or \
                 svd/csvd/pca/cpca/asvd/hsvd/lsvd/wsvd with an optional -f16/-bf16/-int8"
            ))),
        }
    }
}

impl From<Family> for String {
    fn from(f: Family) -> Self {
        f.to_string()
    }
}

impl TryFrom<String> for Family {
    type Error = Error;

    fn try_from(s: String) -> Result<Self> {
        s.parse()
    }
}
