//! Admission, overload, retries, graceful shutdown and kill, connection limits, metrics.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use collab_policies::batch::SharedModelConfig;

use super::*;
use crate::server::state::{Admit, Command, Shared};
use crate::wire::validate::{Checked, ModelFacts};

/// Polls `done` every 5 ms for up to 10 s.
async fn eventually(mut done: impl FnMut() -> bool) {
    let until = Instant::now() + Duration::from_secs(10);
    while !done() {
        assert!(Instant::now() < until, "condition not reached in 10 s");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overload_answers_every_request_exactly_once() {
    let f = start(ServerConfig {
        capacity: 2,
        policy: Arc::new(SharedModelConfig::new(1)),
        ..config()
    });
    let (mut conn, _) = session(&f.transport, "burst").await;
    let payload = activation(&f.model, &pixels(5), 1);
    for id in 0..20 {
        conn.feed(request(id, 1, "f32", payload.clone()))
            .await
            .expect("feed");
    }
    conn.flush().await.expect("flush");
    let mut answers = HashMap::new();
    for _ in 0..20 {
        let r = response(&mut conn).await;
        assert!(
            answers.insert(r.request_id, r.outcome).is_none(),
            "answered twice"
        );
    }
    assert_eq!(answers.len(), 20);
    let overloaded = answers
        .values()
        .filter(|o| {
            matches!(
                o,
                Err(RemoteError::Overloaded {
                    capacity: 2,
                    in_flight: 2
                })
            )
        })
        .count();
    let ok = answers.values().filter(|o| o.is_ok()).count();
    assert_eq!(ok + overloaded, 20, "{answers:?}");
    assert!(
        ok >= 2 && overloaded >= 1,
        "ok {ok}, overloaded {overloaded}"
    );
    let metrics = f.server.metrics_text();
    assert!(
        metrics.contains(&format!("collab_overloaded_total {overloaded}")),
        "{metrics}"
    );
    let stats = f.server.shutdown().await;
    assert_eq!(
        (stats.overloaded as usize, stats.done as usize),
        (overloaded, ok)
    );
    assert_eq!(stats.max_batch, 1, "{stats:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_that_cannot_make_their_deadline_are_answered_so() {
    let f = start(ServerConfig {
        policy: Arc::new(SharedModelConfig::new(1)),
        ..config()
    });
    let (mut conn, _) = session(&f.transport, "hurry").await;
    // 40 server-only requests with 1 ms each, one per pass: the later ones cannot make it.
    for id in 0..40 {
        let message = match request(id, 0, RGB8, pixels(id)) {
            Message::InferRequest(r) => Message::InferRequest(InferRequest { budget_ms: 1, ..r }),
            other => other,
        };
        conn.feed(message).await.expect("feed");
    }
    conn.flush().await.expect("flush");
    let mut missed = 0;
    for _ in 0..40 {
        match response(&mut conn).await.outcome {
            Ok(_) => {}
            Err(RemoteError::DeadlineMissed { budget_ms: 1 }) => missed += 1,
            Err(e) => panic!("unexpected {e:?}"),
        }
    }
    assert!(missed > 0, "40 passes within 1 ms?");
    let metrics = f.server.metrics_text();
    assert!(
        metrics.contains(&format!("collab_deadline_misses_total {missed}")),
        "{metrics}"
    );
    let stats = f.server.shutdown().await;
    assert_eq!(
        (stats.deadline_missed, stats.done + stats.deadline_missed),
        (missed, 40)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_of_a_held_request_runs_once() {
    let f = start(config());
    let (mut conn, _) = session(&f.transport, "dup").await;
    let payload = activation(&f.model, &pixels(6), 2);
    // The same id twice in one flush: the second arrives while the first is held.
    for id in [5, 5, 6] {
        conn.feed(request(id, 2, "f32", payload.clone()))
            .await
            .expect("feed");
    }
    conn.flush().await.expect("flush");
    let mut ids = vec![
        response(&mut conn).await.request_id,
        response(&mut conn).await.request_id,
    ];
    ids.sort_unstable();
    assert_eq!(ids, [5, 6]);
    let stats = f.server.shutdown().await;
    assert_eq!(
        (stats.accepted, stats.retries, stats.done),
        (2, 1, 2),
        "{stats:?}"
    );
    assert_eq!(
        recv(&mut conn).await,
        Some(Message::Goodbye(RemoteError::ShuttingDown))
    );
}

#[test]
fn admission_holds_capacity_repoints_retries_and_closes_for_shutdown() {
    let (commands, jobs) = std::sync::mpsc::channel();
    let facts = ModelFacts {
        model_id: MODEL_ID.into(),
        layers: 3,
        tokens: 17,
        features: 32,
        input: crate::wire::validate::InputFacts::Image { side: SIDE },
    };
    let config = ServerConfig {
        capacity: 2,
        ..config()
    };
    let shared = Shared::new(config, facts, vec![true; 4], "test".into(), commands);
    let (a, mut a_rx) = tokio::sync::mpsc::unbounded_channel();
    let (b, mut b_rx) = tokio::sync::mpsc::unbounded_channel();
    let now = Instant::now();
    let admit = |device: &str, id: u64, reply| {
        let rgb = Checked::Pixels(vec![0; 3 * SIDE * SIDE]);
        shared.admit((device.into(), id), reply, 0, rgb, now, 100)
    };
    assert_eq!(admit("d", 1, &a), Admit::Accepted);
    assert_eq!(
        admit("d", 1, &b),
        Admit::Retry,
        "same device and id: a retry"
    );
    assert_eq!(admit("e", 1, &a), Admit::Accepted, "another device's id 1");
    // Another client claiming device `d` (another instance) does not reach d's request: it
    // is a request of its own, refused here only because the server is full.
    let thief = crate::server::state::Identity {
        device: "d".into(),
        instance: 99,
    };
    let rgb = Checked::Pixels(vec![0; 3 * SIDE * SIDE]);
    assert!(matches!(
        shared.admit((thief, 1), &b, 0, rgb, now, 100),
        Admit::Refused(RemoteError::Overloaded { .. })
    ));
    assert_eq!(
        admit("e", 2, &a),
        Admit::Refused(RemoteError::Overloaded {
            in_flight: 2,
            capacity: 2
        })
    );
    assert_eq!(
        jobs.try_iter()
            .filter(|c| matches!(c, Command::Job(_)))
            .count(),
        2
    );
    // The answer goes to the newest connection only.
    let answer = InferResponse {
        request_id: 1,
        outcome: Err(RemoteError::Failed("x".into())),
    };
    shared.finish(&("d".into(), 1), answer.clone(), now);
    assert_eq!(b_rx.try_recv().ok(), Some(Message::InferResponse(answer)));
    assert!(a_rx.try_recv().is_err());
    // Shutting down: retries of what is held still count, new requests are refused.
    shared.begin_drain();
    assert_eq!(admit("e", 1, &b), Admit::Retry);
    assert_eq!(admit("f", 1, &b), Admit::Refused(RemoteError::ShuttingDown));
    assert!(matches!(jobs.try_recv(), Ok(Command::Drain)));
    let stats = shared.stats();
    assert_eq!(
        (stats.accepted, stats.retries, stats.failed, stats.in_flight),
        (2, 2, 1, 1)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_shutdown_answers_every_accepted_request() {
    let f = start(ServerConfig {
        policy: Arc::new(SharedModelConfig::new(2)),
        ..config()
    });
    let monitor = f.server.monitor();
    let mut conns = Vec::new();
    for d in 0..2u64 {
        let (mut conn, _) = session(&f.transport, &format!("d{d}")).await;
        for i in 0..16 {
            let payload = activation(&f.model, &pixels(d * 100 + i), 1 + (i % 3) as usize);
            let split = 1 + (i % 3) as u32;
            conn.feed(request(d * 100 + i, split, "f32", payload))
                .await
                .expect("feed");
        }
        conn.flush().await.expect("flush");
        conns.push(conn);
    }
    eventually(|| monitor.stats().accepted == 32).await;
    let held = monitor.stats().in_flight;
    let shutdown = tokio::spawn(f.server.shutdown());
    let mut answered = HashMap::new();
    for conn in &mut conns {
        loop {
            match recv(conn).await {
                Some(Message::InferResponse(r)) => {
                    assert!(
                        answered.insert(r.request_id, r.outcome).is_none(),
                        "answered twice"
                    );
                }
                Some(Message::Goodbye(RemoteError::ShuttingDown)) => break,
                other => panic!("expected answers then Goodbye(ShuttingDown), got {other:?}"),
            }
        }
        assert!(closed(conn).await, "closed after the Goodbye");
    }
    let stats = shutdown.await.expect("shutdown");
    assert_eq!(answered.len(), 32, "{held} were held at shutdown");
    assert!(answered.values().all(Result::is_ok), "{answered:?}");
    assert_eq!(
        (stats.accepted, stats.done, stats.in_flight),
        (32, 32, 0),
        "{stats:?}"
    );
    assert!(!monitor.healthy());
    assert!(
        f.transport.connect().await.is_err(),
        "no new connections after shutdown"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_during_shutdown_are_refused_explicitly() {
    let f = start(config());
    let (mut conn, _) = session(&f.transport, "late").await;
    let monitor = f.server.monitor();
    // Shut down while the session is idle, then ask: ShuttingDown, or the Goodbye if the
    // server was already closing sessions.
    let shutdown = tokio::spawn(f.server.shutdown());
    eventually(|| !monitor.healthy()).await;
    let _ = conn.send(request(1, 0, RGB8, pixels(1))).await;
    match recv(&mut conn).await {
        Some(Message::InferResponse(r)) => {
            assert_eq!(refusal(&r), &RemoteError::ShuttingDown);
            assert_eq!(
                recv(&mut conn).await,
                Some(Message::Goodbye(RemoteError::ShuttingDown))
            );
        }
        Some(Message::Goodbye(RemoteError::ShuttingDown)) => {}
        other => panic!("expected ShuttingDown, got {other:?}"),
    }
    let stats = shutdown.await.expect("shutdown");
    assert_eq!(stats.accepted, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_drops_connections_without_goodbye() {
    let f = start(config());
    let (mut conn, _) = session(&f.transport, "victim").await;
    let payload = activation(&f.model, &pixels(8), 1);
    for id in 0..8 {
        conn.feed(request(id, 1, "f32", payload.clone()))
            .await
            .expect("feed");
    }
    conn.flush().await.expect("flush");
    tokio::time::timeout(Duration::from_secs(5), f.server.kill())
        .await
        .expect("kill is quick");
    loop {
        match recv(&mut conn).await {
            None => break,
            Some(Message::InferResponse(_)) => {} // answered before the kill
            Some(other) => panic!("a killed server says nothing, got {other:?}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_over_the_limit_are_refused() {
    let f = start(ServerConfig {
        max_connections: 1,
        ..config()
    });
    let (first, _) = session(&f.transport, "first").await;
    let mut second = connect(&f.transport).await;
    assert_eq!(
        recv(&mut second).await,
        Some(Message::Goodbye(RemoteError::Overloaded {
            in_flight: 1,
            capacity: 1
        }))
    );
    drop(first);
    let monitor = f.server.monitor();
    eventually(|| monitor.stats().connections == 0).await;
    let (mut third, _) = session(&f.transport, "third").await;
    send(&mut third, request(1, 0, RGB8, pixels(9))).await;
    assert!(response(&mut third).await.outcome.is_ok());
    let stats = f.server.shutdown().await;
    assert_eq!(
        (stats.connections_refused, stats.connections_total),
        (1, 2),
        "{stats:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_expose_every_family() {
    let f = start(config());
    let (mut conn, _) = session(&f.transport, "m").await;
    send(
        &mut conn,
        request(1, 2, "f32", activation(&f.model, &pixels(1), 2)),
    )
    .await;
    assert!(response(&mut conn).await.outcome.is_ok());
    send(&mut conn, request(2, 7, "f32", vec![])).await;
    assert!(response(&mut conn).await.outcome.is_err());
    let text = f.server.metrics_text();
    for needle in [
        "collab_queue_length{split=\"0\"} 0",
        "collab_queue_length{split=\"3\"} 0",
        "collab_batch_size_count 1",
        "collab_request_latency_seconds_bucket{",
        "collab_requests_total{outcome=\"done\"} 1",
        "collab_requests_total{outcome=\"invalid\"} 1",
        "collab_deadline_misses_total 0",
        "collab_overloaded_total 0",
        "collab_in_flight 0",
        "collab_connections 1",
        "collab_position_seconds{position=\"3\"}",
        "# EOF",
    ] {
        assert!(text.contains(needle), "missing {needle} in\n{text}");
    }
    f.server.shutdown().await;
}
