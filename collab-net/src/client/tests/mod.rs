//! The client against hand-written fake servers over in-process pipes (and TCP where the
//! socket matters): handshake, round trips, pipelining, refusals, reconnect-and-retry,
//! timeouts, probes, pushed load and protocol violations.

mod device;
mod faults;
mod pure;

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use tokio_util::codec::Framed;

use super::*;
use crate::transport::{
    BoxStream, InProcess, InProcessAcceptor, Link, Listener, Shaped, Tcp, in_process,
};
use crate::wire::{
    DEFAULT_MAX_FRAME, FrameCodec, Hello, InferRequest, InferResponse, Message, PROTOCOL_VERSION,
    Ping, Pong, Prediction, RemoteError, ServerLoad, Welcome,
};

type ServerConn = Framed<BoxStream, FrameCodec>;

fn welcome() -> Welcome {
    Welcome {
        model_id: "m".into(),
        layers: 4,
        tokens: 5,
        features: 8,
        max_frame: DEFAULT_MAX_FRAME as u32,
    }
}

fn config() -> ClientConfig {
    ClientConfig {
        device_id: "d1".into(),
        model_id: "m".into(),
        auth_token: "t".into(),
        connect_timeout: Duration::from_secs(1),
        backoff: Backoff {
            initial: Duration::from_millis(5),
            max: Duration::from_millis(40),
            factor: 2.0,
        },
        max_attempts: 4,
        ..ClientConfig::default()
    }
}

fn outgoing(payload: Vec<u8>) -> Outgoing {
    Outgoing {
        split: 2,
        codec: "f32".parse().expect("codec id"),
        payload,
        budget: Duration::from_micros(250_400),
        max_loss: 0.01,
        meta: None,
    }
}

const LONG: Duration = Duration::from_secs(10);

/// Accepts one connection and reads its Hello.
async fn accept(acceptor: &mut InProcessAcceptor) -> (ServerConn, Hello) {
    let (stream, _) = acceptor.accept().await.expect("accept");
    let mut conn = Framed::new(stream, FrameCodec::default());
    match conn.next().await {
        Some(Ok(Message::Hello(h))) => (conn, h),
        other => panic!("expected Hello, got {other:?}"),
    }
}

/// Accepts one connection and welcomes it.
async fn open(acceptor: &mut InProcessAcceptor) -> ServerConn {
    let (mut conn, _) = accept(acceptor).await;
    conn.send(Message::Welcome(welcome()))
        .await
        .expect("welcome");
    conn
}

/// A connected client and the server's end.
async fn session() -> (DeviceClient, ServerConn, InProcessAcceptor) {
    let (transport, mut acceptor) = in_process();
    let (client, conn) = tokio::join!(
        DeviceClient::connect(Arc::new(transport), config()),
        open(&mut acceptor)
    );
    (client.expect("connect"), conn, acceptor)
}

/// The next request, answering pings on the way.
async fn next_request(conn: &mut ServerConn) -> InferRequest {
    loop {
        match conn.next().await {
            Some(Ok(Message::InferRequest(r))) => return r,
            Some(Ok(Message::Ping(p))) => {
                let pong = Message::Pong(Pong { nonce: p.nonce });
                conn.send(pong).await.expect("pong");
            }
            other => panic!("expected a request, got {other:?}"),
        }
    }
}

/// An answer naming the request: class = first payload byte, logit = payload length.
fn answer(r: &InferRequest) -> Message {
    let class = r.payload.first().copied().map_or(0, u32::from);
    Message::InferResponse(InferResponse {
        request_id: r.request_id,
        outcome: Ok(Prediction {
            top: vec![(class, r.payload.len() as f32)],
            embedding: vec![],
            server_ms: 1.5,
            batch: 3,
        }),
    })
}

