#![allow(clippy::unwrap_used)]

use super::*;
use crate::Error;

/// A way to break a valid value.
type Edit<T> = Box<dyn Fn(&mut T)>;

fn q(id: u64, task: usize, arrival: f64, deadline: f64, utility: f64) -> Query {
    Query {
        id,
        task,
        arrival,
        deadline,
        utility,
    }
}

/// Two tasks, gammas -5, 0, 4; task 1 cannot run at +4. Per-sample times measured at batch
/// sizes 1 and 5: task 0 at gamma g: 0.010 + 0.001 g at size 1, half that at size 5.
fn table() -> ProfileTable {
    ProfileTable::from_fn(
        vec![-5, 0, 4],
        vec![1, 5],
        2,
        |t, g| match (t, g) {
            (1, 4) => None,
            (0, g) => Some(0.8 + 0.01 * f64::from(g)),
            (_, g) => Some(0.6 + 0.01 * f64::from(g)),
        },
        |t, g, b| {
            let base = 0.010 + 0.001 * f64::from(g) + 0.005 * t as f64;
            Some(if b == 1 { base } else { base / 2.0 })
        },
    )
    .unwrap()
}

#[test]
fn batch_summaries() {
    let b = Batch::new(vec![
        q(1, 2, 1.0, 3.0, 0.5),
        q(2, 0, 0.5, 2.5, 1.0),
        q(3, 2, 1.5, 4.0, 0.0),
    ]);
    assert_eq!(b.arrival(), 0.5);
    assert_eq!(b.deadline(), 2.5);
    assert_eq!(b.len(), 3);
    assert_eq!(b.first_utility(), 0.5);
    assert!((b.mean_utility() - 0.5).abs() < 1e-12);
    assert_eq!(b.task_counts(), vec![(0, 1), (2, 2)]);
    let e = Batch::default();
    assert!(e.is_empty());
    assert_eq!(e.arrival(), f64::INFINITY);
    assert_eq!(e.deadline(), f64::INFINITY);
    assert_eq!((e.first_utility(), e.mean_utility()), (0.0, 0.0));
    assert!(e.task_counts().is_empty());
}

#[test]
fn table_interpolates_and_holds_flat() {
    let p = table();
    // task 0, gamma 0: 0.010 at size 1, 0.005 at size 5.
    assert_eq!(p.per_sample_time(0, 0, 1), Some(0.010));
    assert!((p.per_sample_time(0, 0, 3).unwrap() - 0.0075).abs() < 1e-15);
    assert_eq!(p.per_sample_time(0, 0, 5), Some(0.005));
    assert_eq!(p.per_sample_time(0, 0, 64), Some(0.005));
    assert_eq!(p.per_sample_time(0, 0, 0), Some(0.010));
    assert_eq!(p.per_sample_time(0, 2, 1), None, "unknown gamma");
    assert_eq!(p.per_sample_time(7, 0, 1), None, "unknown task");
    assert_eq!(p.accuracy(1, 4), None);
    assert_eq!(p.gamma_index(4), Some(2));
    assert_eq!(p.tasks(), 2);
}

#[test]
fn batch_time_and_utility_sum_over_tasks() {
    let p = table();
    // Size 3: task 0 at gamma -5 is 0.005 -> 0.0025 (interpolated 0.00375), task 1 is 0.010 ->
    // 0.005 (0.0075).
    let b = Batch::new(vec![
        q(1, 0, 0.0, 1.0, 1.0),
        q(2, 1, 0.0, 1.0, 0.5),
        q(3, 0, 0.0, 1.0, 0.2),
    ]);
    let t = p.batch_time(&b, -5).unwrap();
    assert!((t - (2.0 * 0.00375 + 0.0075)).abs() < 1e-12, "{t}");
    let u = p.expected_utility(&b, -5).unwrap();
    assert!(
        (u - (1.0 * 0.75 + 0.5 * 0.55 + 0.2 * 0.75)).abs() < 1e-12,
        "{u}"
    );
    assert_eq!(p.batch_time(&b, 4), None, "task 1 cannot run at +4");
    assert_eq!(p.expected_utility(&b, 4), None);
    assert!(!p.runnable(&b, 4));
    assert_eq!(p.runnable_gammas(&b), vec![-5, 0]);
    assert_eq!(p.batch_time(&Batch::default(), 4), Some(0.0));
}

