//! Per-request SVD around a calibrated per-position mean (`csvd`; our addition to SPEC §1's
//! codecs, measured beside them in `cargo xtask exp svd-accuracy`).
//!
//! Early in a ViT the residual stream of every image carries the same position embedding (and
//! the same class token), a full-rank `n x d` term that a per-request truncated SVD spends its
//! rank on and a per-feature PCA mean cannot remove. Both sides hold the mean activation *per
//! token position* at the split, fitted on calibration activations ([`PositionMean::fit`]);
//! the device sends the truncated SVD factors of `X - M` and the server adds `M` back. The
//! payload is exactly [`SvdCodec`]'s, with the mean's fingerprint in the header's basis field,
//! so a server holding another mean, or none, refuses it with a typed error.
//!
//! Text items differ in length, and a request may be longer than every calibration item:
//! positions past the fitted ones are shifted by the mean over all calibrated tokens
//! ([`PositionMean::overall`]), on both sides alike, so such a request still round-trips.

use std::sync::Arc;

use collab_core::split::{Activation, ActivationCodec};
use collab_core::{Error, Result};

use super::basis::{Basis, Fnv};
use super::quant::Precision;
use super::request::SvdCodec;
use super::wire::{Header, Kind};

/// The mean activation at each token position of a split point, known to both sides.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct PositionMean {
    /// Where it came from (`block 4 (position mean of 100 items)`).
    pub origin: String,
    /// Positions fitted (the longest calibration item's tokens).
    pub tokens: usize,
    /// Feature dimension `d`.
    pub features: usize,
    /// Row-major `tokens x features` means.
    pub values: Vec<f32>,
    /// The mean over every calibrated token of every position (`features` values): what
    /// positions past `tokens` are shifted by.
    pub overall: Vec<f32>,
    /// A hash of the means, sent with every payload.
    pub fingerprint: u64,
}

impl PositionMean {
    /// The per-position mean of `items` (activations of one split point; items may differ in
    /// tokens, each position averaging the items that reach it).
    ///
    /// # Errors
    /// [`Error::InvalidInput`] for no items or items of different feature counts.
    pub fn fit(items: &[Activation], origin: &str) -> Result<Self> {
        let features = items.first().map_or(0, |a| a.features);
        if features == 0 || items.iter().any(|a| a.features != features) {
            return Err(Error::InvalidInput(format!(
                "a position mean needs activations of one feature count; got {:?}",
                items.iter().map(|a| a.features).collect::<Vec<_>>()
            )));
        }
        let tokens = items.iter().map(|a| a.tokens).max().unwrap_or(0);
        let mut sum = vec![0f64; tokens * features];
        let mut count = vec![0usize; tokens];
        for a in items {
            sum.iter_mut()
                .zip(&a.values)
                .for_each(|(s, &v)| *s += f64::from(v));
            count.iter_mut().take(a.tokens).for_each(|c| *c += 1);
        }
        let values: Vec<f32> = sum
            .iter()
            .enumerate()
            .map(|(i, s)| (s / count[i / features].max(1) as f64) as f32)
            .collect();
        let all_tokens: usize = count.iter().sum();
        let overall: Vec<f32> = (0..features)
            .map(|j| {
                let total: f64 = sum.iter().skip(j).step_by(features).sum();
                (total / all_tokens.max(1) as f64) as f32
            })
            .collect();
        let fingerprint = Self::fingerprint_of(features, &values, &overall);
        Ok(Self {
            origin: format!("{origin} (position mean of {} items)", items.len()),
            tokens,
            features,
            values,
            overall,
            fingerprint,
        })
    }

    /// The fingerprint of a mean with these values (never 0).
    fn fingerprint_of(features: usize, values: &[f32], overall: &[f32]) -> u64 {
        let mut hash = Fnv::default();
        hash.write(b"position-mean");
        hash.write(&(features as u64).to_le_bytes());
        values
            .iter()
            .chain(overall)
            .for_each(|v| hash.write(&v.to_le_bytes()));
        hash.0.max(1)
    }

