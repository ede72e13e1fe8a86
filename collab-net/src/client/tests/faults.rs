//! Faults: refusals, lost connections and retries, unreachable servers, silence, protocol
//! violations and oversized requests. Every call still ends with one result or one error.

use super::*;

#[tokio::test]
async fn a_refusal_is_final_and_not_retried() {
    let (transport, mut acceptor) = in_process();
    let connecting = tokio::spawn(DeviceClient::connect(Arc::new(transport), config()));
    let (mut conn, _) = accept(&mut acceptor).await;
    conn.send(Message::Goodbye(RemoteError::Unauthorized))
        .await
        .expect("bye");
    let r = connecting.await.expect("task");
    assert!(
        matches!(r, Err(ClientError::Refused(RemoteError::Unauthorized))),
        "{r:?}"
    );
    assert_eq!(
        r.as_ref().map(|_| ()).expect_err("refused").kind(),
        "refused"
    );
    // No second attempt.
    let again = tokio::time::timeout(Duration::from_millis(100), acceptor.accept()).await;
    assert!(
        !matches!(again, Ok(Ok(_))),
        "the client tried again after a refusal"
    );

    // Refused mid-session: the pending call and every later one.
    let (client, mut conn, _acceptor) = session().await;
    let server = tokio::spawn(async move {
        next_request(&mut conn).await;
        let wrong = RemoteError::WrongModel {
            expected: "x".into(),
            got: "m".into(),
        };
        conn.send(Message::Goodbye(wrong)).await.expect("bye");
        conn
    });
    let r = client.infer(outgoing(vec![1]), LONG).await;
    assert!(
        matches!(r, Err(ClientError::Refused(RemoteError::WrongModel { .. }))),
        "{r:?}"
    );
    let _conn = server.await.expect("server");
    let r = client.infer(outgoing(vec![1]), LONG).await;
    assert!(matches!(r, Err(ClientError::Refused(_))), "{r:?}");
    assert!(matches!(
        client.probe(10).await,
        Err(ClientError::Refused(_))
    ));
}

/// How the first connection ends after the server read the request.
#[derive(Clone, Copy, Debug)]
enum Loss {
    Drop,
    ShuttingDown,
    Overloaded,
}

#[tokio::test]
async fn a_lost_connection_is_retried_with_the_same_request_id() {
    for loss in [Loss::Drop, Loss::ShuttingDown, Loss::Overloaded] {
        let (client, mut conn, mut acceptor) = session().await;
        let server = tokio::spawn(async move {
            let first = next_request(&mut conn).await;
            match loss {
                Loss::Drop => {}
                Loss::ShuttingDown => {
                    let bye = Message::Goodbye(RemoteError::ShuttingDown);
                    conn.send(bye).await.expect("bye");
                }
                Loss::Overloaded => {
                    let over = RemoteError::Overloaded {
                        in_flight: 9,
                        capacity: 9,
                    };
                    conn.send(Message::Goodbye(over)).await.expect("bye");
                }
            }
            drop(conn);
            let mut conn = open(&mut acceptor).await;
            let retry = next_request(&mut conn).await;
            conn.send(answer(&retry)).await.expect("answer");
            (first, retry, conn, acceptor)
        });
        let p = client.infer(outgoing(vec![42, 0]), LONG).await;
        let (first, retry, _conn, _acceptor) = server.await.expect("server");
        assert_eq!(
            p.expect("answered after the reconnect").top,
            vec![(42, 2.0)]
        );
        assert_eq!(
            first, retry,
            "{loss:?}: the retry is the same request, same id"
        );
        assert_eq!(client.reconnects(), 1, "{loss:?}");
    }
}

#[tokio::test]
async fn nothing_listening_is_unreachable_after_max_attempts() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    drop(listener);
    let start = Instant::now();
    let r = DeviceClient::connect(Arc::new(Tcp::new(addr)), config()).await;
    match r {
        Err(ClientError::Unreachable { attempts, last }) => {
            assert_eq!(attempts, 4);
            assert!(last.contains(&addr.to_string()), "{last}");
        }
        other => panic!("expected Unreachable, got {other:?}"),
    }
    // Three backoff waits of at least 2.5, 5 and 10 ms.
    assert!(start.elapsed() >= Duration::from_millis(17));

    // A server that goes away for good with a request pending: the call fails, not hangs.
    let (client, mut conn, acceptor) = session().await;
    let server = tokio::spawn(async move {
        next_request(&mut conn).await;
        drop(acceptor);
    });
    let r = client.infer(outgoing(vec![1]), LONG).await;
    server.await.expect("server");
    assert!(
        matches!(r, Err(ClientError::Unreachable { attempts: 4, .. })),
        "{r:?}"
    );
}

