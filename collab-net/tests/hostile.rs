//! The hostile-client suite of issue 31, over real loopback TCP: each attack runs while a
//! legitimate device uses the same server, and each test checks that the server says what
//! was wrong, keeps answering the legitimate device (every request exactly once, with its own
//! answer) and stays within a memory bound.
//!
//! - a decompression bomb: payloads of a few bytes (or a few MB) declaring activations of
//!   hundreds of MB;
//! - a flood of connections that never say `Hello`, from another address, reopened in a loop;
//! - an oversized frame before `Hello`;
//! - slowloris: a frame trickled in a byte at a time after the handshake;
//! - a hijack: another client claiming the device's id and re-sending its request ids, and
//!   a device presenting another device's token;
//! - a graceful restart under load.
//!
//! (Bad versions, undecodable bodies, truncated frames and random bytes are in
//! `loopback.rs`.)

mod common;

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use collab_backends::candle::CandleBackend;
use collab_core::model::Transformer;
use collab_net::auth::DeviceTokens;
use collab_net::server::{Health, ServerConfig};
use collab_net::wire::{InferRequest, InferResponse, Message, RemoteError};
use common::*;
use futures_util::SinkExt;
use tokio::io::AsyncWriteExt;

/// What the attacks may add to this process's peak resident set, MiB (the bomb of issue 31
/// took the server to 1.28 GB).
const MEMORY_BOUND_MIB: u64 = 256;

/// A legitimate device sending `n` requests, `gap` apart, while an attack runs: how many were
/// answered, each with its own image's answer (anything else fails the test).
async fn legitimate(
    model: Arc<Transformer<CandleBackend>>,
    addr: SocketAddr,
    id: &'static str,
    n: u64,
    gap: Duration,
) -> usize {
    let client = client(addr, id).await;
    let mut calls = tokio::task::JoinSet::new();
    for i in 0..n {
        let split = 1 + (i % 3) as u32;
        let (payload, logits) = activation_payload(&model, 1000 + i, split as usize);
        let c = client.clone();
        calls.spawn(async move {
            let p = c
                .infer(request(payload, split), Duration::from_secs(60))
                .await
                .unwrap_or_else(|e| panic!("{id}: request {i}: {e}"));
            assert_eq!(p.top[0].0, argmax(&logits), "{id}: request {i}'s answer");
            i
        });
        tokio::time::sleep(gap).await;
    }
    let mut seen = HashSet::new();
    while let Some(i) = calls.join_next().await {
        assert!(seen.insert(i.expect("call")), "answered twice");
    }
    seen.len()
}

/// An `svd` payload header (the tiny model's 17 x 32 unless told) at `rank`.
fn svd_header(tokens: u32, features: u32, rank: u32) -> Vec<u8> {
    let mut h = vec![b'C', b'B', 1, 1, 0];
    for v in [tokens, features, rank] {
        h.extend_from_slice(&v.to_le_bytes());
    }
    h.extend_from_slice(&0u64.to_le_bytes());
    h
}

fn raw_request(id: u64, split: u32, codec: &str, payload: Vec<u8>) -> Message {
    Message::InferRequest(InferRequest {
        request_id: id,
        split,
        codec: codec.parse().expect("codec id"),
        payload,
        budget_ms: 30_000,
        max_loss: 0.0,
        meta: None,
    })
}

