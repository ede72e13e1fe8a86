//! The pure parts: codec names, queue estimate, budget, top-k, error kinds, backoff.

use std::time::Duration;

use collab_core::split::{CodecId, SplitChoice};
use collab_policies::codec::CodecRegistry;
use collab_policies::svd::{SplitBases, SplitBasis};
use rand::SeedableRng;
use rand::rngs::StdRng;

use super::super::*;
use crate::wire::{RemoteError, ServerLoad};

fn choice(split: usize, codec: &str) -> SplitChoice {
    let codec = match codec {
        "raw" => CodecId::raw(),
        "none" => CodecId::none(),
        c => c.parse().expect("codec id"),
    };
    SplitChoice {
        split,
        codec,
        rho: 0.0,
        bytes: 0,
        latency: 0.0,
        loss: 0.0,
    }
}

#[test]
fn strategy_choices_become_plans() {
    let registry = CodecRegistry::builtin();
    let split = |k, c: &str| Plan::Split {
        split: k,
        codec: c.parse().expect("codec id"),
    };
    let ok = |k, c: &str| plan_for(&choice(k, c), 12, &registry, None).expect(c);
    assert_eq!(ok(0, "raw"), Plan::ServerOnly);
    assert_eq!(ok(0, "rgb8"), Plan::ServerOnly);
    assert_eq!(ok(12, "none"), Plan::DeviceOnly);
    assert_eq!(ok(3, "f32"), split(3, "f32"));
    assert_eq!(ok(5, "int8-r192"), split(5, "int8-r192"));
    assert_eq!(ok(6, "svd-int8-r55"), split(6, "svd-int8-r55"));
    assert_eq!(
        ok(6, "svd-int8-r55").wire_codec().to_string(),
        "svd-int8-r55"
    );
    assert_eq!(ok(0, "raw").wire_codec().to_string(), "rgb8");
    assert_eq!(ok(12, "none").split(12), 12);
    assert_eq!(ok(6, "svd-int8-r55").split(12), 6);

    let err = |k, c: &str, needle: &str| match plan_for(&choice(k, c), 12, &registry, None) {
        Err(ClientError::Local(m)) => assert!(m.contains(needle), "{c}: {m}"),
        other => panic!("{c} at {k}: {other:?}"),
    };
    err(13, "f32", "past the model");
    err(0, "f32", "raw image");
    err(3, "raw", "at split 3");
    err(3, "none", "device-only");
    err(12, "f32", "device-only");
    err(4, "zip-r3", "unknown codec `zip-r3`");
    err(4, "svd-int8", "needs a rank");
    err(4, "svd-r0", "needs a rank");
    err(4, "pca-int8-r64", "shared basis");
    err(4, "wsvd-r8", "shared basis");

    // With bases held at split 4, its calibrated codecs are plans; other splits and `wsvd`
    // (whose basis is not in the file) still are not.
    let items: Vec<collab_core::split::Activation> = (0..3)
        .map(|i| {
            let values = (0..5 * 8).map(|j| ((i * 7 + j * 3) % 5) as f32).collect();
            collab_core::split::Activation::new(5, 8, values).expect("activation")
        })
        .collect();
    let mut bases = SplitBases::new("m");
    let basis = SplitBasis::fit(&items, "block 4").expect("fit");
    bases.insert(4, basis).expect("insert");
    let with = |k, c: &str| plan_for(&choice(k, c), 12, &registry, Some(&bases));
    assert_eq!(with(4, "mpca-r40").expect("mpca"), split(4, "mpca-r40"));
    assert_eq!(
        with(4, "cpca-int8-r3").expect("cpca"),
        split(4, "cpca-int8-r3")
    );
    assert_eq!(with(4, "f32").expect("f32"), split(4, "f32"));
    for (k, c) in [(5, "mpca-r40"), (4, "wsvd-r8")] {
        match with(k, c) {
            Err(ClientError::Local(m)) => assert!(m.contains(&format!("at split {k}")), "{m}"),
            other => panic!("{c} at {k}: {other:?}"),
        }
    }
}