#[tokio::test]
async fn a_silent_server_times_out_and_the_client_stays_usable() {
    let (client, mut conn, _acceptor) = session().await;
    let server = tokio::spawn(async move {
        let ignored = next_request(&mut conn).await;
        let second = next_request(&mut conn).await;
        conn.send(answer(&second)).await.expect("answer");
        // The late answer to the first request is dropped quietly.
        conn.send(answer(&ignored)).await.expect("late answer");
        conn
    });
    let after = Duration::from_millis(80);
    let r = client.infer(outgoing(vec![1]), after).await;
    assert_eq!(r, Err(ClientError::Timeout { after }));
    let p = client.infer(outgoing(vec![2]), LONG).await.expect("second");
    assert_eq!(p.top[0].0, 2);
    let _conn = server.await.expect("server");
    let p = client
        .infer(outgoing(vec![3]), Duration::from_millis(200))
        .await;
    assert!(matches!(p, Err(ClientError::Timeout { .. })), "{p:?}");
}

#[tokio::test]
async fn protocol_violations_fail_the_call_and_the_next_call_reconnects() {
    let (client, mut conn, mut acceptor) = session().await;
    let server = tokio::spawn(async move {
        next_request(&mut conn).await;
        conn.send(Message::Welcome(welcome()))
            .await
            .expect("odd welcome");
        // The client says why it closes.
        let bye = conn.next().await;
        assert!(
            matches!(bye, Some(Ok(Message::Goodbye(RemoteError::Protocol(_))))),
            "{bye:?}"
        );
        // A frame of another version on the next connection.
        let mut conn = open(&mut acceptor).await;
        next_request(&mut conn).await;
        let mut bad = 4u32.to_be_bytes().to_vec();
        bad.extend([0, 99, 1, 2]);
        tokio::io::AsyncWriteExt::write_all(conn.get_mut(), &bad)
            .await
            .expect("bad");
        let bye = conn.next().await;
        assert!(
            matches!(
                bye,
                Some(Ok(Message::Goodbye(RemoteError::UnsupportedVersion {
                    got: 99,
                    ..
                })))
            ),
            "{bye:?}"
        );
        let mut conn = open(&mut acceptor).await;
        let r = next_request(&mut conn).await;
        conn.send(answer(&r)).await.expect("answer");
        (conn, acceptor)
    });
    let r = client.infer(outgoing(vec![1]), LONG).await;
    assert!(
        matches!(&r, Err(ClientError::Protocol(m)) if m.contains("Welcome")),
        "{r:?}"
    );
    let r = client.infer(outgoing(vec![1]), LONG).await;
    assert!(
        matches!(&r, Err(ClientError::Protocol(m)) if m.contains("version")),
        "{r:?}"
    );
    let p = client
        .infer(outgoing(vec![5]), LONG)
        .await
        .expect("after reconnecting");
    assert_eq!(p.top[0].0, 5);
    assert_eq!(client.reconnects(), 2);
    let _ = server.await.expect("server");
}

#[tokio::test]
async fn requests_over_the_servers_frame_limit_fail_locally() {
    let (transport, mut acceptor) = in_process();
    let small = async {
        let (mut conn, _) = accept(&mut acceptor).await;
        let w = Welcome {
            max_frame: 1000,
            ..welcome()
        };
        conn.send(Message::Welcome(w)).await.expect("welcome");
        conn
    };
    let (client, mut conn) =
        tokio::join!(DeviceClient::connect(Arc::new(transport), config()), small);
    let client = client.expect("connect");
    let server = tokio::spawn(async move {
        loop {
            match conn.next().await {
                Some(Ok(Message::Ping(p))) => {
                    conn.send(Message::Pong(Pong { nonce: p.nonce }))
                        .await
                        .expect("pong");
                }
                Some(Ok(Message::InferRequest(r))) => {
                    conn.send(answer(&r)).await.expect("answer");
                    return conn;
                }
                other => panic!("unexpected {other:?}"),
            }
        }
    });
    let r = client.infer(outgoing(vec![0; 5000]), LONG).await;
    assert!(
        matches!(&r, Err(ClientError::Local(m)) if m.contains("1000")),
        "{r:?}"
    );
    let p = client.probe(5000).await;
    assert!(matches!(p, Err(ClientError::Local(_))), "{p:?}");
    let p = client
        .infer(outgoing(vec![4; 10]), LONG)
        .await
        .expect("small request");
    assert_eq!(p.top[0].0, 4);
    let _conn = server.await.expect("server");
}