    /// Checks a mean read from elsewhere (a file): `tokens x features` values and `features`
    /// overall means, all finite, and the fingerprint its values give.
    ///
    /// # Errors
    /// [`Error::InvalidInput`] naming the mean and what does not hold.
    pub fn verify(&self) -> Result<()> {
        let bad = |what: String| {
            Err(Error::InvalidInput(format!(
                "position mean `{}`: {what}",
                self.origin
            )))
        };
        if self.features == 0 || self.tokens == 0 {
            return bad(format!(
                "{} tokens of {} features",
                self.tokens, self.features
            ));
        }
        if self.values.len() != self.tokens * self.features || self.overall.len() != self.features {
            return bad(format!(
                "{} values and {} overall means for {} x {}",
                self.values.len(),
                self.overall.len(),
                self.tokens,
                self.features
            ));
        }
        if self
            .values
            .iter()
            .chain(&self.overall)
            .any(|v| !v.is_finite())
        {
            return bad("non-finite values".into());
        }
        let fingerprint = Self::fingerprint_of(self.features, &self.values, &self.overall);
        if fingerprint != self.fingerprint {
            return bad(format!(
                "fingerprint {:#x} does not match its values ({fingerprint:#x})",
                self.fingerprint
            ));
        }
        Ok(())
    }

    /// The PCA basis ([`Basis::fit_pca`]) of `items` centred on this mean: the basis of the
    /// `cpca` and `asvd` codecs.
    ///
    /// # Errors
    /// [`Error::Codec`] if an item's feature count is not the mean's; [`Basis::fit_pca`]'s
    /// errors.
    pub fn fit_centred_pca(&self, items: &[Activation], origin: &str) -> Result<Basis> {
        let mut rows = Vec::with_capacity(items.iter().map(|a| a.values.len()).sum());
        for a in items {
            let mut x = a.clone();
            self.shift(&mut x, -1.0, "position mean")?;
            rows.extend(x.values);
        }
        Basis::fit_pca(&rows, self.features, origin)
    }

    /// Adds `sign` times the mean of each of `x`'s positions to `x`: the fitted position's
    /// mean, or [`overall`](Self::overall) past the fitted positions.
    ///
    /// # Errors
    /// [`Error::Codec`] (naming `codec`) if `x` has another feature count than the mean.
    pub(super) fn shift(&self, x: &mut Activation, sign: f32, codec: &str) -> Result<()> {
        if x.features != self.features {
            return Err(Error::codec(
                codec,
                format!(
                    "activation {} x {} does not fit the position mean of {} features ({})",
                    x.tokens, x.features, self.features, self.origin
                ),
            ));
        }
        let means = self
            .values
            .chunks(self.features)
            .chain(std::iter::repeat(self.overall.as_slice()));
        x.values
            .chunks_mut(self.features)
            .zip(means)
            .for_each(|(row, mean)| row.iter_mut().zip(mean).for_each(|(v, m)| *v += sign * m));
        Ok(())
    }
}

/// Per-request truncated SVD of `X - M` (module docs), `r (n + d)` values like [`SvdCodec`].
#[derive(Clone, Debug)]
pub struct CentredSvdCodec {
    /// The shared per-position mean `M`.
    pub centre: Arc<PositionMean>,
    /// Rank kept (clamped to `min(tokens, features)` per request).
    pub rank: usize,
    /// Precision of both factors.
    pub precision: Precision,
}

impl CentredSvdCodec {
    fn svd(&self) -> SvdCodec {
        SvdCodec {
            rank: self.rank,
            precision: self.precision,
        }
    }

    /// Encodes `x`, with the SVD of `X - M` weighted per token by `row_weights` if given
    /// ([`SvdCodec`]'s row weights); the payload is the same kind either way.
    pub(super) fn encode_weighted(
        &self,
        x: &Activation,
        row_weights: Option<&[f32]>,
    ) -> Result<Vec<u8>> {
        let name = self.name();
        let mut centred = x.clone();
        self.centre.shift(&mut centred, -1.0, &name)?;
        self.svd()
            .encode_tagged(&centred, self.centre.fingerprint, &name, row_weights)
    }
}

impl ActivationCodec for CentredSvdCodec {
    fn name(&self) -> String {
        match self.precision {
            Precision::F32 => format!("csvd-r{}", self.rank),
            p => format!("csvd-{}-r{}", p.name(), self.rank),
        }
    }

    fn encoded_len(&self, tokens: usize, features: usize) -> usize {
        self.svd().encoded_len(tokens, features)
    }

    fn encode(&self, x: &Activation) -> Result<Vec<u8>> {
        self.encode_weighted(x, None)
    }

    fn declared_shape(&self, bytes: &[u8]) -> Result<(usize, usize)> {
        Header::shape(bytes, &self.name(), Kind::RequestSvd, self.precision)
    }

    fn decode(&self, bytes: &[u8]) -> Result<Activation> {
        let name = self.name();
        let mut x = self
            .svd()
            .decode_tagged(bytes, self.centre.fingerprint, &name)?;
        self.centre.shift(&mut x, 1.0, &name)?;
        Ok(x)
    }
}
