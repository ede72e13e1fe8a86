//! Selective feature distillation (SPEC §6): which public data a cloud distils a device's
//! student on, chosen from what the device uploads, never its raw data or labels.
//!
//! The setting: a cloud teacher (one encoder per modality and a fusion head) trained on public
//! data; a small student the device runs; each device holds private samples of its own slice
//! of the label space. To personalise its student:
//! 1. the device runs its student on its private samples and turns the features into
//!    class-probability vectors with the teacher's fusion head (which the cloud shares; it
//!    sees modality-fused features, so nothing here assumes one modality);
//! 2. it uploads what its [`Distiller`] says ([`Distiller::upload`]): nothing, a count, the
//!    per-sample vectors, or k-means prototypes of them;
//! 3. the cloud selects public samples to distil on ([`Distiller::select`]) by comparing the
//!    upload with the teacher's probability vectors of the public samples, distils the student
//!    on them (feature MSE) and sends it back.
//!
//! The device's private data, its labels and its per-sample vectors (for prototype uploads)
//! stay on the device: [`Distiller::select`] sees only the [`Upload`], and
//! [`Upload::check`] states what an upload may hold.

use std::fmt::Debug;

use serde::{Deserialize, Serialize};

use crate::{Error, Result};

/// What one vector of an upload stands for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum UploadKind {
    /// Nothing about the samples (distil on all public data).
    Nothing,
    /// Only how many private samples there are (no vectors).
    Count,
    /// One class-probability vector per private sample.
    PerSample,
    /// Means of groups of private samples' vectors, each of at least `group_size` samples.
    Prototypes {
        /// The fewest samples behind any one prototype.
        group_size: usize,
    },
}

/// What a device uploads to have its student personalised (SPEC §6): never raw data, never
/// labels.
///
/// Invariants ([`check`](Self::check)): `members` has one entry per vector (or exactly one,
/// the sample count, for [`UploadKind::Count`], with no vectors); every vector has `classes`
/// finite values; per-sample vectors stand for one sample each; prototypes for at least
/// `group_size` each; [`UploadKind::Nothing`] holds nothing.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Upload {
    /// What the vectors are.
    pub kind: UploadKind,
    /// Classes per vector.
    pub classes: usize,
    /// The vectors, each of `classes` values.
    pub vectors: Vec<Vec<f32>>,
    /// Private samples behind each vector (for `Count`: one entry, the number of samples).
    pub members: Vec<usize>,
}

impl Upload {
    /// An upload of nothing.
    pub fn nothing(classes: usize) -> Self {
        Self {
            kind: UploadKind::Nothing,
            classes,
            vectors: vec![],
            members: vec![],
        }
    }

    /// Private samples the upload stands for.
    pub fn samples(&self) -> usize {
        // Counts come off the network: saturate rather than overflow.
        self.members
            .iter()
            .fold(0usize, |a, &m| a.saturating_add(m))
    }

    /// Bytes of the upload on the wire as `f32` vectors and `u32` counts (what the paper's
    /// upload comparison counts).
    pub fn bytes(&self) -> usize {
        self.vectors
            .len()
            .saturating_mul(self.classes)
            .saturating_add(self.members.len())
            .saturating_mul(4)
    }

    /// Checks the invariants above.
    ///
    /// # Errors
    /// [`Error::InvalidInput`] naming the first broken one.
    pub fn check(&self) -> Result<()> {
        let bad = |m: String| Err(Error::InvalidInput(format!("upload: {m}")));
        match self.kind {
            UploadKind::Nothing if !self.vectors.is_empty() || !self.members.is_empty() => {
                return bad("an upload of nothing holds vectors or counts".into());
            }
            UploadKind::Count if !self.vectors.is_empty() || self.members.len() != 1 => {
                return bad("a count upload holds exactly one count and no vectors".into());
            }
            UploadKind::PerSample | UploadKind::Prototypes { .. }
                if self.members.len() != self.vectors.len() =>
            {
                return bad(format!(
                    "{} vectors but {} member counts",
                    self.vectors.len(),
                    self.members.len()
                ));
            }
            _ => {}
        }
        if let Some((i, v)) = self
            .vectors
            .iter()
            .enumerate()
            .find(|(_, v)| v.len() != self.classes || v.iter().any(|x| !x.is_finite()))
        {
            return bad(format!(
                "vector {i} has {} values (want {} finite ones)",
                v.len(),
                self.classes
            ));
        }
        match self.kind {
            UploadKind::PerSample if self.members.iter().any(|&m| m != 1) => {
                bad("a per-sample vector stands for exactly one sample".into())
            }
            UploadKind::Prototypes { group_size: 0 } => bad("a prototype group size of 0".into()),
            UploadKind::Prototypes { group_size } => {
                match self.members.iter().position(|&m| m < group_size) {
                    Some(i) => bad(format!(
                        "prototype {i} stands for {} samples, fewer than the group size {group_size}",
                        self.members[i]
                    )),
                    None => Ok(()),
                }
            }
            _ => Ok(()),
        }
    }
}