#[tokio::test]
async fn handshake_sends_hello_and_keeps_the_welcome() {
    let (transport, mut acceptor) = in_process();
    let connecting = tokio::spawn(DeviceClient::connect(Arc::new(transport), config()));
    let (mut conn, hello) = accept(&mut acceptor).await;
    assert_eq!(
        hello,
        Hello {
            // Drawn by the client; what matters is that it is sent (and kept: see the
            // reconnection tests).
            instance: hello.instance,
            device_id: "d1".into(),
            model_id: "m".into(),
            protocol_version: PROTOCOL_VERSION,
            auth_token: "t".into(),
        }
    );
    // A push before the Welcome does not confuse the handshake.
    conn.send(Message::ServerLoad(load())).await.expect("load");
    conn.send(Message::Welcome(welcome()))
        .await
        .expect("welcome");
    let client = connecting.await.expect("task").expect("connect");
    assert_eq!(client.welcome(), welcome());
    assert_eq!(client.reconnects(), 0);
    client.close().await;
    // Closing closes the connection.
    assert!(conn.next().await.is_none());
}

fn load() -> ServerLoad {
    ServerLoad {
        queues: vec![1, 0, 2, 0, 0],
        position_ms: vec![1.0, 2.0, 2.0, 2.0, 0.5],
        in_flight: 3,
        capacity: 64,
    }
}

#[tokio::test]
async fn a_request_round_trips_with_its_fields() {
    let (client, mut conn, _acceptor) = session().await;
    let server = tokio::spawn(async move {
        let r = next_request(&mut conn).await;
        conn.send(answer(&r)).await.expect("answer");
        (r, conn)
    });
    let p = client
        .infer(outgoing(vec![7, 1, 2]), LONG)
        .await
        .expect("answer");
    assert_eq!(p.top, vec![(7, 3.0)]);
    assert_eq!((p.server_ms, p.batch), (1.5, 3));
    let (r, _conn) = server.await.expect("server");
    assert_eq!(
        (r.split, r.codec.to_string().as_str(), r.max_loss),
        (2, "f32", 0.01)
    );
    // 250.4 ms rounds up: the server never gets less time than the caller gave.
    assert_eq!(r.budget_ms, 251);
    assert_eq!(r.payload, vec![7, 1, 2]);
}

#[tokio::test]
async fn pipelined_calls_are_matched_by_id() {
    let (client, mut conn, _acceptor) = session().await;
    let n = 16usize;
    let server = tokio::spawn(async move {
        let mut got = Vec::new();
        for _ in 0..n {
            got.push(next_request(&mut conn).await);
        }
        // Answer in the reverse order of arrival.
        for r in got.iter().rev() {
            conn.send(answer(r)).await.expect("answer");
        }
        (got, conn)
    });
    let calls: Vec<_> = (0..n)
        .map(|i| {
            let c = client.clone();
            tokio::spawn(async move { c.infer(outgoing(vec![i as u8; i + 1]), LONG).await })
        })
        .collect();
    for (i, call) in calls.into_iter().enumerate() {
        let p = call.await.expect("task").expect("answer");
        assert_eq!(p.top, vec![(i as u32, (i + 1) as f32)]);
    }
    let (got, _conn) = server.await.expect("server");
    let mut ids: Vec<u64> = got.iter().map(|r| r.request_id).collect();
    ids.sort_unstable();
    ids.dedup();
    assert_eq!(ids.len(), n, "every request has its own id");
}

/// Serves pings until the connection closes.
async fn echo_pings(mut conn: ServerConn) {
    while let Some(Ok(m)) = conn.next().await {
        if let Message::Ping(Ping { nonce, .. }) = m
            && conn.send(Message::Pong(Pong { nonce })).await.is_err()
        {
            return;
        }
    }
}

