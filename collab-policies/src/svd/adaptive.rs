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
//! is zero-padded), so rho is the same for every request; the length tells the rank, so a
//! decoder built at any rank decodes any rank's payload.
//!
//! With `hybrid` set (`hsvd`) a third kind of candidate joins: the projection at a smaller
//! rank `r1` followed by the per-request SVD, rank `r2`, of what it leaves (`X - M - proj`). The
//! shared basis takes the structure every request has at `n` values per rank, the request's
//! own SVD the rest at `n + d` per rank. `r2` runs over the powers of two below the SVD's rank
//! (one more SVD each), `r1` is the largest that fits the remaining bytes. The candidates at a
//! larger rank include every pair at a smaller one with an `r1` at least as large, so the error
//! stays monotone in rank.
//!
//! With `metric` [`ErrorMetric::TokenRelative`] (`lsvd`, always hybrid) every candidate's
//! SVD minimises, and the choice compares, each token's error relative to its own spread: the
//! error the next block's LayerNorm sees ([`super::metric`]). The payloads are the same.
//!
//! Layout: tag (`0` SVD, `1` projection, `2` projection then the residual's SVD), the chosen
//! payload(s), zero bytes up to `1 + svd.encoded_len(n, d)`.

use std::sync::Arc;

use collab_core::split::{Activation, ActivationCodec};
use collab_core::{Error, Result};

use super::basis::Basis;
use super::centre::{CentredSvdCodec, PositionMean};
use super::metric::{ErrorMetric, weighted_squared_error};
use super::projected::ProjectedCodec;
use super::quant::Precision;
use super::request::SvdCodec;
use super::wire::{Header, Kind};

/// The better of a centred per-request SVD and a centred projection, per request; with
/// `hybrid`, also their combinations.
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
    /// Also try a projection followed by the SVD of its residual (`hsvd`).
    pub hybrid: bool,
    /// What the SVDs minimise and the choice compares (`lsvd`: token-relative, with `hybrid`).
    pub metric: ErrorMetric,
}

