//! The warmed repository, its profile and the reduction scheduler on synthetic profiles.
#![allow(clippy::unwrap_used)]

use collab_core::adaptive::{
    Batch, Gamma, LoadInfo, ProfileTable, Query, TokenAllocator, TokenProfile,
};
use proptest::prelude::*;

use super::serving::{
    MAX_REPOSITORY_BYTES, ModelRow, ModelSource, ReductionScheduler, WarmedProfile,
    WarmedRepository,
};

const GAMMAS: [Gamma; 5] = [-20, -10, -5, 0, 4];

/// Two tasks; per-sample time 5 ms at gamma 0 at every batch size, falling with merging
/// (2.5 ms at -20); task 1's accuracy falls with merging, 0.9 at gamma 0.
fn times() -> ProfileTable {
    ProfileTable::from_fn(
        GAMMAS.to_vec(),
        vec![1, 8, 64],
        2,
        |t, g| {
            Some(if t == 1 {
                0.9 + f64::from(g.min(0)) / 40.0
            } else {
                0.7
            })
        },
        |_, g, _| Some(0.005 * (1.0 + f64::from(g.min(0)) / 40.0)),
    )
    .unwrap()
}

fn repository() -> WarmedRepository {
    let rs = [0, 5, 10, 20];
    WarmedRepository::from_profiled(
        "digits",
        &rs,
        &[
            (ModelSource::Unwarmed, vec![0.9, 0.85, 0.7, 0.4]),
            (ModelSource::Warmed { r: 20 }, vec![0.9, 0.88, 0.86, 0.8]),
            (ModelSource::Ensemble { r: 10 }, vec![0.5, 0.5, 0.87, 0.5]),
        ],
    )
    .unwrap()
}

fn batch(tasks: &[usize], arrival: f64) -> Batch {
    Batch::new(
        tasks
            .iter()
            .enumerate()
            .map(|(i, &task)| Query {
                id: i as u64,
                task,
                arrival,
                deadline: arrival + 1.0,
                utility: 1.0,
            })
            .collect(),
    )
}

#[test]
fn the_repository_serves_each_number_with_its_best_model_ties_to_the_first() {
    let repo = repository();
    let sources: Vec<ModelSource> = repo.rows.iter().map(|r| r.source).collect();
    assert_eq!(
        sources,
        vec![
            ModelSource::Unwarmed,
            ModelSource::Warmed { r: 20 },
            ModelSource::Ensemble { r: 10 },
            ModelSource::Warmed { r: 20 },
        ]
    );
    assert_eq!(repo.best(10).unwrap().accuracy, 0.87);
    assert!(repo.best(7).is_none());
    assert_eq!(repo.sources().len(), 3);
    assert_eq!(ModelSource::Warmed { r: 20 }.file_name(), "r20.safetensors");
    assert_eq!(
        ModelSource::Ensemble { r: 3 }.to_string(),
        "ensemble@3".to_string()
    );
    assert!(WarmedRepository::from_profiled("t", &[0, 5], &[]).is_err());
    assert!(
        WarmedRepository::from_profiled("t", &[0, 5], &[(ModelSource::Unwarmed, vec![0.5])])
            .is_err()
    );
    assert!(
        WarmedRepository::from_profiled("t", &[5, 0], &[(ModelSource::Unwarmed, vec![0.5; 2])])
            .is_err()
    );
    assert!(
        WarmedRepository::from_profiled("t", &[0], &[(ModelSource::Unwarmed, vec![1.5])]).is_err()
    );
}

