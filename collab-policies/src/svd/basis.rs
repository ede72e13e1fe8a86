//! Bases known to both sides of a split, for the projected codecs:
//! - [`Basis::fit_pca`]: the calibrated basis of SPEC §1, principal components of activations
//!   collected at the split on a calibration set (centred; the mean is part of the basis);
//! - [`Basis::from_weight`]: the right singular vectors of the linear layer that reads the
//!   activation next (`W ~= A_r B_r`, the paper's "weight factorisation"), so the device sends
//!   `X B_r^T`-like coefficients. The residual stream itself crosses the network, so this
//!   basis is judged on the same wire as the others.

use collab_core::{Error, Result};
use faer::{Mat, MatRef, Side};
use serde::{Deserialize, Serialize};

/// An orthonormal basis of the feature space, components sorted by decreasing energy.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Basis {
    /// Where it came from (`pca block 4 n=19700`, `qkv weight of block 4`).
    pub origin: String,
    /// Feature dimension `d`.
    pub features: usize,
    /// Components, component-major: component `j` is `components[j*d..(j+1)*d]`.
    pub components: Vec<f32>,
    /// Mean subtracted before projecting (PCA), or `None`.
    pub mean: Option<Vec<f32>>,
    /// Energy of each component (eigenvalue or singular value), decreasing.
    pub spectrum: Vec<f64>,
    /// A hash of the basis, sent with every payload so a mismatched basis is caught.
    pub fingerprint: u64,
}

impl Basis {
    /// Number of components.
    pub fn rank(&self) -> usize {
        self.spectrum.len()
    }

    /// Principal components of `samples` (`rows x features`, row-major), centred.
    ///
    /// # Errors
    /// [`Error::InvalidInput`] for fewer than two rows or a size mismatch;
    /// [`Error::Codec`] if the eigendecomposition fails.
    pub fn fit_pca(samples: &[f32], features: usize, origin: &str) -> Result<Self> {
        let rows = samples.len().checked_div(features).unwrap_or(0);
        if rows < 2 || rows * features != samples.len() {
            return Err(Error::InvalidInput(format!(
                "PCA needs at least 2 rows of {features} features, got {} values",
                samples.len()
            )));
        }
        let x = MatRef::from_row_major_slice(samples, rows, features);
        let mut mean = vec![0f64; features];
        for i in 0..rows {
            for (j, m) in mean.iter_mut().enumerate() {
                *m += f64::from(x[(i, j)]);
            }
        }
        mean.iter_mut().for_each(|m| *m /= rows as f64);
        let centred = Mat::<f64>::from_fn(rows, features, |i, j| f64::from(x[(i, j)]) - mean[j]);
        let cov = centred.transpose() * &centred;
        let eig = cov
            .self_adjoint_eigen(Side::Lower)
            .map_err(|e| Error::codec("pca", format!("eigendecomposition failed: {e:?}")))?;
        let (u, s) = (eig.U(), eig.S().column_vector());
        // faer sorts eigenvalues in nondecreasing order: take them from the top.
        let order: Vec<usize> = (0..features).rev().collect();
        let components = order
            .iter()
            .flat_map(|&j| (0..features).map(move |i| u[(i, j)] as f32))
            .collect();
        let spectrum = order
            .iter()
            .map(|&j| (s[j] / rows as f64).max(0.0))
            .collect();
        Ok(Self::finish(
            format!("{origin} (pca of {rows} rows)"),
            features,
            components,
            Some(mean.iter().map(|&m| m as f32).collect()),
            spectrum,
        ))
    }

