//! The dashboard over real sockets: a device behind an emulated link reports its requests,
//! the page's board shows them, and an operator's settings posted to the dashboard reach the
//! device over its session and move its split point. Refusals are typed: no token, a wrong
//! one, a value out of range, an unknown device, a server without operator token.

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use collab_core::split::{CodecId, Conditions, SplitChoice, SplitStrategy};
use collab_net::auth::Secret;
use collab_net::client::{Device, DeviceClient, DeviceConfig};
use collab_net::dashboard::serve_dashboard;
use collab_net::server::ServerMonitor;
use collab_net::transport::{Link, Shaped, Tcp, Transport};
use common::{SIDE, client_config, config, pixels, start, tiny_model};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// Server-only on a fast link (above 1 MB/s), device-only on a slow one: a strategy of the
/// user's, so the test sees the link estimate move the split.
#[derive(Debug)]
struct ByBandwidth {
    layers: usize,
}

impl SplitStrategy for ByBandwidth {
    fn name(&self) -> String {
        "by-bandwidth".into()
    }

    fn choose(&self, c: &Conditions) -> collab_core::Result<SplitChoice> {
        let fast = c.bandwidth > 1e6;
        Ok(SplitChoice {
            split: if fast { 0 } else { self.layers },
            codec: if fast {
                CodecId::raw()
            } else {
                CodecId::none()
            },
            rho: 1.0,
            bytes: 0,
            latency: 0.0,
            loss: 0.0,
        })
    }
}

/// One HTTP/1.1 request to the dashboard; the status and the body.
async fn http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: &str,
) -> (u16, String) {
    let mut s = TcpStream::connect(addr).await.expect("connect");
    let auth = token.map_or(String::new(), |t| format!("Authorization: Bearer {t}\r\n"));
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n{auth}\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).await.expect("write");
    let mut out = String::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_string(&mut out))
        .await
        .expect("answer in time")
        .expect("read");
    let status = out
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .expect("status");
    let body = out
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    (status, body)
}

async fn dashboard(monitor: ServerMonitor, operator: Option<&str>) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(serve_dashboard(
        listener,
        monitor,
        operator.map(Secret::new),
    ));
    addr
}

async fn board(addr: SocketAddr) -> Value {
    let (status, body) = http(addr, "GET", "/api/snapshot", None, "").await;
    assert_eq!(status, 200, "{body}");
    serde_json::from_str(&body).expect("board JSON")
}