#[test]
fn a_saved_repository_loads_and_hostile_files_are_refused() {
    let dir = std::env::temp_dir().join(format!("collab-warmed-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("repository.json");
    let repo = repository();
    repo.save(&path).unwrap();
    assert_eq!(WarmedRepository::load(&path).unwrap(), repo);
    std::fs::write(&path, "{\"task\": \"x\", \"rows\": [").unwrap();
    assert!(WarmedRepository::load(&path).is_err());
    // Valid JSON that breaks the table's invariants.
    let mut bad = repo.clone();
    bad.rows.swap(0, 1);
    std::fs::write(&path, serde_json::to_string(&bad).unwrap()).unwrap();
    assert!(WarmedRepository::load(&path).is_err());
    let big = vec![b' '; usize::try_from(MAX_REPOSITORY_BYTES).unwrap() + 1];
    std::fs::write(&path, big).unwrap();
    let e = WarmedRepository::load(&path).unwrap_err().to_string();
    assert!(e.contains("at most"), "{e}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn the_profile_takes_each_tasks_repository_accuracy_and_the_times_of_the_table() {
    let p = WarmedProfile::new(times(), vec![None, Some(repository())]).unwrap();
    assert_eq!(p.gammas(), &[-20, -10, -5, 0]);
    // Task 0 has no repository: the table's accuracy at every gamma.
    assert_eq!(p.accuracy(0, -20), Some(0.7));
    assert!(p.model_at(0, -20).is_none());
    // Task 1 runs its best model at each number its table and the time profile share.
    assert_eq!(p.accuracy(1, -10), Some(0.87));
    assert_eq!(
        p.model_at(1, -10).map(|r| r.source),
        Some(ModelSource::Ensemble { r: 10 })
    );
    assert_eq!(p.accuracy(1, -20), Some(0.8));
    assert_eq!(p.accuracy(1, 4), None);
    assert_eq!(p.per_sample_time(1, 4, 1), None);
    assert_eq!(
        p.per_sample_time(1, -20, 64),
        times().per_sample_time(1, -20, 64)
    );
    // A number the repository lacks is not runnable for that task.
    let mut short = repository();
    short.rows.retain(|r| r.r != 5);
    let p = WarmedProfile::new(times(), vec![None, Some(short)]).unwrap();
    assert_eq!(p.accuracy(1, -5), None);
    assert!(
        p.runnable_gammas(&batch(&[1], 0.0))
            .iter()
            .all(|&g| g != -5)
    );
    // Gammas > 0 only: nothing to serve.
    let prompts =
        ProfileTable::from_fn(vec![2], vec![1], 1, |_, _| Some(0.5), |_, _, _| Some(0.1)).unwrap();
    assert!(WarmedProfile::new(prompts, vec![]).is_err());
    let mut bad = repository();
    bad.rows[0] = ModelRow {
        r: 0,
        source: ModelSource::Unwarmed,
        accuracy: f64::NAN,
    };
    assert!(WarmedProfile::new(times(), vec![Some(bad)]).is_err());
}

#[test]
fn a_batch_runs_one_pass_per_task_at_that_tasks_count() {
    // 10 ms per sample alone, 4 ms in a pass of 4 or more.
    let t = ProfileTable::from_fn(
        vec![0],
        vec![1, 4],
        2,
        |_, _| Some(0.5),
        |_, _, b| Some(if b >= 4 { 0.004 } else { 0.01 }),
    )
    .unwrap();
    let p = WarmedProfile::new(t.clone(), vec![]).unwrap();
    // Four rows of task 0 and one of task 1: a pass of 4 (16 ms) and a pass of 1 (10 ms), where
    // one shared model would run all five in one pass (20 ms).
    let b = batch(&[0, 0, 0, 0, 1], 0.0);
    assert!((p.batch_time(&b, 0).unwrap() - 0.026).abs() < 1e-12);
    assert!((t.batch_time(&b, 0).unwrap() - 0.020).abs() < 1e-12);
}

#[test]
fn the_scheduler_takes_the_smallest_reduction_that_keeps_up_with_the_load() {
    let p = WarmedProfile::new(times(), vec![None, Some(repository())]).unwrap();
    // Throughput: gamma 0: 200/s; -5: 228.6/s; -10: 266.7/s; -20: 400/s.
    let waiting = vec![batch(&[0, 1], 0.0)];
    let s = ReductionScheduler::new(0.9).unwrap();
    assert_eq!(s.gamma_for(&p, &waiting, 100.0), Some(0));
    assert_eq!(s.gamma_for(&p, &waiting, 190.0), Some(-5));
    assert_eq!(s.gamma_for(&p, &waiting, 220.0), Some(-10));
    assert_eq!(s.gamma_for(&p, &waiting, 300.0), Some(-20));
    // Beyond every gamma's capacity, and for a rate that is not a number: the fastest.
    assert_eq!(s.gamma_for(&p, &waiting, 1e6), Some(-20));
    assert_eq!(s.gamma_for(&p, &waiting, f64::NAN), Some(-20));
    // Nothing waiting: nothing to plan.
    assert_eq!(s.gamma_for(&p, &[], 100.0), None);
    assert!(ReductionScheduler::new(0.0).is_err());
    assert!(ReductionScheduler::new(1.5).is_err());
    assert!(ReductionScheduler::new(f64::NAN).is_err());

    let mut s = s;
    let batches = vec![batch(&[1, 1], 0.0), batch(&[0], 0.1)];
    let load = LoadInfo {
        rate: 220.0,
        uptime: 10.0,
    };
    let a = s.allocate(0.2, &batches, &p, &load);
    a.verify(0.2, &batches, &p).unwrap();
    assert_eq!(a.choices, vec![Some(-10), Some(-10)]);
    // With a repository that lacks r = 5, task 1's batch cannot run at -5: -5's throughput
    // is that of task 0's batch alone, which keeps up, so task 0 runs at -5 and task 1 at the
    // nearest gamma below it.
    let mut short = repository();
    short.rows.retain(|r| r.r != 5);
    let p = WarmedProfile::new(times(), vec![None, Some(short)]).unwrap();
    let load = LoadInfo {
        rate: 190.0,
        uptime: 10.0,
    };
    let a = s.allocate(0.2, &batches, &p, &load);
    a.verify(0.2, &batches, &p).unwrap();
    assert_eq!(a.choices, vec![Some(-10), Some(-5)]);
    // Task 0 alone still runs at -5.
    let alone = vec![batch(&[0], 0.1)];
    let a = s.allocate(0.2, &alone, &p, &load);
    assert_eq!(a.choices, vec![Some(-5)]);
}

proptest! {
    #[test]
    fn scheduler_allocations_verify_and_run_every_runnable_batch(
        rate in prop_oneof![0.0f64..1000.0, Just(f64::NAN), Just(f64::INFINITY), Just(-1.0)],
        tasks in proptest::collection::vec(proptest::collection::vec(0usize..3, 1..6), 0..10),
        now in 0.0f64..2.0,
        cut in 0usize..4,
    ) {
        let mut repo = repository();
        repo.rows.truncate(cut + 1);
        let p = WarmedProfile::new(times(), vec![None, Some(repo)]).unwrap();
        let batches: Vec<Batch> = tasks
            .iter()
            .enumerate()
            .map(|(i, t)| batch(t, now - 0.1 * i as f64))
            .collect();
        let mut s = ReductionScheduler::new(0.9).unwrap();
        let a = s.allocate(now, &batches, &p, &LoadInfo { rate, uptime: 1.0 });
        prop_assert!(a.verify(now, &batches, &p).is_ok(), "{:?}", a);
        for (k, &i) in a.order.iter().enumerate() {
            let runnable = p.runnable_gammas(&batches[i]).iter().any(|&g| g <= 0);
            prop_assert_eq!(a.choices[k].is_some(), runnable);
        }
    }
}
