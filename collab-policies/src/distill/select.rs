//! The built-in distillers (SPEC §6): AllDistill and the three selections the paper compares.

use collab_core::distill::{Distiller, Upload, UploadKind};
use collab_core::stats::cosine;
use collab_core::{Error, Result};
use rand::SeedableRng;
use rand::rngs::StdRng;
use serde::{Deserialize, Serialize};

use super::kmeans::grouped_kmeans;

/// The common length of `vectors` (0 when empty).
///
/// # Errors
/// [`Error::InvalidInput`] naming `what` when lengths differ or a value is not finite.
fn width(vectors: &[Vec<f32>], what: &str) -> Result<usize> {
    let w = vectors.first().map_or(0, Vec::len);
    match vectors
        .iter()
        .position(|v| v.len() != w || v.iter().any(|x| !x.is_finite()))
    {
        Some(i) => Err(Error::InvalidInput(format!(
            "{what} vector {i} has {} values (want {w} finite ones)",
            vectors[i].len()
        ))),
        None => Ok(w),
    }
}

/// Refuses an upload of another kind than `want`, or one that breaks its invariants, or one
/// whose vectors do not match the public vectors' length.
fn expect_kind(upload: &Upload, want: &str, ok: bool, public: &[Vec<f32>]) -> Result<()> {
    if !ok {
        return Err(Error::InvalidInput(format!(
            "this distiller takes {want}, got an upload of {:?}",
            upload.kind
        )));
    }
    upload.check()?;
    let w = width(public, "public")?;
    if !upload.vectors.is_empty() && !public.is_empty() && upload.classes != w {
        return Err(Error::InvalidInput(format!(
            "upload vectors of {} classes against public vectors of {w}",
            upload.classes
        )));
    }
    Ok(())
}

/// For each `(vector, count)` in turn, the `count` public samples most cosine-similar to the
/// vector among those not yet chosen (ties: the lower index). Stops when every public sample
/// is chosen.
fn most_similar(queries: &[(&[f32], usize)], public: &[Vec<f32>]) -> Vec<usize> {
    let mut taken = vec![false; public.len()];
    let mut out = Vec::new();
    for &(q, count) in queries {
        if out.len() == public.len() {
            break;
        }
        let mut scored: Vec<(f64, usize)> = public
            .iter()
            .enumerate()
            .filter(|(i, _)| !taken[*i])
            .map(|(i, p)| (cosine(q, p), i))
            .collect();
        scored.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
        for &(_, i) in scored.iter().take(count) {
            taken[i] = true;
            out.push(i);
        }
    }
    out
}

/// AllDistill: the device uploads nothing; the student is distilled on every public sample.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AllDistill;

impl Distiller for AllDistill {
    fn name(&self) -> String {
        "all".into()
    }

    fn upload(&self, private: &[Vec<f32>], _seed: u64) -> Result<Upload> {
        Ok(Upload::nothing(width(private, "private")?))
    }

    fn select(&self, upload: &Upload, public: &[Vec<f32>], _seed: u64) -> Result<Vec<usize>> {
        expect_kind(
            upload,
            "nothing",
            upload.kind == UploadKind::Nothing,
            public,
        )?;
        Ok((0..public.len()).collect())
    }
}

/// Random selection: the device uploads its sample count; the cloud picks `per_sample` x that
/// many distinct public samples at random (seeded).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RandomSelection {
    /// Public samples per private sample (the paper's `n`).
    pub per_sample: usize,
}

impl Distiller for RandomSelection {
    fn name(&self) -> String {
        format!("random(n={})", self.per_sample)
    }

    fn upload(&self, private: &[Vec<f32>], _seed: u64) -> Result<Upload> {
        Ok(Upload {
            kind: UploadKind::Count,
            classes: width(private, "private")?,
            vectors: vec![],
            members: vec![private.len()],
        })
    }

    fn select(&self, upload: &Upload, public: &[Vec<f32>], seed: u64) -> Result<Vec<usize>> {
        expect_kind(upload, "a count", upload.kind == UploadKind::Count, public)?;
        let want = upload
            .samples()
            .saturating_mul(self.per_sample)
            .min(public.len());
        let mut rng = StdRng::seed_from_u64(seed);
        Ok(rand::seq::index::sample(&mut rng, public.len(), want).into_vec())
    }
}

/// Probability-similarity selection: the device uploads one class-probability vector per
/// private sample; for each in turn the cloud picks the `per_sample` most cosine-similar public
/// samples not yet chosen.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SimilaritySelection {
    /// Public samples per private sample (the paper's `n`).
    pub per_sample: usize,
}

impl Distiller for SimilaritySelection {
    fn name(&self) -> String {
        format!("select(n={})", self.per_sample)
    }

    fn upload(&self, private: &[Vec<f32>], _seed: u64) -> Result<Upload> {
        Ok(Upload {
            kind: UploadKind::PerSample,
            classes: width(private, "private")?,
            vectors: private.to_vec(),
            members: vec![1; private.len()],
        })
    }

    fn select(&self, upload: &Upload, public: &[Vec<f32>], _seed: u64) -> Result<Vec<usize>> {
        expect_kind(
            upload,
            "per-sample vectors",
            upload.kind == UploadKind::PerSample,
            public,
        )?;
        let queries: Vec<(&[f32], usize)> = upload
            .vectors
            .iter()
            .map(|v| (v.as_slice(), self.per_sample))
            .collect();
        Ok(most_similar(&queries, public))
    }
}

/// Prototype selection: the device uploads k-means prototypes of its vectors, each the mean of
/// at least `group_size` samples ([`grouped_kmeans`]); for each prototype in turn the cloud
/// picks `per_sample` x its members most cosine-similar public samples not yet chosen.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PrototypeSelection {
    /// Public samples per private sample (the paper's `n`).
    pub per_sample: usize,
    /// The fewest private samples behind a prototype (the paper: about 3).
    pub group_size: usize,
}

impl Distiller for PrototypeSelection {
    fn name(&self) -> String {
        format!("cluster(n={},g={})", self.per_sample, self.group_size)
    }

    fn upload(&self, private: &[Vec<f32>], seed: u64) -> Result<Upload> {
        let classes = width(private, "private")?;
        let groups = grouped_kmeans(private, self.group_size, seed)?;
        Ok(Upload {
            kind: UploadKind::Prototypes {
                group_size: self.group_size,
            },
            classes,
            members: groups.members.iter().map(Vec::len).collect(),
            vectors: groups.centroids,
        })
    }

    fn select(&self, upload: &Upload, public: &[Vec<f32>], _seed: u64) -> Result<Vec<usize>> {
        let ok = matches!(upload.kind, UploadKind::Prototypes { group_size } if group_size >= self.group_size);
        expect_kind(
            upload,
            &format!("prototypes of groups of at least {}", self.group_size),
            ok,
            public,
        )?;
        let queries: Vec<(&[f32], usize)> = upload
            .vectors
            .iter()
            .zip(&upload.members)
            .map(|(v, &m)| (v.as_slice(), m.saturating_mul(self.per_sample)))
            .collect();
        Ok(most_similar(&queries, public))
    }
}