#[test]
fn queue_estimate_counts_the_work_ahead() {
    let load = ServerLoad {
        queues: vec![1, 0, 2],
        position_ms: vec![1.0, 2.0, 4.0],
        in_flight: 3,
        capacity: 8,
    };
    // One request needs 1 + 2 + 4 ms, two need 4 ms each: 15 ms of passes.
    assert!((queue_estimate(&load, 1) - 0.015).abs() < 1e-12);
    assert!((queue_estimate(&load, 3) - 0.005).abs() < 1e-12);
    assert!((queue_estimate(&load, 0) - 0.015).abs() < 1e-12);
    // Short, non-finite or negative times count as 0; the estimate stays finite.
    let odd = ServerLoad {
        queues: vec![5, 5, 5],
        position_ms: vec![f32::NAN, -3.0],
        in_flight: 0,
        capacity: 0,
    };
    assert_eq!(queue_estimate(&odd, 2), 0.0);
    let empty = ServerLoad {
        queues: vec![],
        position_ms: vec![],
        in_flight: 0,
        capacity: 0,
    };
    assert_eq!(queue_estimate(&empty, 1), 0.0);
}

#[test]
fn the_server_gets_what_the_deadline_leaves() {
    let ms = Duration::from_millis;
    assert_eq!(server_budget(ms(300), ms(100), ms(40)), Some(ms(180)));
    assert_eq!(server_budget(ms(300), ms(280), ms(40)), None);
    assert_eq!(server_budget(ms(300), ms(400), ms(0)), None);
    assert_eq!(server_budget(ms(300), ms(300), ms(0)), None);
}

#[test]
fn top_k_is_best_first_with_nans_last() {
    let t = top_k(&[0.5, f32::NAN, 3.0, -1.0, 2.0], 3);
    assert_eq!(t, vec![(2, 3.0), (4, 2.0), (0, 0.5)]);
    assert_eq!(top_k(&[1.0], 5), vec![(0, 1.0)]);
    assert_eq!(
        top_k(&[2.0, 5.0, 5.0], 2),
        vec![(1, 5.0), (2, 5.0)],
        "ties: lower class"
    );
    let nan = top_k(&[f32::NAN, 1.0], 2);
    assert_eq!(nan[0], (1, 1.0));
    assert!(nan[1].1.is_nan());
}

#[test]
fn errors_have_machine_readable_kinds() {
    let remote = |e| ClientError::Remote(e).kind();
    assert_eq!(
        remote(RemoteError::DeadlineMissed { budget_ms: 3 }),
        "deadline_missed"
    );
    let over = RemoteError::Overloaded {
        in_flight: 1,
        capacity: 1,
    };
    assert_eq!(remote(over), "overloaded");
    assert_eq!(remote(RemoteError::Invalid("x".into())), "invalid");
    assert_eq!(remote(RemoteError::Failed("x".into())), "failed");
    assert_eq!(remote(RemoteError::ShuttingDown), "unreachable");
    assert_eq!(
        ClientError::Refused(RemoteError::Unauthorized).kind(),
        "refused"
    );
    let after = Duration::from_millis(5);
    assert_eq!(ClientError::Timeout { after }.kind(), "timeout");
    let unreachable = ClientError::Unreachable {
        attempts: 8,
        last: "refused".into(),
    };
    assert_eq!(unreachable.kind(), "unreachable");
    assert!(unreachable.to_string().contains("8 connection attempts"));
    assert_eq!(ClientError::Protocol("x".into()).kind(), "protocol");
    assert_eq!(ClientError::Local("x".into()).kind(), "local");
    assert!(!ClientError::Refused(RemoteError::Unauthorized).is_retryable());
    assert!(ClientError::Timeout { after }.is_retryable());
}

#[test]
fn backoff_grows_to_its_cap_with_bounded_jitter() {
    let b = Backoff::default();
    let ms = Duration::from_millis;
    assert_eq!(b.nominal(0), ms(50));
    assert_eq!(b.nominal(3), ms(400));
    assert_eq!(b.nominal(10), ms(2000));
    assert_eq!(b.nominal(u32::MAX), ms(2000));
    let mut rng = StdRng::seed_from_u64(1);
    for n in 0..12 {
        let d = b.delay(n, &mut rng);
        assert!(d >= b.nominal(n) / 2 && d <= b.nominal(n), "{n}: {d:?}");
    }
    let flat = Backoff {
        factor: f64::NAN,
        ..b
    };
    assert_eq!(flat.nominal(5), ms(50));
}
