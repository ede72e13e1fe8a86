//! Tests of the built-in distillers, their k-means and the conformance suite.
#![allow(clippy::unwrap_used)]

use collab_core::Error;
use collab_core::distill::{Distiller, Upload, UploadKind};
use proptest::prelude::*;

use super::conformance::check_distiller;
use super::kmeans::grouped_kmeans;
use super::{AllDistill, PrototypeSelection, RandomSelection, SimilaritySelection};

/// A probability vector over 4 classes peaked on `class` with `mass`.
fn peaked(class: usize, mass: f32) -> Vec<f32> {
    (0..4)
        .map(|c| if c == class { mass } else { (1.0 - mass) / 3.0 })
        .collect()
}

/// 40 public samples, 10 peaked on each class, in class order.
fn public() -> Vec<Vec<f32>> {
    (0..40)
        .map(|i| peaked(i / 10, 0.55 + 0.04 * (i % 10) as f32))
        .collect()
}

#[test]
fn similarity_picks_each_samples_nearest_public_samples_once() {
    // A device holding classes 1 and 2 only.
    let private = vec![peaked(1, 0.9), peaked(1, 0.8), peaked(2, 0.9)];
    let d = SimilaritySelection { per_sample: 3 };
    let up = d.upload(&private, 0).unwrap();
    assert_eq!(
        (up.kind, up.members.clone()),
        (UploadKind::PerSample, vec![1; 3])
    );
    let sel = d.select(&up, &public(), 0).unwrap();
    assert_eq!(sel.len(), 9);
    // Sorted by similarity, never twice: the first two private samples share class 1's ten.
    assert!(sel[..6].iter().all(|&i| (10..20).contains(&i)), "{sel:?}");
    assert!(sel[6..].iter().all(|&i| (20..30).contains(&i)), "{sel:?}");
    let mut unique = sel.clone();
    unique.sort_unstable();
    unique.dedup();
    assert_eq!(unique.len(), sel.len());
}

#[test]
fn prototypes_hide_every_sample_in_a_group_and_select_like_their_members() {
    // 12 samples of class 0 and 12 of class 3, with small differences.
    let private: Vec<Vec<f32>> = (0..24)
        .map(|i| peaked(if i < 12 { 0 } else { 3 }, 0.6 + 0.01 * (i % 12) as f32))
        .collect();
    let d = PrototypeSelection {
        per_sample: 1,
        group_size: 3,
    };
    let up = d.upload(&private, 7).unwrap();
    up.check().unwrap();
    assert_eq!(up.kind, UploadKind::Prototypes { group_size: 3 });
    assert!(up.members.iter().all(|&m| m >= 3), "{:?}", up.members);
    assert_eq!(up.samples(), 24);
    let per_sample = SimilaritySelection { per_sample: 1 }
        .upload(&private, 7)
        .unwrap();
    assert!(
        3 * up.bytes() <= per_sample.bytes(),
        "prototype upload {} bytes against per-sample {}",
        up.bytes(),
        per_sample.bytes()
    );
    let sel = d.select(&up, &public(), 0).unwrap();
    assert_eq!(sel.len(), 24);
    let classes: Vec<usize> = sel.iter().map(|i| i / 10).collect();
    assert_eq!(classes.iter().filter(|&&c| c == 0).count(), 10);
    assert_eq!(classes.iter().filter(|&&c| c == 3).count(), 10);
    // A device with fewer samples than a group is refused rather than exposed.
    let e = d.upload(&private[..2], 0).unwrap_err();
    assert!(matches!(e, Error::InvalidInput(m) if m.contains("group")));
}

#[test]
fn all_and_random_select_what_they_promise() {
    let private = vec![peaked(1, 0.9); 5];
    let up = AllDistill.upload(&private, 0).unwrap();
    assert_eq!(
        (up.bytes(), AllDistill.select(&up, &public(), 0).unwrap()),
        (0, (0..40).collect())
    );
    let r = RandomSelection { per_sample: 3 };
    let up = r.upload(&private, 0).unwrap();
    assert_eq!(
        (up.kind, up.members.clone(), up.vectors.len()),
        (UploadKind::Count, vec![5], 0)
    );
    let a = r.select(&up, &public(), 1).unwrap();
    assert_eq!(a.len(), 15);
    assert_eq!(a, r.select(&up, &public(), 1).unwrap());
    assert_ne!(a, r.select(&up, &public(), 2).unwrap());
    let many = RandomSelection { per_sample: 100 }
        .select(&up, &public(), 1)
        .unwrap();
    assert_eq!(many.len(), 40);
}

