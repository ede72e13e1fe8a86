//! Per request, the better of two rank reductions at one byte budget (`asvd`; our addition to
//! SPEC §1's codecs, measured beside them in `cargo xtask exp svd-accuracy`).
//!
//! Both reductions work on `X - M`, `M` the calibrated per-position mean
//! ([`PositionMean`]): the per-request truncated SVD ([`CentredSvdCodec`], rank `r`) and the
//! projection on a PCA basis fitted on centred calibration activations (`cpca`, the largest
//! rank whose payload fits in the SVD's bytes). Early in a ViT the shared basis reconstructs
//! better at that budget, later the per-request one (the residual stream of one image becomes
//! low-rank); the device computes both, keeps the one with the smaller Frobenius error and
//! says which in a leading tag byte. The payload always has the same length (the shorter one
//! is zero-padded), so rho is the same for every request.
//!
//! Layout: tag (`0` SVD, `1` projection), the chosen codec's payload, zero bytes up to
//! `1 + svd.encoded_len(n, d)`.

use std::sync::Arc;

use collab_core::split::{Activation, ActivationCodec};
use collab_core::{Error, Result};

use super::basis::Basis;
use super::centre::{CentredSvdCodec, PositionMean};
use super::projected::ProjectedCodec;
use super::quant::Precision;
use super::wire::{Header, Kind};

/// The better of a centred per-request SVD and a centred projection, per request.
#[derive(Clone, Debug)]
pub struct AdaptiveSvdCodec {
    /// The per-position mean both reductions work around.
    pub centre: Arc<PositionMean>,
    /// The PCA basis of centred calibration activations.
    pub basis: Arc<Basis>,
    /// Rank of the per-request SVD; it sets the byte budget.
    pub rank: usize,
    /// Precision of both codecs' values.
    pub precision: Precision,
}

impl AdaptiveSvdCodec {
    fn svd(&self) -> CentredSvdCodec {
        CentredSvdCodec {
            centre: self.centre.clone(),
            rank: self.rank,
            precision: self.precision,
        }
    }

    /// The projection at the largest rank whose payload fits in the SVD's bytes, if any does.
    fn projection(&self, tokens: usize, features: usize) -> Option<ProjectedCodec> {
        let budget = self.svd().encoded_len(tokens, features);
        (1..=self.basis.rank())
            .rev()
            .find(|&r| ProjectedCodec::len_for(self.precision, r, tokens) <= budget)
            .map(|r| self.projection_at(r))
    }

    fn projection_at(&self, rank: usize) -> ProjectedCodec {
        ProjectedCodec {
            label: "cpca",
            basis: self.basis.clone(),
            rank,
            precision: self.precision,
            centre: Some(self.centre.clone()),
        }
    }
}

fn squared_error(a: &Activation, b: &Activation) -> f64 {
    a.values
        .iter()
        .zip(&b.values)
        .map(|(x, y)| f64::from(x - y).powi(2))
        .sum()
}

impl ActivationCodec for AdaptiveSvdCodec {
    fn name(&self) -> String {
        match self.precision {
            Precision::F32 => format!("asvd-r{}", self.rank),
            p => format!("asvd-{}-r{}", p.name(), self.rank),
        }
    }

    fn encoded_len(&self, tokens: usize, features: usize) -> usize {
        1 + self.svd().encoded_len(tokens, features)
    }

    fn encode(&self, x: &Activation) -> Result<Vec<u8>> {
        let svd = self.svd();
        let by_svd = svd.encode(x)?;
        let svd_err = squared_error(x, &svd.decode(&by_svd)?);
        let mut chosen = (0u8, by_svd);
        if let Some(proj) = self.projection(x.tokens, x.features) {
            let by_proj = proj.encode(x)?;
            if squared_error(x, &proj.decode(&by_proj)?) < svd_err {
                chosen = (1, by_proj);
            }
        }
        let (tag, body) = chosen;
        let mut out = Vec::with_capacity(self.encoded_len(x.tokens, x.features));
        out.push(tag);
        out.extend_from_slice(&body);
        out.resize(self.encoded_len(x.tokens, x.features), 0);
        Ok(out)
    }

    fn decode(&self, bytes: &[u8]) -> Result<Activation> {
        let name = self.name();
        let (&tag, rest) = bytes
            .split_first()
            .ok_or_else(|| Error::codec(&name, "empty payload"))?;
        let x = match tag {
            0 => self.svd().decode(rest)?,
            1 => {
                let (h, _) = Header::read(rest, &name, Kind::Projected, self.precision)?;
                let len = ProjectedCodec::len_for(self.precision, h.rank, h.tokens);
                if rest.len() < len || rest[len..].iter().any(|&b| b != 0) {
                    return Err(Error::codec(
                        &name,
                        format!(
                            "projection of {len} bytes must be followed by zero padding only; \
                             got {} bytes",
                            rest.len()
                        ),
                    ));
                }
                self.projection_at(h.rank).decode(&rest[..len])?
            }
            t => {
                return Err(Error::codec(
                    &name,
                    format!("unknown reduction tag {t} (0 svd, 1 projection)"),
                ));
            }
        };
        if bytes.len() != self.encoded_len(x.tokens, x.features) {
            return Err(Error::codec(
                &name,
                format!(
                    "{} bytes for a {} x {} activation, expected {}",
                    bytes.len(),
                    x.tokens,
                    x.features,
                    self.encoded_len(x.tokens, x.features)
                ),
            ));
        }
        Ok(x)
    }
}
