//! The calibrated bases of a model's split points, as one file both sides of a network split
//! load: what the calibrated codecs (`pca`, `csvd`, `cpca`, `asvd`, `hsvd`, `lsvd`, `tpca`,
//! `mpca`) need to encode on the device and decode on the server (SPEC §1, "a d x r basis P_r
//! known to both sides").
//!
//! For each split point `k` a [`SplitBasis`] holds the PCA basis of the calibration
//! activations entering block `k + 1`, their per-position mean, and the PCA basis of the
//! activations centred on that mean, exactly as `cargo xtask exp svd-accuracy` fits them (it
//! writes the file beside the accuracy table it measured with them). The weight basis of
//! `wsvd` is not in the file: it is not a calibration product.
//!
//! The file is [postcard](https://docs.rs/postcard) behind a format line; loading re-derives
//! every fingerprint from the values, so a damaged file is an error at start-up rather than
//! payloads that decode to garbage. Payloads carry the fingerprint, so a device and a server
//! holding different files refuse each other's requests with a typed error.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use collab_core::split::Activation;
use collab_core::{Error, Result};
use serde::{Deserialize, Serialize};

use super::basis::Basis;
use super::centre::PositionMean;
use super::family::{BasisNeed, Family, Shared};

/// The first field of a bases file; another value is refused.
pub const BASES_FORMAT: &str = "collab-split-bases/1";

/// What the calibrated codecs share at one split point.
#[derive(Clone, Debug, PartialEq)]
pub struct SplitBasis {
    /// PCA basis of the activations (with their mean): `pca`.
    pub pca: Arc<Basis>,
    /// Per-position mean: `csvd`.
    pub centre: Arc<PositionMean>,
    /// PCA basis of the activations centred on `centre`: `cpca`, `asvd`, `hsvd`, `lsvd`,
    /// `tpca`, `mpca`.
    pub centred_pca: Arc<Basis>,
}

impl SplitBasis {
    /// Fits the three on `calibration`, the activations of one split point (`origin` names
    /// it, as `block 4`).
    ///
    /// # Errors
    /// [`Basis::fit_pca`]'s and [`PositionMean::fit`]'s: too few rows, mixed feature counts.
    pub fn fit(calibration: &[Activation], origin: &str) -> Result<Self> {
        let features = calibration.first().map_or(0, |a| a.features);
        let rows: Vec<f32> = calibration
            .iter()
            .flat_map(|a| a.values.iter().copied())
            .collect();
        let pca = Basis::fit_pca(&rows, features, origin)?;
        let centre = PositionMean::fit(calibration, origin)?;
        let centred_pca = centre.fit_centred_pca(calibration, &format!("{origin} centred"))?;
        Ok(Self {
            pca: Arc::new(pca),
            centre: Arc::new(centre),
            centred_pca: Arc::new(centred_pca),
        })
    }

    /// What `family` needs of this split point; `None` for `wsvd` (not a calibration
    /// product).
    pub fn shared(&self, family: Family) -> Option<Shared> {
        Some(match family.basis_need() {
            BasisNeed::None => Shared::None,
            BasisNeed::Calibrated => Shared::Basis(self.pca.clone()),
            BasisNeed::PositionMean => Shared::PositionMean(self.centre.clone()),
            BasisNeed::CentredCalibrated => {
                Shared::CentredBasis(self.centred_pca.clone(), self.centre.clone())
            }
            BasisNeed::Weight => return None,
        })
    }

    fn features(&self) -> usize {
        self.centre.features
    }

    fn verify(&self, split: usize) -> Result<()> {
        self.pca.verify()?;
        self.centre.verify()?;
        self.centred_pca.verify()?;
        let features = [self.pca.features, self.centred_pca.features];
        if features.iter().any(|&f| f != self.features()) {
            return Err(Error::InvalidInput(format!(
                "split {split}: bases of {features:?} features beside a mean of {}",
                self.features()
            )));
        }
        Ok(())
    }
}

/// The [`SplitBasis`] of each calibrated split point of one model.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct SplitBases {
    model: String,
    splits: BTreeMap<usize, SplitBasis>,
}

/// The file's layout (plain values; the in-memory form shares them behind `Arc`s).
#[derive(Serialize, Deserialize)]
struct BasesFile {
    format: String,
    model: String,
    splits: Vec<(u32, Basis, PositionMean, Basis)>,
}

impl SplitBases {
    /// No split points yet, for `model` (a name for people: the table's model name).
    pub fn new(model: impl Into<String>) -> Self {
        Self {
            model: model.into(),
            splits: BTreeMap::new(),
        }
    }

    /// The model the bases were fitted on.
    pub fn model(&self) -> &str {
        &self.model
    }

