//! Sessions: the handshake, answers equal to the whole model's, refusals that keep the
//! session, and violations that end it with a typed Goodbye.

use std::time::Duration;

use tokio::io::AsyncWriteExt;

use collab_policies::batch::ServerOnlyConfig;

use super::*;
use crate::wire::{Ping, Pong};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handshake_welcomes_a_device_with_the_model_facts() {
    let f = start(config());
    let (_conn, welcome) = session(&f.transport, "d0").await;
    assert_eq!(
        welcome,
        Welcome {
            model_id: MODEL_ID.into(),
            layers: 3,
            tokens: 17,
            features: 32,
            max_frame: crate::wire::DEFAULT_MAX_FRAME as u32,
        }
    );
    let facts = f.server.facts();
    assert_eq!(
        (facts.layers, facts.tokens, facts.features, facts.input),
        (
            3,
            17,
            32,
            crate::wire::validate::InputFacts::Image { side: SIDE }
        )
    );
    f.server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handshake_refusals_say_why_and_close() {
    let f = start(config());
    type Check = fn(&RemoteError) -> bool;
    let cases: Vec<(Message, Check)> = vec![
        (
            Message::Hello(Hello {
                instance: 7,
                auth_token: "wrong".into(),
                ..hello("d")
            }),
            |e| matches!(e, RemoteError::Unauthorized),
        ),
        (
            Message::Hello(Hello {
                instance: 7,
                model_id: "other".into(),
                ..hello("d")
            }),
            |e| matches!(e, RemoteError::WrongModel { expected, got } if expected == MODEL_ID && got == "other"),
        ),
        (
            Message::Hello(Hello {
                instance: 7,
                protocol_version: 99,
                ..hello("d")
            }),
            |e| {
                matches!(
                    e,
                    RemoteError::UnsupportedVersion {
                        got: 99,
                        supported: PROTOCOL_VERSION
                    }
                )
            },
        ),
        (
            Message::Ping(Ping {
                nonce: 1,
                pad: vec![],
            }),
            |e| matches!(e, RemoteError::Protocol(m) if m.contains("Hello")),
        ),
    ];
    let n = cases.len() as u64;
    for (first, expected) in cases {
        let mut conn = connect(&f.transport).await;
        send(&mut conn, first).await;
        match recv(&mut conn).await {
            Some(Message::Goodbye(e)) => assert!(expected(&e), "unexpected reason {e:?}"),
            other => panic!("expected a Goodbye, got {other:?}"),
        }
        assert!(closed(&mut conn).await, "the connection stays open");
    }
    // A wrong token is refused before the model is compared: nothing leaks.
    let mut conn = connect(&f.transport).await;
    let both_wrong = Hello {
        instance: 7,
        auth_token: "x".into(),
        model_id: "y".into(),
        ..hello("d")
    };
    send(&mut conn, Message::Hello(both_wrong)).await;
    assert_eq!(
        recv(&mut conn).await,
        Some(Message::Goodbye(RemoteError::Unauthorized))
    );
    assert_eq!(f.server.stats().handshakes_refused, n + 1);
    f.server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answers_equal_the_whole_model_at_every_split() {
    let f = start(config());
    let (mut conn, _) = session(&f.transport, "d0").await;
    let rgb = pixels(1);
    let logits = reference(&f.model, &rgb);
    for split in 1..=3u32 {
        let payload = activation(&f.model, &rgb, split as usize);
        send(&mut conn, request(u64::from(split), split, "f32", payload)).await;
        let r = response(&mut conn).await;
        assert_eq!(r.request_id, u64::from(split));
        let p = r.outcome.expect("a prediction");
        assert_matches(&p, &logits);
        assert!(p.server_ms >= 0.0);
    }
    // Server-only: the raw pixels at split 0.
    send(&mut conn, request(10, 0, RGB8, rgb.clone())).await;
    let r = response(&mut conn).await;
    assert_matches(&r.outcome.expect("a prediction"), &logits);
    let stats = f.server.shutdown().await;
    assert_eq!((stats.accepted, stats.done), (4, 4), "{stats:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_requests_are_refused_and_the_session_goes_on() {
    let f = start(config());
    let (mut conn, _) = session(&f.transport, "d0").await;
    let good = activation(&f.model, &pixels(2), 2);
    let bad: Vec<(Message, &str)> = vec![
        (request(1, 2, "f32", vec![1, 2, 3]), "split 2"),
        (request(2, 9, "f32", good.clone()), "split 9"),
        (request(3, 2, "zstd", good.clone()), "unknown codec `zstd`"),
        (request(4, 0, RGB8, vec![0; 10]), "rgb8"),
        (
            request(
                5,
                1,
                "f32",
                activation(&f.model, &pixels(2), 1)[..40].to_vec(),
            ),
            "split 1",
        ),
        (
            Message::InferRequest(InferRequest {
                request_id: 6,
                split: 2,
                codec: "f32".parse().expect("codec id"),
                payload: good.clone(),
                budget_ms: 0,
                max_loss: 0.0,
                meta: None,
            }),
            "budget",
        ),
    ];
    let n = bad.len() as u64;
    for (message, needle) in bad {
        send(&mut conn, message).await;
        let r = response(&mut conn).await;
        match refusal(&r) {
            RemoteError::Invalid(m) => assert!(m.contains(needle), "{m} lacks {needle}"),
            e => panic!("expected Invalid, got {e:?}"),
        }
    }
    send(
        &mut conn,
        Message::Ping(Ping {
            nonce: 42,
            pad: vec![7; 1000],
        }),
    )
    .await;
    assert_eq!(
        recv(&mut conn).await,
        Some(Message::Pong(Pong { nonce: 42 }))
    );
    send(&mut conn, request(7, 2, "f32", good)).await;
    assert!(response(&mut conn).await.outcome.is_ok());
    let stats = f.server.shutdown().await;
    // The cut payload (request 5) has a whole header declaring the model's shape: admitted and
    // refused by the compute thread, which decodes. Request 1's three bytes hold no header,
    // so it was refused on arrival with the others.
    assert_eq!(
        (stats.invalid, stats.undecodable, stats.accepted, stats.done),
        (n, 1, 2, 1),
        "{stats:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_only_policy_refuses_activations() {
    let f = start(ServerConfig {
        policy: Arc::new(ServerOnlyConfig { budget: 8 }),
        ..config()
    });
    let (mut conn, _) = session(&f.transport, "d0").await;
    let rgb = pixels(3);
    send(
        &mut conn,
        request(1, 1, "f32", activation(&f.model, &rgb, 1)),
    )
    .await;
    let r = response(&mut conn).await;
    assert!(
        matches!(refusal(&r), RemoteError::Invalid(m) if m.contains("server-only")),
        "{r:?}"
    );
    send(&mut conn, request(2, 0, RGB8, rgb.clone())).await;
    assert_matches(
        &response(&mut conn).await.outcome.expect("ok"),
        &reference(&f.model, &rgb),
    );
    f.server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn violations_in_session_end_it_with_a_typed_goodbye() {
    let f = start(ServerConfig {
        max_frame: 4096,
        ..config()
    });
    // Hello twice.
    let (mut conn, _) = session(&f.transport, "d0").await;
    send(&mut conn, Message::Hello(hello("d0"))).await;
    assert!(
        matches!(recv(&mut conn).await, Some(Message::Goodbye(RemoteError::Protocol(m))) if m.contains("Hello"))
    );
    assert!(closed(&mut conn).await);
    // A frame over the limit is refused from its length alone.
    let (mut conn, _) = session(&f.transport, "d1").await;
    conn.get_mut()
        .write_all(&100_000u32.to_be_bytes())
        .await
        .expect("write");
    assert_eq!(
        recv(&mut conn).await,
        Some(Message::Goodbye(RemoteError::FrameTooLarge {
            len: 100_000,
            max: 4096
        }))
    );
    // A body that is not a message.
    let (mut conn, _) = session(&f.transport, "d2").await;
    conn.get_mut()
        .write_all(&[0, 0, 0, 6, 0, PROTOCOL_VERSION as u8, 250, 250, 250, 250])
        .await
        .expect("write");
    assert!(matches!(
        recv(&mut conn).await,
        Some(Message::Goodbye(RemoteError::Protocol(_)))
    ));
    // The server still serves.
    let (mut conn, _) = session(&f.transport, "d3").await;
    send(&mut conn, request(1, 0, RGB8, pixels(4))).await;
    assert!(response(&mut conn).await.outcome.is_ok());
    let stats = f.server.shutdown().await;
    assert_eq!(stats.protocol_errors, 3, "{stats:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalls_and_silence_are_closed_in_time() {
    let f = start(ServerConfig {
        hello_timeout: Duration::from_millis(200),
        frame_timeout: Duration::from_millis(200),
        ..config()
    });
    // No Hello at all.
    let mut silent = connect(&f.transport).await;
    let t = std::time::Instant::now();
    assert!(
        matches!(recv(&mut silent).await, Some(Message::Goodbye(RemoteError::Protocol(m))) if m.contains("no Hello"))
    );
    assert!(t.elapsed() < Duration::from_secs(2));
    // Half a frame, then nothing; a frame in pieces is fine while it is whole in time, and
    // one trickling in too slowly is closed even though bytes keep arriving.
    let (mut stalled, _) = session(&f.transport, "stall").await;
    let (mut slow, _) = session(&f.transport, "slow").await;
    let (mut trickle, _) = session(&f.transport, "trickle").await;
    stalled
        .get_mut()
        .write_all(&[0, 0, 0, 40, 0, 1])
        .await
        .expect("write");
    let frame = crate::wire::encode_frame(&Message::Ping(Ping {
        nonce: 9,
        pad: vec![0; 20],
    }))
    .expect("frame");
    for piece in frame.chunks(frame.len().div_ceil(3)) {
        slow.get_mut().write_all(piece).await.expect("write");
        tokio::time::sleep(Duration::from_millis(40)).await;
    }
    assert_eq!(
        recv(&mut slow).await,
        Some(Message::Pong(Pong { nonce: 9 }))
    );
    let t = std::time::Instant::now();
    for byte in &frame {
        if trickle.get_mut().write_all(&[*byte]).await.is_err() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    match recv(&mut trickle).await {
        Some(Message::Goodbye(RemoteError::Protocol(m))) => {
            assert!(m.contains("frame too slow"), "{m}")
        }
        other => panic!("expected a slow-frame Goodbye, got {other:?}"),
    }
    assert!(
        t.elapsed() < Duration::from_millis(900),
        "{:?}",
        t.elapsed()
    );
    match recv(&mut stalled).await {
        Some(Message::Goodbye(RemoteError::Protocol(m))) => {
            assert!(m.contains("stalled mid-frame"), "{m}")
        }
        other => panic!("expected a stall Goodbye, got {other:?}"),
    }
    assert!(closed(&mut stalled).await);
    f.server.shutdown().await;
}