fn response(m: Option<Message>) -> InferResponse {
    match m {
        Some(Message::InferResponse(r)) => r,
        other => panic!("expected an answer, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_decompression_bomb_is_refused_before_decoding() {
    let model = tiny_model();
    let (server, addr) = start(&model, config(), None).await;
    let before = peak_rss_mib();
    let legit = tokio::spawn(legitimate(
        model.clone(),
        addr,
        "legit",
        16,
        Duration::from_millis(20),
    ));
    // 25 bytes at rank 0 (decoded to a full activation before issue 31); 25 bytes declaring
    // 2^24 tokens; 4 MB of well-formed rank-1 factors that would decode to 128 MB.
    let mut amplified = svd_header(1_000_000, 32, 1);
    amplified.extend(std::iter::repeat_n(0.5f32.to_le_bytes(), 1_000_032).flatten());
    let bombs = [svd_header(17, 32, 0), svd_header(1 << 24, 32, 1), amplified];
    let mut f = raw(addr).await;
    for i in 0..24u64 {
        let payload = bombs[(i % 3) as usize].clone();
        f.send(raw_request(i, 2, "svd-r4", payload))
            .await
            .expect("send");
    }
    let mut ids = HashSet::new();
    for _ in 0..24 {
        let r = response(next(&mut f).await);
        match &r.outcome {
            Err(RemoteError::Invalid(m)) => {
                assert!(m.contains("rank 0") || m.contains("declares"), "{m}");
            }
            other => panic!("request {}: {other:?}", r.request_id),
        }
        assert!(ids.insert(r.request_id), "answered twice");
    }
    assert_eq!(legit.await.expect("legit"), 16);
    let grew = peak_rss_mib().saturating_sub(before);
    assert!(grew < MEMORY_BOUND_MIB, "peak RSS grew {grew} MiB");
    let stats = server.shutdown().await;
    assert_eq!(stats.invalid, 24, "{stats:?}");
    assert_eq!(
        stats.undecodable, 0,
        "refused on arrival, never decoded: {stats:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_silent_connections_does_not_keep_devices_out() {
    let model = tiny_model();
    let (server, addr) = start(&model, config(), None).await;
    let monitor = server.monitor();
    let before = peak_rss_mib();
    // From 127.0.0.2: connections that never say Hello, reopened in a loop, 64 held at once.
    let stop = Arc::new(AtomicBool::new(false));
    let flag = stop.clone();
    let flood = tokio::spawn(async move {
        let (mut held, mut opened) = (std::collections::VecDeque::new(), 0u64);
        while !flag.load(Ordering::Relaxed) {
            if let Ok(s) = connect_from([127, 0, 0, 2], addr).await {
                held.push_back(s);
                opened += 1;
            }
            if held.len() > 64 {
                held.pop_front();
            }
            tokio::task::yield_now().await;
        }
        opened
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    // 20 new devices from 127.0.0.1 while the flood goes on: every one gets in and is
    // answered, sooner than the flood's connections time out (hello_timeout, 3 s), so none
    // waited for an attacker's slot.
    let t = Instant::now();
    let mut devices = tokio::task::JoinSet::new();
    for d in 0..20u64 {
        let model = model.clone();
        devices.spawn(async move {
            let client = client(addr, &format!("device-{d}")).await;
            let (payload, logits) = activation_payload(&model, d, 2);
            let p = client
                .infer(request(payload, 2), Duration::from_secs(60))
                .await
                .expect("answered");
            assert_eq!(p.top[0].0, argmax(&logits));
        });
    }
    let mut admitted = 0;
    while let Some(r) = devices.join_next().await {
        r.expect("a device was kept out");
        admitted += 1;
    }
    assert_eq!(admitted, 20);
    let took = t.elapsed();
    println!("20 devices admitted and answered in {took:?} during the flood");
    assert!(took < Duration::from_millis(2500), "{took:?}");
    let health = monitor.health();
    stop.store(true, Ordering::Relaxed);
    let opened = flood.await.expect("flood");
    assert!(opened >= 100, "the flood opened only {opened} connections");
    assert!(
        matches!(&health, Health::Degraded(m) if m.contains("refusing")),
        "{health:?}"
    );
    let metrics = monitor.metrics_text();
    assert!(
        metrics.contains("collab_connections_refused_total{limit=\"max_handshaking_per_address\"}"),
        "{metrics}"
    );
    let grew = peak_rss_mib().saturating_sub(before);
    assert!(grew < MEMORY_BOUND_MIB, "peak RSS grew {grew} MiB");
    let stats = server.shutdown().await;
    assert!(stats.connections_refused > 0, "{stats:?}");
    assert_eq!(stats.done, 20, "{stats:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversized_frame_before_hello_is_refused_unbuffered() {
    let model = tiny_model();
    let (server, addr) = start(&model, config(), None).await;
    let mut f = tokio_util::codec::Framed::new(
        tokio::net::TcpStream::connect(addr).await.expect("connect"),
        collab_net::wire::FrameCodec::default(),
    );
    // 1 MiB declared, a few bytes sent: within max_frame, over the limit before Hello.
    f.get_mut()
        .write_all(&[0, 16, 0, 0, 0, 3, 1, 2, 3])
        .await
        .expect("write");
    match next(&mut f).await {
        Some(Message::Goodbye(RemoteError::FrameTooLarge { len, max })) => {
            assert_eq!((len, max), (1 << 20, 4096));
        }
        other => panic!("expected FrameTooLarge, got {other:?}"),
    }
    // After the Hello, the same size is fine.
    let mut f = raw(addr).await;
    f.send(Message::Ping(collab_net::wire::Ping {
        nonce: 3,
        pad: vec![0; 1 << 20],
    }))
    .await
    .expect("send");
    assert!(matches!(next(&mut f).await, Some(Message::Pong(_))));
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slowloris_is_closed_and_the_device_beside_it_served() {
    let model = tiny_model();
    let config = ServerConfig {
        frame_timeout: Duration::from_millis(400),
        ..config()
    };
    let (server, addr) = start(&model, config, None).await;
    let legit = tokio::spawn(legitimate(
        model.clone(),
        addr,
        "legit",
        12,
        Duration::from_millis(50),
    ));
    let mut f = raw(addr).await;
    // A 1000-byte frame, one byte every 100 ms: progress never stops, but it would take
    // 100 s; the whole-frame deadline is 0.4 s + 1000 B at 64 KiB/s.
    let t = Instant::now();
    let mut bytes = 1000u32.to_be_bytes().to_vec();
    bytes.resize(1004, 0);
    for b in bytes {
        if f.get_mut().write_all(&[b]).await.is_err() || t.elapsed() > Duration::from_secs(3) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    match next(&mut f).await {
        Some(Message::Goodbye(RemoteError::Protocol(m))) => {
            assert!(m.contains("frame too slow"), "{m}");
        }
        other => panic!("expected a slow-frame Goodbye, got {other:?}"),
    }
    assert!(t.elapsed() < Duration::from_secs(3), "{:?}", t.elapsed());
    assert_eq!(legit.await.expect("legit"), 12);
    let stats = server.shutdown().await;
    assert_eq!(stats.protocol_errors, 1, "{stats:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_client_cannot_take_a_devices_answers() {
    let model = tiny_model();
    let (server, addr) = start(&model, config(), None).await;
    let (mut victim, w) = raw_as(addr, "phone", 1, TOKEN).await;
    assert!(matches!(w, Some(Message::Welcome(_))));
    let (mut thief, w) = raw_as(addr, "phone", 2, TOKEN).await;
    assert!(matches!(w, Some(Message::Welcome(_))));
    let (mine, my_logits) = activation_payload(&model, 1, 2);
    let (theirs, their_logits) = activation_payload(&model, 2, 2);
    assert!(
        (my_logits[0] - their_logits[0]).abs() > 1e-4,
        "distinct images"
    );
    // The thief re-sends the device's request ids right after it (a "retry" of each).
    for id in 0..8 {
        victim
            .send(raw_request(id, 2, "f32", mine.clone()))
            .await
            .expect("send");
        thief
            .send(raw_request(id, 2, "f32", theirs.clone()))
            .await
            .expect("send");
    }
    let check = |r: InferResponse, logits: &[f32], who: &str| {
        let p = r.outcome.unwrap_or_else(|e| panic!("{who}: {e}"));
        let (class, logit) = p.top[0];
        assert_eq!(class, argmax(logits), "{who}");
        assert!(
            (logit - logits[class as usize]).abs() < 1e-3,
            "{who} got another's answer"
        );
        r.request_id
    };
    let (mut got, mut stolen) = (HashSet::new(), HashSet::new());
    for _ in 0..8 {
        got.insert(check(
            response(next(&mut victim).await),
            &my_logits,
            "victim",
        ));
        stolen.insert(check(
            response(next(&mut thief).await),
            &their_logits,
            "thief",
        ));
    }
    assert_eq!((got.len(), stolen.len()), (8, 8));
    let stats = server.shutdown().await;
    assert_eq!((stats.retries, stats.done), (0, 16), "{stats:?}");

    // With a token per device, a device cannot present another's token or the shared one.
    let tokens = DeviceTokens::new([
        ("phone", "phone-0123456789abcdef"),
        ("cam", "cam-0123456789abcdef"),
    ])
    .expect("tokens");
    let config = ServerConfig {
        device_tokens: Some(Arc::new(tokens)),
        ..config()
    };
    let (server, addr) = start(&model, config, None).await;
    for (id, token, welcome) in [
        ("phone", "phone-0123456789abcdef", true),
        ("cam", "cam-0123456789abcdef", true),
        ("phone", "cam-0123456789abcdef", false),
        ("phone", TOKEN, false),
        ("nobody", "phone-0123456789abcdef", false),
    ] {
        let (_, first) = raw_as(addr, id, 5, token).await;
        match first {
            Some(Message::Welcome(_)) => assert!(welcome, "{id} with another's token"),
            Some(Message::Goodbye(RemoteError::Unauthorized)) => assert!(!welcome, "{id}"),
            other => panic!("{id}: {other:?}"),
        }
    }
    let stats = server.shutdown().await;
    assert_eq!(stats.handshakes_refused, 3, "{stats:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_graceful_restart_under_load_answers_every_request_once() {
    let model = tiny_model();
    let (server, addr) = start(&model, config(), None).await;
    let client = client(addr, "phone").await;
    let mut calls = tokio::task::JoinSet::new();
    for i in 0..30u64 {
        let (payload, logits) = activation_payload(&model, i, 2);
        let c = client.clone();
        calls.spawn(async move {
            tokio::time::sleep(Duration::from_millis(i * 25)).await;
            let p = c
                .infer(request(payload, 2), Duration::from_secs(60))
                .await
                .unwrap_or_else(|e| panic!("request {i}: {e}"));
            assert_eq!(p.top[0].0, argmax(&logits), "request {i}");
            i
        });
    }
    // Shut down gracefully mid-stream (what SIGTERM does; `restart.rs` sends the signal to
    // the real binary), then start a new server on the same port.
    tokio::time::sleep(Duration::from_millis(250)).await;
    let first = server.shutdown().await;
    let (server, _) = start(&model, config(), Some(addr)).await;
    let mut seen = HashSet::new();
    while let Some(i) = calls.join_next().await {
        assert!(seen.insert(i.expect("call")), "answered twice");
    }
    assert_eq!(seen.len(), 30);
    assert!(client.reconnects() >= 1);
    let second = server.shutdown().await;
    assert_eq!(first.done + second.done, 30, "{first:?} {second:?}");
    assert!(first.shutting_down > 0 || second.done == 30 - first.done);
}

/// Reports (protocol 5) are telemetry a device sends unasked: one that no model can have
/// produced (a split past the model, a NaN latency, an error kind of 10,000 bytes) is counted
/// as a protocol error and kept off the board, and the session goes on.
#[tokio::test]
async fn bad_reports_are_counted_and_kept_off_the_board() {
    use collab_core::split::CodecId;
    use collab_net::wire::{Ping, ReportOutcome, RequestReport};

    let model = tiny_model();
    let (server, addr) = start(&model, config(), None).await;
    let mut raw = raw(addr).await;
    let good = RequestReport {
        split: Some(1),
        codec: CodecId::plain("int8").expect("codec"),
        total_ms: 40.0,
        device_ms: 10.0,
        outcome: ReportOutcome::Ok,
        deadline_ms: 300.0,
        link_mbit: 20.0,
        rtt_ms: 30.0,
    };
    let bad = [
        RequestReport {
            split: Some(999),
            ..good.clone()
        },
        RequestReport {
            total_ms: f32::NAN,
            ..good.clone()
        },
        RequestReport {
            outcome: ReportOutcome::Error("x".repeat(10_000)),
            ..good.clone()
        },
    ];
    for report in bad {
        raw.send(Message::Report(report)).await.expect("send");
    }
    raw.send(Message::Ping(Ping {
        nonce: 5,
        pad: vec![],
    }))
    .await
    .expect("ping");
    assert!(
        matches!(next(&mut raw).await, Some(Message::Pong(p)) if p.nonce == 5),
        "the session goes on"
    );
    assert_eq!(server.stats().protocol_errors, 3);
    let row = |s: &collab_net::server::board::BoardSnapshot| {
        s.devices.iter().find(|d| d.id == "raw").map(|d| d.finished)
    };
    assert_eq!(row(&server.monitor().board_snapshot()), Some(0));
    raw.send(Message::Report(good)).await.expect("send");
    raw.send(Message::Ping(Ping {
        nonce: 6,
        pad: vec![],
    }))
    .await
    .expect("ping");
    assert!(matches!(next(&mut raw).await, Some(Message::Pong(_))));
    assert_eq!(
        row(&server.monitor().board_snapshot()),
        Some(1),
        "a good report counts"
    );
    server.shutdown().await;
}