/// Tag byte of each reduction.
const TAG_SVD: u8 = 0;
const TAG_PROJECTION: u8 = 1;
const TAG_HYBRID: u8 = 2;

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
        self.projection_within(self.svd().encoded_len(tokens, features), tokens)
    }

    /// The projection at the largest rank whose payload fits in `budget` bytes, if any does.
    fn projection_within(&self, budget: usize, tokens: usize) -> Option<ProjectedCodec> {
        (1..=self.basis.rank())
            .rev()
            .find(|&r| ProjectedCodec::len_for(self.precision, r, tokens) <= budget)
            .map(|r| self.projection_at(r))
    }

    /// The residual SVD ranks a hybrid tries: the powers of two below the SVD's rank.
    fn residual_ranks(&self, tokens: usize, features: usize) -> Vec<usize> {
        if !self.hybrid {
            return vec![];
        }
        let top = self.rank.min(tokens).min(features);
        std::iter::successors(Some(1usize), |r| r.checked_mul(2))
            .take_while(|&r| r < top)
            .collect()
    }

    /// The best hybrid candidate for `x` (its payload and error under `weights`), if any fits.
    fn best_hybrid(
        &self,
        x: &Activation,
        weights: Option<&[f32]>,
    ) -> Result<Option<(Vec<u8>, f64)>> {
        let budget = self.svd().encoded_len(x.tokens, x.features);
        let mut best: Option<(Vec<u8>, f64)> = None;
        for r2 in self.residual_ranks(x.tokens, x.features) {
            let svd = SvdCodec {
                rank: r2,
                precision: self.precision,
            };
            let Some(rest) = budget.checked_sub(svd.encoded_len(x.tokens, x.features)) else {
                continue;
            };
            let Some(proj) = self.projection_within(rest, x.tokens) else {
                continue;
            };
            let mut bytes = proj.encode(x)?;
            let mut rebuilt = proj.decode(&bytes)?;
            let residual = difference(x, &rebuilt)?;
            let by_svd = svd.encode_tagged(&residual, 0, &svd.name(), weights)?;
            add(&mut rebuilt, &svd.decode(&by_svd)?);
            let err = weighted_squared_error(x, &rebuilt, weights);
            bytes.extend_from_slice(&by_svd);
            if best.as_ref().is_none_or(|(_, e)| err < *e) {
                best = Some((bytes, err));
            }
        }
        Ok(best)
    }

    /// Decodes the projection payload at the start of `rest`; returns it and its length.
    fn decode_projection(&self, rest: &[u8], name: &str) -> Result<(Activation, usize)> {
        let (h, _) = Header::read(rest, name, Kind::Projected, self.precision)?;
        let len = ProjectedCodec::len_for(self.precision, h.rank, h.tokens);
        let proj = rest
            .get(..len)
            .ok_or_else(|| Error::codec(name, "payload shorter than its projection"))?;
        Ok((self.projection_at(h.rank).decode(proj)?, len))
    }

    /// Decodes a hybrid body: a projection payload, then an SVD payload of the same shape.
    fn decode_hybrid(&self, rest: &[u8], name: &str) -> Result<(Activation, usize)> {
        let (mut x, len) = self.decode_projection(rest, name)?;
        let (s, _) = Header::read(&rest[len..], name, Kind::RequestSvd, self.precision)?;
        if (s.tokens, s.features) != (x.tokens, x.features) {
            return Err(Error::codec(
                name,
                format!(
                    "residual of {} x {} after a projection of {} x {}",
                    s.tokens, s.features, x.tokens, x.features
                ),
            ));
        }
        let svd = SvdCodec {
            rank: s.rank,
            precision: self.precision,
        };
        let svd_len = svd.encoded_len(s.tokens, s.features);
        let body = rest[len..]
            .get(..svd_len)
            .ok_or_else(|| Error::codec(name, "hybrid payload shorter than its residual SVD"))?;
        add(&mut x, &svd.decode(body)?);
        Ok((x, len + svd_len))
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

/// `a - b` (same shape).
fn difference(a: &Activation, b: &Activation) -> Result<Activation> {
    let values = a.values.iter().zip(&b.values).map(|(x, y)| x - y).collect();
    Activation::new(a.tokens, a.features, values)
}

/// `a += b` (same shape).
fn add(a: &mut Activation, b: &Activation) {
    a.values
        .iter_mut()
        .zip(&b.values)
        .for_each(|(x, y)| *x += y);
}

impl ActivationCodec for AdaptiveSvdCodec {
    fn name(&self) -> String {
        let base = match (self.hybrid, self.metric) {
            (false, ErrorMetric::Frobenius) => "asvd",
            (true, ErrorMetric::Frobenius) => "hsvd",
            (false, ErrorMetric::TokenRelative) => "lasvd",
            (true, ErrorMetric::TokenRelative) => "lsvd",
        };
        match self.precision {
            Precision::F32 => format!("{base}-r{}", self.rank),
            p => format!("{base}-{}-r{}", p.name(), self.rank),
        }
    }

    fn encoded_len(&self, tokens: usize, features: usize) -> usize {
        1 + self.svd().encoded_len(tokens, features)
    }

    fn encode(&self, x: &Activation) -> Result<Vec<u8>> {
        let weights = self.metric.row_weights(x);
        let weights = weights.as_deref();
        let svd = self.svd();
        let by_svd = svd.encode_weighted(x, weights)?;
        let svd_err = weighted_squared_error(x, &svd.decode(&by_svd)?, weights);
        let mut chosen = (TAG_SVD, by_svd, svd_err);
        if let Some(proj) = self.projection(x.tokens, x.features) {
            let by_proj = proj.encode(x)?;
            let err = weighted_squared_error(x, &proj.decode(&by_proj)?, weights);
            if err < chosen.2 {
                chosen = (TAG_PROJECTION, by_proj, err);
            }
        }
        if let Some((body, err)) = self.best_hybrid(x, weights)?
            && err < chosen.2
        {
            chosen = (TAG_HYBRID, body, err);
        }
        let (tag, body, _) = chosen;
        let mut out = Vec::with_capacity(self.encoded_len(x.tokens, x.features));
        out.push(tag);
        out.extend_from_slice(&body);
        out.resize(self.encoded_len(x.tokens, x.features), 0);
        Ok(out)
    }

    fn declared_shape(&self, bytes: &[u8]) -> Result<(usize, usize)> {
        let name = self.name();
        match bytes.split_first() {
            Some((&TAG_SVD, rest)) => Header::shape(rest, &name, Kind::RequestSvd, self.precision),
            Some((&TAG_PROJECTION, rest)) => {
                Header::shape(rest, &name, Kind::Projected, self.precision)
            }
            Some((&TAG_HYBRID, rest)) if self.hybrid => {
                Header::shape(rest, &name, Kind::Projected, self.precision)
            }
            Some((t, _)) => Err(Error::codec(&name, format!("unknown reduction tag {t}"))),
            None => Err(Error::codec(&name, "empty payload")),
        }
    }

    fn decode(&self, bytes: &[u8]) -> Result<Activation> {
        let name = self.name();
        let (&tag, rest) = bytes
            .split_first()
            .ok_or_else(|| Error::codec(&name, "empty payload"))?;
        let x = match tag {
            TAG_SVD => self.svd().decode(rest)?,
            TAG_PROJECTION => {
                let (x, len) = self.decode_projection(rest, &name)?;
                zero_padding(rest, len, &name)?;
                x
            }
            TAG_HYBRID if self.hybrid => {
                let (x, len) = self.decode_hybrid(rest, &name)?;
                zero_padding(rest, len, &name)?;
                x
            }
            t => {
                return Err(Error::codec(
                    &name,
                    format!(
                        "unknown reduction tag {t} (0 svd, 1 projection{})",
                        if self.hybrid { ", 2 hybrid" } else { "" }
                    ),
                ));
            }
        };
        // The budget's rank travels as the length: any rank's payload decodes, so a server
        // decodes without knowing the device's rank.
        let (n, d) = (x.tokens, x.features);
        let some_rank = (1..=n.min(d)).any(|rank| {
            let svd = SvdCodec {
                rank,
                precision: self.precision,
            };
            1 + svd.encoded_len(n, d) == bytes.len()
        });
        if !some_rank {
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

/// Checks that `rest` holds at least `len` bytes of payload and only zeros after them.
fn zero_padding(rest: &[u8], len: usize, name: &str) -> Result<()> {
    if rest.len() < len || rest[len..].iter().any(|&b| b != 0) {
        return Err(Error::codec(
            name,
            format!(
                "payload of {len} bytes must be followed by zero padding only; got {} bytes",
                rest.len()
            ),
        ));
    }
    Ok(())
}
