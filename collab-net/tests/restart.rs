//! A graceful restart of the real `collab-server` process under load (issue 31): SIGTERM
//! while a device has requests in flight and more coming, then a new process on the same
//! port. Every request is answered exactly once, with its own answer: the ones the old
//! process accepted by it before it exits, the rest (answered `ShuttingDown` or sent while
//! it was gone) by the new one after the device reconnects and re-sends them.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use collab_net::client::{ClientConfig, DeviceClient, Outgoing};
use collab_net::transport::{Tcp, Transport};
use collab_net::wire::raw_rgb8;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// A server process, killed if the test fails before it is shut down.
struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        if matches!(self.0.try_wait(), Ok(None)) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

/// Starts `collab-server` on `listen` (the DeiT-Tiny fixture, demo token) and waits for its
/// address.
fn spawn_server(listen: &str, ready: &Path) -> (Proc, SocketAddr) {
    let _ = std::fs::remove_file(ready);
    let child = Command::new(env!("CARGO_BIN_EXE_collab-server"))
        .args([
            "--listen",
            listen,
            "--metrics",
            "127.0.0.1:0",
            "--ready-file",
        ])
        .arg(ready)
        .env("COLLAB_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map(Proc)
        .expect("collab-server starts");
    let t = Instant::now();
    loop {
        if let Ok(text) = std::fs::read_to_string(ready)
            && let Ok(addr) = text.trim().parse()
        {
            return (child, addr);
        }
        assert!(
            t.elapsed() < Duration::from_secs(60),
            "the server never got ready"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn sigterm(child: &mut Proc) {
    let status = Command::new("kill")
        .args(["-TERM", &child.0.id().to_string()])
        .status()
        .expect("kill");
    assert!(status.success());
    let status = child.0.wait().expect("wait");
    assert!(status.success(), "graceful shutdown exits 0: {status}");
}

#[test]
fn sigterm_and_restart_under_load_answer_every_request_once() {
    if let Err(e) = collab_core::fixtures::deit_tiny_checkpoint() {
        panic!("the DeiT-Tiny fixture is missing (see ../shared/fixtures/README.md): {e}");
    }
    let dir = std::env::temp_dir().join(format!("collab-restart-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let ready = dir.join("ready");
    let (mut first, addr) = spawn_server("127.0.0.1:0", &ready);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let transport: Arc<dyn Transport> = Arc::new(Tcp::new(addr));
    let client = runtime
        .block_on(DeviceClient::connect(transport, ClientConfig::default()))
        .expect("connect");
    let mut calls = Vec::new();
    for i in 0..40u64 {
        let mut rng = StdRng::seed_from_u64(i);
        let pixels: Vec<u8> = (0..3 * 224 * 224).map(|_| rng.random()).collect();
        let c = client.clone();
        calls.push(runtime.spawn(async move {
            tokio::time::sleep(Duration::from_millis(i * 40)).await;
            let request = Outgoing {
                split: 0,
                codec: raw_rgb8(),
                payload: pixels,
                budget: Duration::from_secs(60),
                max_loss: 0.0,
                meta: None,
            };
            c.infer(request, Duration::from_secs(120))
                .await
                .map(|p| (i, p.top[0].0))
        }));
    }
    // SIGTERM a third of the way in; the new process takes the same port.
    std::thread::sleep(Duration::from_millis(500));
    sigterm(&mut first);
    let (mut second, again) = spawn_server(&addr.to_string(), &ready);
    assert_eq!(again, addr);
    let mut seen = HashSet::new();
    for call in calls {
        let (i, _) = runtime
            .block_on(call)
            .expect("task")
            .unwrap_or_else(|e| panic!("a request was lost across the restart: {e}"));
        assert!(seen.insert(i), "request {i} answered twice");
    }
    assert_eq!(seen.len(), 40);
    assert!(client.reconnects() >= 1, "the device never reconnected");
    runtime.block_on(client.close());
    sigterm(&mut second);
    std::fs::remove_dir_all(&dir).ok();
}