#[tokio::test]
async fn a_probe_measures_the_shaped_link() {
    let (transport, mut acceptor) = in_process();
    // 8 Mbit/s (1 MB/s) and 20 ms round trip.
    let shaped: Shaped<InProcess> = Shaped::new(transport, Link::mbit(8.0, 20.0), 3);
    let (client, conn) = tokio::join!(
        DeviceClient::connect(Arc::new(shaped), config()),
        open(&mut acceptor)
    );
    let client = client.expect("connect");
    let server = tokio::spawn(echo_pings(conn));
    let link = client.probe(64 * 1024).await.expect("probe");
    assert!(link.rtt >= Duration::from_millis(20), "{link:?}");
    assert!(link.rtt < Duration::from_millis(200), "{link:?}");
    assert!((0.5e6..2e6).contains(&link.bandwidth), "{link:?}");
    let rtt_only = client.probe(0).await.expect("probe");
    assert!(rtt_only.bandwidth.is_infinite());
    client.close().await;
    server.await.expect("server");
}

#[tokio::test]
async fn pushed_load_is_kept_and_server_pings_are_answered() {
    let (client, mut conn, _acceptor) = session().await;
    let server = tokio::spawn(async move {
        conn.send(Message::ServerLoad(load())).await.expect("load");
        conn.send(Message::Ping(Ping {
            nonce: 9,
            pad: vec![0; 100],
        }))
        .await
        .expect("ping");
        // The pong and the request may come in either order.
        let (mut pong, mut request) = (None, None);
        while pong.is_none() || request.is_none() {
            match conn.next().await {
                Some(Ok(Message::Pong(p))) => pong = Some(p),
                Some(Ok(Message::InferRequest(r))) => request = Some(r),
                other => panic!("unexpected {other:?}"),
            }
        }
        assert_eq!(pong, Some(Pong { nonce: 9 }));
        if let Some(r) = request {
            conn.send(answer(&r)).await.expect("answer");
        }
        conn
    });
    // The load came before the answer on the same stream, so it is in by now.
    client.infer(outgoing(vec![1]), LONG).await.expect("answer");
    assert_eq!(client.server_load(), Some(load()));
    let _conn = server.await.expect("server");
}

/// A server's settings out of range (a hostile or broken server) are dropped and the
/// session goes on; valid ones merge into `settings()`.
#[tokio::test]
async fn settings_out_of_range_are_dropped_and_valid_ones_kept() {
    use crate::wire::DeviceSettings;
    let (client, mut conn, _acceptor) = session().await;
    let bad = DeviceSettings {
        deadline_ms: Some(-5.0),
        max_loss: Some(0.5),
        ..DeviceSettings::default()
    };
    let good = DeviceSettings {
        max_loss: Some(0.05),
        ..DeviceSettings::default()
    };
    let server = tokio::spawn(async move {
        conn.send(Message::Settings(bad)).await.expect("bad");
        conn.send(Message::Settings(good)).await.expect("good");
        let r = next_request(&mut conn).await;
        conn.send(answer(&r)).await.expect("answer");
        conn
    });
    // Both settings came before the answer on the same stream, so they are in by now.
    client
        .infer(outgoing(vec![1]), LONG)
        .await
        .expect("answer: the session goes on");
    assert_eq!(
        *client.settings().borrow(),
        good,
        "the bad one is dropped whole"
    );
    let _conn = server.await.expect("server");
}

#[tokio::test]
async fn calls_on_a_closed_client_fail_cleanly() {
    let (client, mut conn, _acceptor) = session().await;
    let other = client.clone();
    let pending = tokio::spawn({
        let c = client.clone();
        async move { c.infer(outgoing(vec![1]), LONG).await }
    });
    next_request(&mut conn).await;
    client.close().await;
    let r = pending.await.expect("task");
    assert!(
        matches!(r, Err(ClientError::Unreachable { attempts: 0, .. })),
        "{r:?}"
    );
    let r = other.infer(outgoing(vec![1]), LONG).await;
    assert!(
        matches!(r, Err(ClientError::Unreachable { attempts: 0, .. })),
        "{r:?}"
    );
}
