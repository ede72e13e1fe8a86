//! The health and metrics endpoint, and the command line.

use std::net::SocketAddr;
use std::time::Duration;

use clap::Parser;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use super::*;
use crate::server::cli::ServerArgs;
use crate::server::{route, serve_http};

/// Sends `request` raw and reads the whole answer.
async fn http(addr: SocketAddr, request: &[u8]) -> String {
    let mut s = TcpStream::connect(addr).await.expect("connect");
    s.write_all(request).await.expect("write");
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut out))
        .await
        .expect("answered in time")
        .expect("read");
    String::from_utf8_lossy(&out).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_and_metrics_over_http() {
    let f = start(config());
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let server = tokio::spawn(serve_http(listener, f.server.monitor()));
    let get = |path: &str| format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n");

    let health = http(addr, get("/healthz").as_bytes()).await;
    assert!(health.starts_with("HTTP/1.1 200 OK\r\n"), "{health}");
    assert!(health.ends_with("\r\n\r\nok\n"), "{health}");
    let metrics = http(addr, get("/metrics?x=1").as_bytes()).await;
    assert!(metrics.starts_with("HTTP/1.1 200 OK\r\n"), "{metrics}");
    assert!(
        metrics.contains("collab_queue_length{split=\"1\"}"),
        "{metrics}"
    );
    assert!(
        http(addr, get("/nope").as_bytes())
            .await
            .starts_with("HTTP/1.1 404")
    );
    assert!(
        http(addr, b"POST /metrics HTTP/1.1\r\n\r\n")
            .await
            .starts_with("HTTP/1.1 405")
    );
    let head = http(addr, b"HEAD /healthz HTTP/1.0\r\n\r\n").await;
    assert!(
        head.starts_with("HTTP/1.1 200") && head.ends_with("\r\n\r\n"),
        "{head}"
    );
    for garbage in [
        &b"\x00\xff\xfe\r\n\r\n"[..],
        b"GET\r\n\r\n",
        b"GET / HTTP/1.1 extra\r\n\r\n",
    ] {
        assert!(
            http(addr, garbage).await.starts_with("HTTP/1.1 400"),
            "{garbage:?}"
        );
    }
    // A client that sends nothing and hangs up, and one far over the head limit.
    drop(TcpStream::connect(addr).await.expect("connect"));
    let huge = vec![b'a'; 3 * crate::server::MAX_HEAD];
    assert!(http(addr, &huge).await.starts_with("HTTP/1.1 400"));

    let monitor = f.server.monitor();
    f.server.shutdown().await;
    let reply = route(b"GET /healthz HTTP/1.1\r\n\r\n", &monitor);
    assert_eq!(reply.status, "503 Service Unavailable");
    tokio::time::timeout(Duration::from_secs(5), server)
        .await
        .expect("serve_http ends with the server")
        .expect("task");
}

#[derive(Debug, Parser)]
struct Cli {
    #[command(flatten)]
    server: ServerArgs,
}

#[test]
fn command_line_defaults_and_config() {
    let args = Cli::try_parse_from(["collab-server"])
        .expect("defaults")
        .server;
    assert_eq!(
        args.listen,
        "127.0.0.1:7878".parse::<SocketAddr>().expect("addr")
    );
    assert_eq!(
        args.metrics,
        "127.0.0.1:9898".parse::<SocketAddr>().expect("addr")
    );
    assert_eq!(
        (args.model_id.as_str(), args.token.token_env.as_str()),
        ("deit_tiny_patch16_224", "COLLAB_TOKEN")
    );
    let config = args.config().expect("config");
    let default = ServerConfig::default();
    assert_eq!(format!("{config:?}"), format!("{default:?}"));

    let token_file = std::env::temp_dir().join(format!("collab-token-{}", std::process::id()));
    std::fs::write(&token_file, "t0k3n\n").expect("token file");
    let args = Cli::try_parse_from([
        "collab-server",
        "--listen",
        "127.0.0.1:0",
        "--policy",
        "per-split",
        "--batch",
        "4",
        "--capacity",
        "9",
        "--token-file",
        token_file.to_str().expect("path"),
        "--ready-file",
        "/tmp/x",
        "--frame-timeout-s",
        "0.5",
    ])
    .expect("options")
    .server;
    let config = args.config().expect("config");
    let policy = config.policy.build().expect("policy");
    assert_eq!(
        (policy.name(), policy.budget(), config.capacity),
        ("per-split(B=4)".to_owned(), 4, 9)
    );
    std::fs::remove_file(&token_file).ok();
    assert_eq!(
        (config.auth_token.expose(), config.frame_timeout),
        ("t0k3n", Duration::from_millis(500))
    );
    assert!(crate::server::cli::check_exposure(&args, &config).is_ok());
    // The public demo token beyond loopback: refused unless explicitly allowed.
    let public = |extra: &[&str]| {
        let mut argv = vec!["collab-server", "--listen", "0.0.0.0:0"];
        argv.extend_from_slice(extra);
        let args = Cli::try_parse_from(argv).expect("options").server;
        let config = args.config().expect("config");
        crate::server::cli::check_exposure(&args, &config)
    };
    let refused = public(&[]).expect_err("demo token on 0.0.0.0").to_string();
    assert!(refused.contains("public demo token"), "{refused}");
    assert!(public(&["--insecure-demo-token"]).is_ok());
    assert!(args.ready_file.is_some());

    let bad = Cli::try_parse_from(["collab-server", "--hello-timeout-s", "0"]).expect("parses");
    assert!(bad.server.config().is_err());
    let nope = Cli::try_parse_from(["collab-server", "--policy", "nope"]).expect("parses");
    let e = format!("{:#}", nope.server.config().expect_err("unknown policy"));
    assert!(e.contains("nope") && e.contains("per-split"), "{e}");
    let json = r#"{"kind": "shared", "budget": 3, "major_share": 0.5}"#;
    let custom = Cli::try_parse_from(["collab-server", "--policy", json]).expect("parses");
    let policy = custom
        .server
        .config()
        .expect("config")
        .policy
        .build()
        .expect("policy");
    assert_eq!(policy.budget(), 3);
}

#[test]
fn a_pipeline_file_replaces_the_options() {
    let text = r#"
[model]
id = "vit-small"
preset = "deit_tiny_patch16_224"
[server]
listen = "127.0.0.1:7001"
backend = "reference"
capacity = 5
[server.batch]
kind = "server-only"
budget = 2
"#;
    let path = std::env::temp_dir().join(format!("collab-pipeline-{}.toml", std::process::id()));
    std::fs::write(&path, text).expect("write");
    let path_arg = path.display().to_string();
    let args = Cli::try_parse_from(["collab-server", "--config", &path_arg, "--capacity", "99"])
        .expect("options")
        .server;
    let pipeline = crate::pipeline::PipelineConfig::load(&path).expect("load");
    let (args, config) = crate::server::cli::from_pipeline(args, &pipeline).expect("apply");
    std::fs::remove_file(&path).expect("remove");
    assert_eq!(
        args.listen,
        "127.0.0.1:7001".parse::<SocketAddr>().expect("addr")
    );
    assert_eq!(args.backend.as_str(), "reference");
    assert_eq!(
        (args.model_id.as_str(), args.preset.as_deref()),
        ("vit-small", Some("deit_tiny_patch16_224"))
    );
    assert_eq!(
        (config.capacity, config.model_id.as_str()),
        (5, "vit-small")
    );
    let policy = config.policy.build().expect("policy");
    assert_eq!(policy.name(), "server-only(B=2)");
}