    /// The right singular vectors of a linear layer's weight `[out, in]` (row-major): the
    /// input directions the layer amplifies most.
    ///
    /// # Errors
    /// [`Error::InvalidInput`] for a size mismatch; [`Error::Codec`] if the SVD fails.
    pub fn from_weight(weight: &[f32], out: usize, features: usize, origin: &str) -> Result<Self> {
        if out == 0 || features == 0 || weight.len() != out * features {
            return Err(Error::InvalidInput(format!(
                "weight of [{out}, {features}] needs {} values, got {}",
                out * features,
                weight.len()
            )));
        }
        let w = Mat::<f64>::from_fn(out, features, |i, j| f64::from(weight[i * features + j]));
        let svd = w
            .thin_svd()
            .map_err(|e| Error::codec("weight-svd", format!("SVD failed: {e:?}")))?;
        let (v, s) = (svd.V(), svd.S().column_vector());
        let rank = out.min(features);
        let components = (0..rank)
            .flat_map(|j| (0..features).map(move |i| v[(i, j)] as f32))
            .collect();
        let spectrum = (0..rank).map(|j| s[j]).collect();
        Ok(Self::finish(
            format!("{origin} (weight svd)"),
            features,
            components,
            None,
            spectrum,
        ))
    }

    fn finish(
        origin: String,
        features: usize,
        components: Vec<f32>,
        mean: Option<Vec<f32>>,
        spectrum: Vec<f64>,
    ) -> Self {
        let fingerprint = Self::fingerprint_of(features, &components, mean.as_deref());
        Self {
            origin,
            features,
            components,
            mean,
            spectrum,
            fingerprint,
        }
    }

    /// The fingerprint of a basis with these values (never 0).
    fn fingerprint_of(features: usize, components: &[f32], mean: Option<&[f32]>) -> u64 {
        let mut hash = Fnv::default();
        hash.write(&(features as u64).to_le_bytes());
        components
            .iter()
            .chain(mean.into_iter().flatten())
            .for_each(|v| hash.write(&v.to_le_bytes()));
        hash.0.max(1)
    }

    /// Checks a basis read from elsewhere (a file): its sizes agree (`rank x features`
    /// components, a mean of `features` values if any), every value is finite, and the
    /// fingerprint is the one its values give.
    ///
    /// # Errors
    /// [`Error::InvalidInput`] naming the basis and what does not hold.
    pub fn verify(&self) -> Result<()> {
        let bad = |what: String| {
            Err(Error::InvalidInput(format!(
                "basis `{}`: {what}",
                self.origin
            )))
        };
        let rank = self.rank();
        if self.features == 0 || rank == 0 || rank > self.features {
            return bad(format!("{rank} components of {} features", self.features));
        }
        if self.components.len() != rank * self.features {
            return bad(format!(
                "{} component values, {rank} x {} expected",
                self.components.len(),
                self.features
            ));
        }
        if self.mean.as_ref().is_some_and(|m| m.len() != self.features) {
            return bad(format!("a mean of other than {} values", self.features));
        }
        let values = self.components.iter().chain(self.mean.iter().flatten());
        if values.into_iter().any(|v| !v.is_finite()) {
            return bad("non-finite values".into());
        }
        let fingerprint =
            Self::fingerprint_of(self.features, &self.components, self.mean.as_deref());
        if fingerprint != self.fingerprint {
            return bad(format!(
                "fingerprint {:#x} does not match its values ({fingerprint:#x})",
                self.fingerprint
            ));
        }
        Ok(())
    }

    /// Checks that an activation of `features` columns lives in this basis's space.
    ///
    /// # Errors
    /// [`Error::Codec`] (attributed to `codec`) naming both sizes if they differ.
    pub(crate) fn check_features(&self, features: usize, codec: &str) -> Result<()> {
        if features == self.features {
            Ok(())
        } else {
            Err(Error::codec(
                codec,
                format!(
                    "basis `{}` has {} features, the activation {features}",
                    self.origin, self.features
                ),
            ))
        }
    }

    /// Component-major view of the first `rank` components (`rank x features`).
    pub(crate) fn leading(&self, rank: usize) -> MatRef<'_, f32> {
        MatRef::from_row_major_slice(
            &self.components[..rank * self.features],
            rank,
            self.features,
        )
    }
}

/// FNV-1a, 64 bits: a stable fingerprint that needs no extra dependency.
pub(super) struct Fnv(pub(super) u64);

impl Default for Fnv {
    fn default() -> Self {
        Self(0xcbf2_9ce4_8422_2325)
    }
}

impl Fnv {
    pub(super) fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 ^= u64::from(b);
            self.0 = self.0.wrapping_mul(0x0100_0000_01b3);
        }
    }
}
