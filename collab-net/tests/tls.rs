//! TLS between device and cloud over real loopback TCP (issue 31), with a CA and a server
//! certificate made at test time (rcgen): a device trusting the CA is served; a clear-text
//! client, a device trusting another CA or expecting another name, and a peer that never
//! starts its TLS handshake are not.

mod common;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use collab_net::client::{ClientConfig, DeviceClient, Outgoing};
use collab_net::server::ServerConfig;
use collab_net::tls::{TlsTransport, client_config, server_config};
use collab_net::transport::{Tcp, Transport};
use common::*;
use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
use tokio::io::AsyncReadExt;

/// A CA, and a certificate for `localhost` / `127.0.0.1` it signed, as PEM files in `dir`:
/// `(ca.pem, server.pem, server.key)`.
fn make_pki(dir: &Path, tag: &str) -> (PathBuf, PathBuf, PathBuf) {
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("ca params");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca_key = KeyPair::generate().expect("ca key");
    let ca_cert = ca_params.self_signed(&ca_key).expect("ca cert");
    let issuer = Issuer::new(ca_params, ca_key);
    let params = CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()])
        .expect("params");
    let key = KeyPair::generate().expect("key");
    let cert = params.signed_by(&key, &issuer).expect("signed");
    let paths = (
        dir.join(format!("{tag}-ca.pem")),
        dir.join(format!("{tag}-server.pem")),
        dir.join(format!("{tag}-server.key")),
    );
    std::fs::write(&paths.0, ca_cert.pem()).expect("write");
    std::fs::write(&paths.1, cert.pem()).expect("write");
    std::fs::write(&paths.2, key.serialize_pem()).expect("write");
    paths
}

fn device_config() -> ClientConfig {
    ClientConfig {
        max_attempts: 2,
        ..common::client_config("phone")
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn devices_trusting_the_ca_are_served_over_tls_and_others_are_not() {
    let dir = std::env::temp_dir().join(format!("collab-tls-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let (ca, cert, key) = make_pki(&dir, "good");
    let (other_ca, _, _) = make_pki(&dir, "other");
    let config = ServerConfig {
        tls: Some(server_config(&cert, &key).expect("server tls")),
        hello_timeout: Duration::from_millis(500),
        ..config()
    };
    let model = tiny_model();
    let (server, addr) = start(&model, config, None).await;
    let tls = |ca: &Path, name: &str| -> Arc<dyn Transport> {
        Arc::new(
            TlsTransport::new(
                Arc::new(Tcp::new(addr)),
                client_config(ca).expect("client tls"),
                name,
            )
            .expect("transport"),
        )
    };

    // A device trusting the CA: served, with its own answer.
    let client = DeviceClient::connect(tls(&ca, "localhost"), device_config())
        .await
        .expect("TLS session");
    let (payload, logits) = activation_payload(&model, 3, 2);
    let request = Outgoing {
        split: 2,
        codec: "f32".parse().expect("codec"),
        payload,
        budget: Duration::from_secs(30),
        max_loss: 0.0,
        meta: None,
    };
    let p = client
        .infer(request, Duration::from_secs(30))
        .await
        .expect("answer");
    assert_eq!(p.top[0].0, argmax(&logits));
    // The address works as a name too.
    let by_ip = DeviceClient::connect(tls(&ca, "127.0.0.1"), device_config()).await;
    assert!(by_ip.is_ok(), "{by_ip:?}");

    // Not served: another CA, another name, clear text.
    for (ca, name) in [(&other_ca, "localhost"), (&ca, "example.com")] {
        let refused = DeviceClient::connect(tls(ca, name), device_config()).await;
        assert!(refused.is_err(), "{name}: connected");
    }
    let (_, first) = raw_as(addr, "phone", 1, TOKEN).await;
    assert!(first.is_none(), "a clear-text Hello got {first:?}");

    // A peer that never starts the handshake is closed after hello_timeout.
    let mut silent = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let mut buf = [0u8; 16];
    let read = tokio::time::timeout(Duration::from_secs(3), silent.read(&mut buf)).await;
    assert!(
        matches!(read, Ok(Ok(0)) | Ok(Err(_))),
        "not closed: {read:?}"
    );
    client.close().await;
    let stats = server.shutdown().await;
    assert_eq!(stats.done, 1, "{stats:?}");
    assert!(stats.handshakes_refused >= 4, "{stats:?}");
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn unreadable_or_mismatched_pem_files_say_which() {
    let dir = std::env::temp_dir().join(format!("collab-tls-bad-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let (ca, cert, _) = make_pki(&dir, "a");
    let (_, _, other_key) = make_pki(&dir, "b");
    let e = server_config(&cert, &other_key).expect_err("key of another certificate");
    assert!(e.to_string().contains("a-server.pem"), "{e}");
    let e = client_config(&dir.join("missing.pem")).expect_err("missing");
    assert!(e.to_string().contains("missing.pem"), "{e}");
    let e = server_config(&ca, &ca).expect_err("a certificate is no key");
    assert!(e.to_string().contains("private key"), "{e}");
    std::fs::remove_dir_all(&dir).ok();
}