/// Chooses what a device uploads and which public samples the cloud distils its student on
/// (SPEC §6: AllDistill, random, probability-similarity and prototype selection).
///
/// # Contract
/// - [`upload`](Self::upload) returns an upload that passes [`Upload::check`], built only from
///   `private`; it is deterministic for a seed;
/// - [`select`](Self::select) sees only the upload and the public samples' vectors; it returns
///   distinct indices into `public`, at most `public.len()` of them, deterministic for a seed;
/// - neither panics on hostile input (empty sets, vectors of other lengths, NaN): they answer
///   [`Error::InvalidInput`] or a valid result.
///
/// `collab_policies::distill::conformance` checks all of this on a user's distiller.
///
/// ```
/// use collab_core::distill::{Distiller, Upload};
///
/// /// Distils on the first `n` public samples, whatever the device holds.
/// #[derive(Debug)]
/// struct FirstN(usize);
///
/// impl Distiller for FirstN {
///     fn name(&self) -> String { format!("first-{}", self.0) }
///     fn upload(&self, private: &[Vec<f32>], _seed: u64) -> collab_core::Result<Upload> {
///         Ok(Upload::nothing(private.first().map_or(0, Vec::len)))
///     }
///     fn select(&self, _: &Upload, public: &[Vec<f32>], _seed: u64)
///         -> collab_core::Result<Vec<usize>> {
///         Ok((0..self.0.min(public.len())).collect())
///     }
/// }
///
/// let d = FirstN(2);
/// let up = d.upload(&[vec![0.9, 0.1]], 0)?;
/// assert_eq!(up.bytes(), 0);
/// assert_eq!(d.select(&up, &vec![vec![1.0, 0.0]; 5], 0)?, vec![0, 1]);
/// # Ok::<(), collab_core::Error>(())
/// ```
pub trait Distiller: Debug + Send + Sync {
    /// A short name for reports (e.g. `"select(n=10)"`, `"cluster(n=10,g=3)"`).
    fn name(&self) -> String;

    /// Device side: what to upload, from the class-probability vectors of the device's
    /// private samples (the teacher's fusion head on the student's features).
    ///
    /// # Errors
    /// [`Error::InvalidInput`] for vectors it cannot summarise (unequal lengths, NaN, too few
    /// samples to hide each in a group).
    fn upload(&self, private: &[Vec<f32>], seed: u64) -> Result<Upload>;

    /// Cloud side: the public samples to distil on, as distinct indices into `public` (the
    /// teacher's class-probability vector of each public sample).
    ///
    /// # Errors
    /// [`Error::InvalidInput`] for an upload of another kind than this distiller makes, or
    /// vectors of other lengths than `public`'s.
    fn select(&self, upload: &Upload, public: &[Vec<f32>], seed: u64) -> Result<Vec<usize>>;
}

/// The cloud's side of personalisation over the network (SPEC §6): from a device's
/// [`Upload`], a student distilled for it, as the bytes of a safetensors checkpoint that the
/// device loads with `Transformer::from_safetensors_bytes` and serves locally.
///
/// # Contract
/// - sees only the upload (already [`Upload::check`]ed by the server): no raw data, no labels;
/// - answers an upload of a kind it does not take with [`Error::InvalidInput`];
/// - may take long (it trains); the server runs it off its async threads, a bounded number at
///   a time, and answers every request with its result or a typed error.
///
/// `collab_policies::distill::SelectiveDistillation` is the built-in one. A user's own, here
/// one that answers every prototype upload with the same student (no training):
///
/// ```
/// use collab_backends::candle::CandleBackend;
/// use collab_core::distill::{Personaliser, Upload, UploadKind};
/// use collab_core::model::weights::SeededRandom;
/// use collab_core::model::{EncoderConfig, ModelConfig, NormPlacement, Transformer, VitConfig};
/// use collab_core::{Error, Result};
///
/// #[derive(Debug)]
/// struct Fixed(Vec<u8>);
///
/// impl Personaliser for Fixed {
///     fn name(&self) -> String { "fixed".into() }
///     fn personalise(&self, upload: &Upload) -> Result<Vec<u8>> {
///         match upload.kind {
///             UploadKind::Prototypes { .. } => Ok(self.0.clone()),
///             _ => Err(Error::InvalidInput("this service takes prototypes".into())),
///         }
///     }
/// }
///
/// let config = ModelConfig::Vit(VitConfig {
///     encoder: EncoderConfig { hidden: 8, layers: 1, heads: 2, intermediate: 16,
///                              layer_norm_eps: 1e-6, norm: NormPlacement::Pre },
///     image_size: 16, patch_size: 8, channels: 3, num_classes: 4,
/// });
/// let student = Transformer::new(CandleBackend::cpu(), config.clone(), &SeededRandom::new(1))?;
/// let service = Fixed(student.to_safetensors_bytes()?);
/// let upload = Upload {
///     kind: UploadKind::Prototypes { group_size: 3 },
///     classes: 2,
///     vectors: vec![vec![0.9, 0.1]],
///     members: vec![3],
/// };
/// upload.check()?;
/// let bytes = service.personalise(&upload)?;
/// let on_device = Transformer::from_safetensors_bytes(CandleBackend::cpu(), config, bytes)?;
/// assert_eq!(on_device.num_blocks(), 1);
/// assert!(service.personalise(&Upload::nothing(2)).is_err());
/// # Ok::<(), collab_core::Error>(())
/// ```
pub trait Personaliser: Debug + Send + Sync {
    /// A short name for logs (e.g. the distiller's).
    fn name(&self) -> String;

    /// The personalised student's checkpoint for the device that sent `upload`.
    ///
    /// # Errors
    /// [`Error::InvalidInput`] for an upload it cannot use; training errors.
    fn personalise(&self, upload: &Upload) -> Result<Vec<u8>>;
}