    /// The split points held, ascending.
    pub fn splits(&self) -> impl Iterator<Item = usize> + '_ {
        self.splits.keys().copied()
    }

    /// The features of every basis (`None` while empty).
    pub fn features(&self) -> Option<usize> {
        self.splits.values().next().map(SplitBasis::features)
    }

    /// Adds (or replaces) split point `split`'s bases.
    ///
    /// # Errors
    /// [`Error::InvalidInput`] for split 0 (nothing is sent there but the image) or bases of
    /// another feature count than those already held.
    pub fn insert(&mut self, split: usize, basis: SplitBasis) -> Result<()> {
        if split == 0 {
            return Err(Error::InvalidInput(
                "split 0 sends the image; it has no activation bases".into(),
            ));
        }
        if let Some(f) = self.features().filter(|&f| f != basis.features()) {
            return Err(Error::InvalidInput(format!(
                "split {split}: bases of {} features beside bases of {f}",
                basis.features()
            )));
        }
        self.splits.insert(split, basis);
        Ok(())
    }

    /// Split point `split`'s bases, if held.
    pub fn get(&self, split: usize) -> Option<&SplitBasis> {
        self.splits.get(&split)
    }

    /// What `family` needs at `split`: [`Shared::None`] for the families that need nothing,
    /// `None` when the bases it needs are not held (no entry for `split`, or `wsvd`).
    pub fn shared(&self, split: usize, family: Family) -> Option<Shared> {
        match family.basis_need() {
            BasisNeed::None => Some(Shared::None),
            _ => self.get(split)?.shared(family),
        }
    }

    /// [`shared`](Self::shared) when bases are held; with none, only the families that need
    /// nothing get [`Shared::None`].
    pub fn lookup(bases: Option<&Self>, split: usize, family: Family) -> Option<Shared> {
        match bases {
            Some(b) => b.shared(split, family),
            None => (family.basis_need() == BasisNeed::None).then_some(Shared::None),
        }
    }

    /// The file's bytes.
    ///
    /// # Errors
    /// [`Error::InvalidInput`] if the encoding fails (it does not for these types).
    pub fn to_bytes(&self) -> Result<Vec<u8>> {
        let file = BasesFile {
            format: BASES_FORMAT.into(),
            model: self.model.clone(),
            splits: self
                .splits
                .iter()
                .map(|(&k, b)| {
                    let k = u32::try_from(k).map_err(|_| {
                        Error::InvalidInput(format!("split {k} does not fit the file"))
                    })?;
                    Ok((
                        k,
                        Basis::clone(&b.pca),
                        PositionMean::clone(&b.centre),
                        Basis::clone(&b.centred_pca),
                    ))
                })
                .collect::<Result<_>>()?,
        };
        postcard::to_stdvec(&file)
            .map_err(|e| Error::InvalidInput(format!("encoding split bases: {e}")))
    }

    /// Reads bases from a file's bytes, checking each one ([`Basis::verify`],
    /// [`PositionMean::verify`]).
    ///
    /// # Errors
    /// [`Error::InvalidInput`] naming what is wrong: bytes that are not a bases file, another
    /// format, a basis whose values do not give its fingerprint, split 0, mixed feature
    /// counts, a split point listed twice.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self> {
        let file: BasesFile = postcard::from_bytes(bytes)
            .map_err(|e| Error::InvalidInput(format!("not a split-bases file: {e}")))?;
        if file.format != BASES_FORMAT {
            return Err(Error::InvalidInput(format!(
                "split-bases format `{}`, this build reads `{BASES_FORMAT}`",
                file.format
            )));
        }
        let mut bases = Self::new(file.model);
        for (k, pca, centre, centred_pca) in file.splits {
            let split = k as usize;
            if bases.get(split).is_some() {
                return Err(Error::InvalidInput(format!("split {split} listed twice")));
            }
            let basis = SplitBasis {
                pca: Arc::new(pca),
                centre: Arc::new(centre),
                centred_pca: Arc::new(centred_pca),
            };
            basis.verify(split)?;
            bases.insert(split, basis)?;
        }
        Ok(bases)
    }

    /// Writes the file at `path`.
    ///
    /// # Errors
    /// [`Error::Io`] if it cannot be written.
    pub fn save(&self, path: &Path) -> Result<()> {
        std::fs::write(path, self.to_bytes()?).map_err(|e| Error::io(path, e))?;
        Ok(())
    }

    /// Reads the file at `path` ([`from_bytes`](Self::from_bytes)).
    ///
    /// # Errors
    /// [`Error::Io`] if it cannot be read; [`from_bytes`](Self::from_bytes)'s errors, with
    /// the path named.
    pub fn load(path: &Path) -> Result<Self> {
        let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
        Self::from_bytes(&bytes)
            .map_err(|e| Error::InvalidInput(format!("split bases {}: {e}", path.display())))
    }
}