fn image(seed: u64) -> image::RgbImage {
    image::RgbImage::from_raw(SIDE as u32, SIDE as u32, pixels(seed)).expect("image")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operator_settings_reach_the_device_and_move_its_split() {
    let model = tiny_model();
    let layers = model.num_blocks();
    let (server, addr) = start(&model, config(), None).await;
    let web = dashboard(server.monitor(), Some("operator-secret")).await;

    let shaped = Shaped::new(Tcp::new(addr), Link::mbit(1000.0, 1.0), 1);
    let link = shaped.control();
    let transport: Arc<dyn Transport> = Arc::new(shaped);
    let client = DeviceClient::connect(transport, client_config("phone"))
        .await
        .expect("connect");
    let device = Device::new(
        model.clone(),
        ByBandwidth { layers },
        client,
        DeviceConfig {
            deadline: Duration::from_secs(5),
            probe_bytes: 64 * 1024,
            emulated_link: Some(link.clone()),
            ..DeviceConfig::default()
        },
    );
    for seed in 0..3 {
        let c = device.classify(&image(seed)).await.expect("classified");
        assert_eq!(c.split, 0, "a fast link: server-only");
    }
    // The reports are on the board (they travel on the session, after the answers), and
    // a point is made once its second has passed.
    let served = |b: &Value| {
        b["live"]["points"]
            .as_array()
            .expect("points")
            .iter()
            .map(|p| p["throughput"].as_f64().unwrap_or(0.0))
            .fold(0.0, f64::max)
    };
    let mut b = board(web).await;
    for _ in 0..50 {
        if b["devices"][0]["finished"] == 3 && served(&b) > 0.0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        b = board(web).await;
    }
    let row = &b["devices"][0];
    assert_eq!(row["id"], "phone");
    assert_eq!(
        (row["finished"].as_u64(), row["split"].as_u64()),
        (Some(3), Some(0))
    );
    assert!(row["link_mbit"].as_f64().expect("link") > 8.0, "{row}");
    assert!(served(&b) > 0.0, "the series counts the results: {b}");

    // Refusals, each typed.
    let slow = json!({"device": "phone", "mbit": 1.0, "rtt_ms": 20.0}).to_string();
    assert_eq!(http(web, "POST", "/api/settings", None, &slow).await.0, 401);
    assert_eq!(
        http(web, "POST", "/api/settings", Some("guess"), &slow)
            .await
            .0,
        401
    );
    let (status, body) = http(
        web,
        "POST",
        "/api/settings",
        Some("operator-secret"),
        &json!({"device": "phone", "mbit": -1.0, "rtt_ms": 20.0}).to_string(),
    )
    .await;
    assert_eq!(status, 400);
    assert!(body.contains("mbit"), "the refusal names the field: {body}");
    let (status, body) = http(
        web,
        "POST",
        "/api/settings",
        Some("operator-secret"),
        &json!({"device": "phone", "mbit": 1.0}).to_string(),
    )
    .await;
    assert_eq!(status, 400, "{body}");
    let (status, _) = http(
        web,
        "POST",
        "/api/settings",
        Some("operator-secret"),
        &json!({"device": "nobody", "deadline_ms": 100.0}).to_string(),
    )
    .await;
    assert_eq!(status, 404);
    let (status, _) = http(
        web,
        "POST",
        "/api/settings",
        Some("operator-secret"),
        "{not json",
    )
    .await;
    assert_eq!(status, 400);
    let huge = format!(r#"{{"device": "{}"}}"#, "x".repeat(10_000));
    let (status, _) = http(web, "POST", "/api/settings", Some("operator-secret"), &huge).await;
    assert_eq!(status, 413);

    // The real change: a 1 Mbit/s link and a longer deadline.
    let (status, body) = http(
        web,
        "POST",
        "/api/settings",
        Some("operator-secret"),
        &json!({"device": "phone", "mbit": 1.0, "rtt_ms": 20.0, "deadline_ms": 4000.0}).to_string(),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert!(body.contains(r#""reached":1"#), "{body}");
    let mut settings = device.client().settings();
    tokio::time::timeout(
        Duration::from_secs(5),
        settings.wait_for(|s| s.link.is_some()),
    )
    .await
    .expect("the settings arrive")
    .expect("watch");
    let c = device.classify(&image(9)).await.expect("classified");
    assert_eq!(
        c.split, layers,
        "the slow link moved the split at once: {c:?}"
    );
    assert_eq!(
        link.get().bandwidth,
        1e6 / 8.0,
        "the emulator runs the new link"
    );
    let mut b = board(web).await;
    for _ in 0..50 {
        if b["devices"][0]["finished"] == 4 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        b = board(web).await;
    }
    let row = &b["devices"][0];
    assert_eq!(row["split"].as_u64(), Some(layers as u64), "{row}");
    assert_eq!(row["deadline_ms"].as_f64(), Some(4000.0), "{row}");
    assert!(
        row["link_mbit"].as_f64().expect("link") < 2.0,
        "re-probed: {row}"
    );
    assert_eq!(row["settings"]["link"]["mbit"].as_f64(), Some(1.0));

    // The page, its script and the pushed events.
    let (status, page) = http(web, "GET", "/", None, "").await;
    assert_eq!(status, 200);
    assert!(page.contains("<title>collab"), "{page}");
    let (status, script) = http(web, "GET", "/uPlot.iife.min.js", None, "").await;
    assert_eq!(status, 200);
    assert!(script.len() > 10_000);
    let mut s = TcpStream::connect(web).await.expect("connect");
    s.write_all(b"GET /api/events HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .expect("write");
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    while !String::from_utf8_lossy(&got).contains("\"devices\"") {
        let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf))
            .await
            .expect("an event in time")
            .expect("read");
        assert!(n > 0, "the stream ended: {}", String::from_utf8_lossy(&got));
        got.extend_from_slice(&buf[..n]);
    }
    let text = String::from_utf8_lossy(&got);
    assert!(text.contains("text/event-stream"), "{text}");
    assert!(text.contains("event: board"), "{text}");

    device.client().clone().close().await;
    server.shutdown().await;
}

#[tokio::test]
async fn without_an_operator_token_the_controls_are_off() {
    let model = tiny_model();
    let (server, _addr) = start(&model, config(), None).await;
    let web = dashboard(server.monitor(), None).await;
    let body = json!({"device": "*", "deadline_ms": 300.0}).to_string();
    let (status, answer) = http(web, "POST", "/api/settings", Some("anything"), &body).await;
    assert_eq!(status, 403, "{answer}");
    assert!(answer.contains("no operator token"), "{answer}");
    let (status, _) = http(web, "GET", "/api/snapshot", None, "").await;
    assert_eq!(status, 200, "the board stays readable");
    server.shutdown().await;
}

#[tokio::test]
async fn one_address_cannot_take_every_connection() {
    let model = tiny_model();
    let (server, _addr) = start(&model, config(), None).await;
    let web = dashboard(server.monitor(), None).await;
    let mut held = Vec::new();
    for _ in 0..collab_net::dashboard::MAX_PER_PEER {
        held.push(TcpStream::connect(web).await.expect("connect"));
    }
    // One more from the same address is closed unanswered...
    let mut extra = TcpStream::connect(web).await.expect("connect");
    let _ = extra
        .write_all(b"GET /api/snapshot HTTP/1.1\r\nHost: x\r\n\r\n")
        .await;
    let mut buf = [0u8; 64];
    let n = tokio::time::timeout(Duration::from_secs(5), extra.read(&mut buf))
        .await
        .expect("closed in time")
        .unwrap_or(0);
    assert_eq!(n, 0, "closed: {:?}", String::from_utf8_lossy(&buf[..n]));
    // ...while another address is served.
    let mut other = common::connect_from([127, 0, 0, 2], web)
        .await
        .expect("connect");
    other
        .write_all(b"GET /api/snapshot HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .expect("write");
    let mut answer = String::new();
    tokio::time::timeout(Duration::from_secs(5), other.read_to_string(&mut answer))
        .await
        .expect("answered in time")
        .expect("read");
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    drop(held);
    server.shutdown().await;
}
