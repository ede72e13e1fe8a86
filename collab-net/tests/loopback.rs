//! The server and the client over real loopback TCP: concurrent devices, hostile bytes, a
//! client that stalls mid-frame, a server restart under load, and overload. Every request
//! must end in exactly one result or one explicit error.

mod common;

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use collab_net::client::{ClientError, DeviceClient};
use collab_net::wire::{InferRequest, Message, RemoteError};
use common::*;
use futures_util::SinkExt;
use proptest::prelude::*;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_devices_each_get_their_own_answers() {
    let model = tiny_model();
    let (server, addr) = start(&model, config(), None).await;
    let mut tasks = tokio::task::JoinSet::new();
    for device in 0..4u64 {
        let c = client(addr, &format!("device-{device}")).await;
        for i in 0..8u64 {
            let seed = device * 100 + i;
            let split = 1 + (i % 3) as u32;
            let (payload, logits) = activation_payload(&model, seed, split as usize);
            let c = c.clone();
            tasks.spawn(async move {
                let p = c
                    .infer(request(payload, split), Duration::from_secs(30))
                    .await
                    .expect("answer");
                // The answer is this request's: its top-1 and logit match the reference.
                let (class, logit) = p.top[0];
                assert_eq!(class, argmax(&logits), "seed {seed}");
                assert!((logit - logits[class as usize]).abs() < 1e-3, "seed {seed}");
                seed
            });
        }
    }
    let mut seen = HashSet::new();
    while let Some(seed) = tasks.join_next().await {
        assert!(seen.insert(seed.expect("task")));
    }
    assert_eq!(seen.len(), 32);
    let stats = server.shutdown().await;
    assert_eq!(stats.done, 32, "{stats:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_frames_get_typed_goodbyes_and_the_server_keeps_serving() {
    let model = tiny_model();
    let (server, addr) = start(&model, config(), None).await;

    // A length prefix over the limit: refused before buffering.
    let mut f = raw(addr).await;
    f.get_mut()
        .write_all(&u32::MAX.to_be_bytes())
        .await
        .expect("write");
    assert!(
        matches!(
            next(&mut f).await,
            Some(Message::Goodbye(RemoteError::FrameTooLarge { .. }))
        ),
        "oversized frame"
    );

    // A whole frame of another version.
    let mut f = raw(addr).await;
    let mut frame = 4u32.to_be_bytes().to_vec();
    frame.extend([0, 99, 1, 2]);
    f.get_mut().write_all(&frame).await.expect("write");
    assert!(matches!(
        next(&mut f).await,
        Some(Message::Goodbye(RemoteError::UnsupportedVersion {
            got: 99,
            ..
        }))
    ));

    // A body that is not a message.
    let mut f = raw(addr).await;
    let mut frame = 6u32.to_be_bytes().to_vec();
    frame.extend(collab_net::wire::PROTOCOL_VERSION.to_be_bytes());
    frame.extend([250, 250, 250, 250]);
    f.get_mut().write_all(&frame).await.expect("write");
    assert!(matches!(
        next(&mut f).await,
        Some(Message::Goodbye(RemoteError::Protocol(_)))
    ));

    // A truncated frame, then the client hangs up: nothing to answer, nothing breaks.
    let mut s = TcpStream::connect(addr).await.expect("connect");
    s.write_all(&[0, 0, 1, 0, 0, 1, 7]).await.expect("write");
    drop(s);

    // A request that decodes but is invalid: an Invalid answer, and the session goes on.
    let mut f = raw(addr).await;
    f.send(Message::InferRequest(InferRequest {
        request_id: 5,
        split: 99,
        codec: "f32".parse().expect("codec id"),
        payload: vec![1, 2, 3],
        budget_ms: 100,
        max_loss: 0.0,
        meta: None,
    }))
    .await
    .expect("send");
    match next(&mut f).await {
        Some(Message::InferResponse(r)) => {
            assert_eq!(r.request_id, 5);
            assert!(matches!(r.outcome, Err(RemoteError::Invalid(m)) if m.contains("split 99")));
        }
        other => panic!("expected an Invalid response, got {other:?}"),
    }
    f.send(Message::Ping(collab_net::wire::Ping {
        nonce: 3,
        pad: vec![],
    }))
    .await
    .expect("ping");
    assert!(matches!(next(&mut f).await, Some(Message::Pong(p)) if p.nonce == 3));

    // Through all this, a well-behaved device is served.
    let (payload, logits) = activation_payload(&model, 1, 2);
    let p = client(addr, "good")
        .await
        .infer(request(payload, 2), Duration::from_secs(30))
        .await
        .expect("served");
    assert_eq!(p.top[0].0, argmax(&logits));
    server.shutdown().await;
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(12))]

    /// Random bytes after a good handshake (or instead of one): the server closes or says
    /// Goodbye, and still answers a real request afterwards.
    #[test]
    fn random_bytes_never_break_the_server(
        bytes in proptest::collection::vec(any::<u8>(), 1..300),
        handshake in any::<bool>(),
    ) {
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("rt");
        rt.block_on(async {
            let model = tiny_model();
            let (server, addr) = start(&model, config(), None).await;
            if handshake {
                let mut f = raw(addr).await;
                f.get_mut().write_all(&bytes).await.expect("write");
                let _ = next(&mut f).await;
            } else {
                let mut s = TcpStream::connect(addr).await.expect("connect");
                s.write_all(&bytes).await.expect("write");
                drop(s);
            }
            let (payload, _) = activation_payload(&model, 2, 1);
            let answer = client(addr, "after").await.infer(request(payload, 1), Duration::from_secs(30)).await;
            assert!(answer.is_ok(), "{answer:?}");
            server.shutdown().await;
        });
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_stalling_mid_frame_is_closed_and_others_are_served() {
    let model = tiny_model();
    let mut cfg = config();
    cfg.frame_timeout = Duration::from_millis(300);
    let (server, addr) = start(&model, cfg, None).await;
    let mut f = raw(addr).await;
    // Half of a frame, then nothing.
    f.get_mut()
        .write_all(&[0, 0, 0, 40, 0, 1, 2])
        .await
        .expect("write");
    let (payload, logits) = activation_payload(&model, 3, 1);
    let p = client(addr, "meanwhile")
        .await
        .infer(request(payload, 1), Duration::from_secs(30))
        .await
        .expect("served during the stall");
    assert_eq!(p.top[0].0, argmax(&logits));
    let start = std::time::Instant::now();
    match next(&mut f).await {
        Some(Message::Goodbye(RemoteError::Protocol(m))) => assert!(m.contains("stall"), "{m}"),
        None => {}
        other => panic!("expected a Goodbye or a close, got {other:?}"),
    }
    assert!(start.elapsed() < Duration::from_secs(3));
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_reconnect_and_retry_across_a_server_restart() {
    let model = tiny_model();
    let (server, addr) = start(&model, config(), None).await;
    let clients: Vec<DeviceClient> = {
        let mut v = Vec::new();
        for d in 0..3 {
            v.push(client(addr, &format!("device-{d}")).await);
        }
        v
    };
    let mut tasks = tokio::task::JoinSet::new();
    for (d, c) in clients.iter().enumerate() {
        for i in 0..10u64 {
            let seed = d as u64 * 50 + i;
            let (payload, logits) = activation_payload(&model, seed, 1);
            let c = c.clone();
            tasks.spawn(async move {
                tokio::time::sleep(Duration::from_millis(i * 40)).await;
                let p = c.infer(request(payload, 1), Duration::from_secs(60)).await;
                (seed, p.map(|p| p.top[0].0 == argmax(&logits)))
            });
        }
    }
    // Crash the server mid-stream (queued work dropped, nothing answered), then start a new
    // one on the same port.
    tokio::time::sleep(Duration::from_millis(150)).await;
    server.kill().await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (server, _) = start(&model, config(), Some(addr)).await;
    let mut answered = 0;
    while let Some(r) = tasks.join_next().await {
        let (seed, outcome) = r.expect("task");
        assert!(
            outcome.expect("answered after the restart"),
            "seed {seed}: wrong answer"
        );
        answered += 1;
    }
    assert_eq!(answered, 30);
    assert!(clients.iter().map(DeviceClient::reconnects).sum::<u64>() >= 3);
    // Graceful shutdown with requests in flight: every accepted one is answered.
    let (payload, _) = activation_payload(&model, 9, 1);
    let calls: Vec<_> = (0..6)
        .map(|_| {
            let c = clients[0].clone();
            let payload = payload.clone();
            tokio::spawn(async move { c.infer(request(payload, 1), Duration::from_secs(5)).await })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(20)).await;
    let stats = server.shutdown().await;
    for call in calls {
        match call.await.expect("call") {
            Ok(_) => {}
            Err(e) => assert!(
                matches!(
                    e,
                    ClientError::Unreachable { .. }
                        | ClientError::Remote(RemoteError::ShuttingDown)
                        | ClientError::Timeout { .. }
                ),
                "{e}"
            ),
        }
    }
    assert_eq!(
        stats.accepted,
        stats.done + stats.deadline_missed + stats.failed,
        "{stats:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overload_answers_every_request_explicitly() {
    let model = tiny_model();
    let mut cfg = config();
    cfg.capacity = 4;
    cfg.policy = Arc::new(collab_policies::batch::SharedModelConfig::new(2));
    let (server, addr) = start(&model, cfg, None).await;
    let (payload, _) = activation_payload(&model, 4, 1);
    let mut tasks = tokio::task::JoinSet::new();
    for d in 0..3 {
        let c = client(addr, &format!("burst-{d}")).await;
        for _ in 0..30 {
            let (c, payload) = (c.clone(), payload.clone());
            tasks.spawn(async move { c.infer(request(payload, 1), Duration::from_secs(30)).await });
        }
    }
    let (mut ok, mut overloaded) = (0, 0);
    while let Some(r) = tasks.join_next().await {
        match r.expect("task") {
            Ok(_) => ok += 1,
            Err(ClientError::Remote(RemoteError::Overloaded { capacity, .. })) => {
                assert_eq!(capacity, 4);
                overloaded += 1;
            }
            Err(e) => panic!("unexpected error under overload: {e}"),
        }
    }
    assert_eq!(ok + overloaded, 90);
    assert!(
        ok >= 4 && overloaded >= 1,
        "ok {ok}, overloaded {overloaded}"
    );
    let metrics = server.metrics_text();
    assert!(metrics.contains("collab_overloaded_total"), "{metrics}");
    let stats = server.shutdown().await;
    assert_eq!(stats.overloaded as usize, overloaded, "{stats:?}");
    assert_eq!(stats.done as usize, ok, "{stats:?}");
}