#[test]
fn table_rejects_bad_dimensions_and_values() {
    let ok = table().data().clone();
    let cases: Vec<(&str, Edit<ProfileTableData>)> = vec![
        ("gammas", Box::new(|d| d.gammas = vec![0, -5, 4])),
        ("gammas", Box::new(|d| d.gammas.clear())),
        ("batch sizes", Box::new(|d| d.batch_sizes = vec![0, 5])),
        ("batch sizes", Box::new(|d| d.batch_sizes = vec![5, 5])),
        (
            "tasks",
            Box::new(|d| {
                d.accuracy.pop();
            }),
        ),
        (
            "gammas",
            Box::new(|d| {
                d.accuracy[1].pop();
            }),
        ),
        (
            "batch sizes",
            Box::new(|d| d.per_sample_time[0][0] = Some(vec![0.1])),
        ),
        ("[0, 1]", Box::new(|d| d.accuracy[0][0] = Some(1.5))),
        (
            "finite",
            Box::new(|d| d.per_sample_time[1][1] = Some(vec![0.1, f64::NAN])),
        ),
        (
            "finite",
            Box::new(|d| d.per_sample_time[1][1] = Some(vec![-0.1, 0.1])),
        ),
    ];
    for (word, break_it) in cases {
        let mut d = ok.clone();
        break_it(&mut d);
        match ProfileTable::new(d) {
            Err(Error::Config(m)) => assert!(m.contains(word), "{m:?} should mention {word:?}"),
            other => panic!("expected a config error mentioning {word:?}, got {other:?}"),
        }
    }
}

#[test]
fn table_json_round_trips_and_loading_validates() {
    let p = table();
    let json = serde_json::to_string(&p).unwrap();
    let back: ProfileTable = serde_json::from_str(&json).unwrap();
    assert_eq!(back, p);
    let bad = json.replace("\"batch_sizes\":[1,5]", "\"batch_sizes\":[1]");
    assert_ne!(bad, json);
    let err = serde_json::from_str::<ProfileTable>(&bad).unwrap_err();
    assert!(err.to_string().contains("batch sizes"), "{err}");
}

#[test]
fn deadline_order_breaks_ties_by_arrival_then_index() {
    let batches = vec![
        Batch::new(vec![q(1, 0, 0.2, 2.0, 1.0)]),
        Batch::new(vec![q(2, 0, 0.1, 2.0, 1.0)]),
        Batch::new(vec![q(3, 0, 0.3, 1.0, 1.0)]),
        Batch::new(vec![q(4, 0, 0.1, 2.0, 1.0)]),
        Batch::new(vec![q(5, 0, 0.0, f64::NAN, 1.0)]),
    ];
    assert_eq!(deadline_order(&batches), vec![2, 1, 3, 0, 4]);
}

#[test]
fn from_choices_runs_sequentially_and_verify_catches_each_violation() {
    let p = table();
    // Single-query task-0 batches: about 0.005 s at gamma -5, 0.010 s at 0, 0.014 s at +4.
    let batches = vec![
        Batch::new(vec![q(1, 0, 0.0, 1.012, 1.0)]),
        Batch::new(vec![q(2, 0, 0.0, 1.007, 1.0)]),
        Batch::new(vec![q(3, 0, 0.0, 1.040, 2.0)]),
    ];
    let order = deadline_order(&batches);
    assert_eq!(order, vec![1, 0, 2]);
    let a = Allocation::from_choices(1.0, &batches, order, &[Some(-5), Some(0), Some(4)], &p);
    assert_eq!(a.start[0], Some(1.0));
    // Batch 1 ends near 1.005 (on time), batch 0 near 1.015 (late), batch 2 near 1.029.
    assert_eq!(a.late(&batches), vec![0]);
    let on_time =
        p.expected_utility(&batches[1], -5).unwrap() + p.expected_utility(&batches[2], 4).unwrap();
    assert!((a.expected_utility - on_time).abs() < 1e-12);
    a.verify(1.0, &batches, &p).unwrap();
    assert_eq!(a.next(), Some((1, -5)));
    assert_eq!(a.choice_for(2), Some(4));
    assert!(a.skipped().is_empty());

    let broken: Vec<Edit<Allocation>> = vec![
        Box::new(|a| a.order.swap(0, 1)),
        Box::new(|a| a.choices[0] = Some(3)),
        Box::new(|a| a.start[1] = Some(1.01)),
        Box::new(|a| a.finish[2] = None),
        Box::new(|a| a.choices[2] = None),
        Box::new(|a| a.expected_utility += 0.1),
        Box::new(|a| {
            a.start.pop();
        }),
    ];
    for (k, b) in broken.iter().enumerate() {
        let mut x = a.clone();
        b(&mut x);
        assert!(
            x.verify(1.0, &batches, &p).is_err(),
            "violation {k} not caught"
        );
    }
}

#[test]
fn from_choices_turns_unrunnable_choices_into_skips() {
    let p = table();
    let batches = vec![Batch::new(vec![q(1, 1, 0.0, 9.0, 1.0)])];
    let a = Allocation::from_choices(0.0, &batches, vec![0], &[Some(4)], &p);
    assert_eq!(a.choices, vec![None]);
    assert_eq!(a.skipped(), vec![0]);
    assert_eq!(a.next(), None);
    a.verify(0.0, &batches, &p).unwrap();
    Allocation::empty().verify(0.0, &[], &p).unwrap();
}