#[test]
fn uploads_of_another_kind_are_refused() {
    let private = vec![peaked(1, 0.9); 6];
    let per_sample = SimilaritySelection { per_sample: 1 }
        .upload(&private, 0)
        .unwrap();
    let cluster = PrototypeSelection {
        per_sample: 1,
        group_size: 3,
    };
    assert!(cluster.select(&per_sample, &public(), 0).is_err());
    // Groups smaller than the cloud asks for are refused too.
    let small = PrototypeSelection {
        per_sample: 1,
        group_size: 2,
    }
    .upload(&private, 0)
    .unwrap();
    assert!(cluster.select(&small, &public(), 0).is_err());
    assert!(AllDistill.select(&per_sample, &public(), 0).is_err());
}

#[test]
fn the_built_ins_pass_the_conformance_suite() {
    let all: [&dyn Distiller; 5] = [
        &AllDistill,
        &RandomSelection { per_sample: 4 },
        &SimilaritySelection { per_sample: 4 },
        &PrototypeSelection {
            per_sample: 4,
            group_size: 3,
        },
        &PrototypeSelection {
            per_sample: 1,
            group_size: 12,
        },
    ];
    for d in all {
        check_distiller(d, 60, 3).unwrap();
    }
}

/// Selects a public sample twice: the suite must catch it.
#[derive(Debug)]
struct Twice;

impl Distiller for Twice {
    fn name(&self) -> String {
        "twice".into()
    }
    fn upload(&self, private: &[Vec<f32>], _: u64) -> collab_core::Result<Upload> {
        Ok(Upload::nothing(private.first().map_or(0, Vec::len)))
    }
    fn select(&self, _: &Upload, public: &[Vec<f32>], _: u64) -> collab_core::Result<Vec<usize>> {
        Ok(if public.is_empty() {
            vec![]
        } else {
            vec![0, 0]
        })
    }
}

#[test]
fn a_distiller_that_selects_twice_fails_the_suite() {
    let e = check_distiller(&Twice, 20, 1).unwrap_err();
    assert!(e.to_string().contains("selected twice"), "{e}");
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]
    #[test]
    fn kmeans_groups_partition_the_samples_in_groups_of_at_least_g(
        n in 1usize..60, g in 1usize..8, dim in 1usize..6, seed in any::<u64>()
    ) {
        let v: Vec<Vec<f32>> = (0..n)
            .map(|i| (0..dim).map(|j| ((i * 31 + j * 17 + seed as usize % 97) % 13) as f32).collect())
            .collect();
        match grouped_kmeans(&v, g, seed) {
            Ok(groups) => {
                prop_assert!(n >= g);
                let mut all: Vec<usize> = groups.members.concat();
                all.sort_unstable();
                prop_assert_eq!(all, (0..n).collect::<Vec<_>>());
                prop_assert!(groups.members.iter().all(|m| m.len() >= g));
                prop_assert_eq!(groups.members.len(), groups.centroids.len());
                prop_assert_eq!(grouped_kmeans(&v, g, seed).unwrap(), groups);
            }
            Err(_) => prop_assert!(n < g),
        }
    }
}

/// Refuses every upload: a distiller that serves nothing must fail the suite too.
#[derive(Debug)]
struct Refuses;

impl Distiller for Refuses {
    fn name(&self) -> String {
        "refuses".into()
    }
    fn upload(&self, _: &[Vec<f32>], _: u64) -> collab_core::Result<Upload> {
        Err(Error::InvalidInput("no".into()))
    }
    fn select(&self, _: &Upload, _: &[Vec<f32>], _: u64) -> collab_core::Result<Vec<usize>> {
        Err(Error::InvalidInput("no".into()))
    }
}

#[test]
fn a_distiller_that_refuses_well_formed_input_fails_the_suite() {
    let e = check_distiller(&Refuses, 5, 1).unwrap_err();
    assert!(
        e.to_string().contains("refused a well-formed upload"),
        "{e}"
    );
}
