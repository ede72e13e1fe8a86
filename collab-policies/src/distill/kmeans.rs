//! Seeded k-means with a smallest group size: the prototypes a device uploads instead of its
//! per-sample vectors (SPEC §6, "Privacy": groups of about 3 samples).
//!
//! [`grouped_kmeans`] clusters `n` vectors into `k = n / group_size` groups (k-means++ seeding,
//! then Lloyd's iterations to a fixed point or [`MAX_ITERATIONS`]), then dissolves every group
//! smaller than `group_size`, the smallest first, moving its members to the nearest remaining
//! centroid, so that every prototype is the mean of at least `group_size` samples.

use collab_core::{Error, Result};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// Lloyd's iterations at most.
pub const MAX_ITERATIONS: usize = 100;

/// Squared Euclidean distance.
fn dist2(a: &[f32], b: &[f32]) -> f64 {
    a.iter().zip(b).map(|(x, y)| f64::from(x - y).powi(2)).sum()
}

/// The mean of the vectors of `members` (`dim` values; zeros for no member).
fn mean(vectors: &[Vec<f32>], members: &[usize], dim: usize) -> Vec<f32> {
    let mut m = vec![0.0f64; dim];
    for &i in members {
        for (acc, &v) in m.iter_mut().zip(&vectors[i]) {
            *acc += f64::from(v);
        }
    }
    let n = members.len().max(1) as f64;
    m.into_iter().map(|v| (v / n) as f32).collect()
}

/// The nearest of `centroids` to `v` among the `alive` ones (ties: the first).
fn nearest(v: &[f32], centroids: &[Vec<f32>], alive: &[bool]) -> usize {
    let mut best = (f64::INFINITY, 0);
    for (c, centroid) in centroids.iter().enumerate() {
        if !alive[c] {
            continue;
        }
        let d = dist2(v, centroid);
        if d < best.0 {
            best = (d, c);
        }
    }
    best.1
}

/// Groups of vectors: each group's member indices and their mean.
#[derive(Clone, Debug, PartialEq)]
pub struct Groups {
    /// Member indices per group, ascending; every index in exactly one group.
    pub members: Vec<Vec<usize>>,
    /// The mean vector of each group.
    pub centroids: Vec<Vec<f32>>,
}

/// Clusters `vectors` into groups of at least `group_size` (see the module docs),
/// deterministic for a seed.
///
/// # Errors
/// [`Error::InvalidInput`] when `group_size` is 0, there are fewer vectors than
/// `group_size`, or the vectors have unequal lengths or non-finite values.
pub fn grouped_kmeans(vectors: &[Vec<f32>], group_size: usize, seed: u64) -> Result<Groups> {
    let n = vectors.len();
    if group_size == 0 {
        return Err(Error::InvalidInput("k-means: a group size of 0".into()));
    }
    if n < group_size {
        return Err(Error::InvalidInput(format!(
            "k-means: {n} samples cannot make one group of {group_size}"
        )));
    }
    let dim = vectors[0].len();
    if let Some(i) = vectors
        .iter()
        .position(|v| v.len() != dim || v.iter().any(|x| !x.is_finite()))
    {
        return Err(Error::InvalidInput(format!(
            "k-means: vector {i} has {} values (want {dim} finite ones)",
            vectors[i].len()
        )));
    }
    let k = n / group_size;
    let mut rng = StdRng::seed_from_u64(seed);
    // k-means++: the first centre at random, each next one with probability proportional to
    // the squared distance to the nearest centre so far.
    let mut centroids = vec![vectors[rng.random_range(0..n)].clone()];
    let mut d2: Vec<f64> = vectors.iter().map(|v| dist2(v, &centroids[0])).collect();
    while centroids.len() < k {
        let total: f64 = d2.iter().sum();
        let pick = if total > 0.0 {
            let mut t = rng.random_range(0.0..total);
            d2.iter()
                .position(|&d| {
                    t -= d;
                    t < 0.0
                })
                .unwrap_or(n - 1)
        } else {
            rng.random_range(0..n)
        };
        let c = vectors[pick].clone();
        for (d, v) in d2.iter_mut().zip(vectors) {
            *d = d.min(dist2(v, &c));
        }
        centroids.push(c);
    }
    let mut alive = vec![true; k];
    let mut assign: Vec<usize> = vectors
        .iter()
        .map(|v| nearest(v, &centroids, &alive))
        .collect();
    for _ in 0..MAX_ITERATIONS {
        let mut members = vec![Vec::new(); k];
        for (i, &c) in assign.iter().enumerate() {
            members[c].push(i);
        }
        for (c, m) in members.iter().enumerate() {
            if !m.is_empty() {
                centroids[c] = mean(vectors, m, dim);
            }
        }
        let next: Vec<usize> = vectors
            .iter()
            .map(|v| nearest(v, &centroids, &alive))
            .collect();
        if next == assign {
            break;
        }
        assign = next;
    }
    // Dissolve groups below the size, the smallest first (ties: the lower index).
    loop {
        let mut sizes = vec![0usize; k];
        for &c in &assign {
            sizes[c] += 1;
        }
        for c in 0..k {
            if sizes[c] == 0 {
                alive[c] = false;
            }
        }
        let small = (0..k)
            .filter(|&c| alive[c] && sizes[c] < group_size)
            .min_by_key(|&c| (sizes[c], c));
        let Some(c) = small else { break };
        alive[c] = false;
        for (i, a) in assign.iter_mut().enumerate() {
            if *a == c {
                *a = nearest(&vectors[i], &centroids, &alive);
            }
        }
        for c2 in 0..k {
            if alive[c2] {
                let m: Vec<usize> = (0..n).filter(|&i| assign[i] == c2).collect();
                if !m.is_empty() {
                    centroids[c2] = mean(vectors, &m, dim);
                }
            }
        }
    }
    let mut members: Vec<Vec<usize>> = Vec::new();
    let mut out_centroids = Vec::new();
    for c in (0..k).filter(|&c| alive[c]) {
        let m: Vec<usize> = (0..n).filter(|&i| assign[i] == c).collect();
        if m.is_empty() {
            continue;
        }
        out_centroids.push(mean(vectors, &m, dim));
        members.push(m);
    }
    Ok(Groups {
        members,
        centroids: out_centroids,
    })
}
