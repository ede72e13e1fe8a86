//! The deployment as it runs: the `server` and `device` binaries of this crate as separate
//! processes over loopback TCP, both configured by `pipeline.toml` (the server on a free
//! port). The server builds this crate's policy from the file; the device (on the quantised
//! `arm-q8` backend) classifies four images; every request must be answered with a result,
//! and the server must stop cleanly on SIGTERM.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

fn config(dir: &Path, name: &str, listen: &str, server: &str) -> PathBuf {
    let text = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("pipeline.toml"))
        .expect("pipeline.toml")
        .replace(
            "listen = \"127.0.0.1:7979\"",
            &format!("listen = \"{listen}\""),
        )
        .replace("metrics = \"127.0.0.1:9979\"", "metrics = \"127.0.0.1:0\"")
        .replace(
            "server = \"127.0.0.1:7979\"",
            &format!("server = \"{server}\""),
        );
    let path = dir.join(name);
    std::fs::write(&path, text).expect("write the config");
    path
}

/// The server process, killed if the test ends before it stops it (a failed assertion).
struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

#[test]
fn server_and_device_processes_from_one_pipeline_file() {
    let dir = std::env::temp_dir().join(format!("{{name}}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let ready = dir.join("ready");
    let _ = std::fs::remove_file(&ready);
    let server_config = config(&dir, "server.toml", "127.0.0.1:0", "127.0.0.1:1");
    let mut server = Running(
        Command::new(env!("CARGO_BIN_EXE_server"))
            .arg("--config")
            .arg(&server_config)
            .arg("--ready-file")
            .arg(&ready)
            .spawn()
            .expect("start the server"),
    );
    let start = Instant::now();
    let addr = loop {
        if let Ok(a) = std::fs::read_to_string(&ready) {
            if !a.trim().is_empty() {
                break a.trim().to_string();
            }
        }
        if let Some(status) = server.0.try_wait().expect("server status") {
            panic!("the server exited before it listened: {status}");
        }
        assert!(
            start.elapsed() < Duration::from_secs(120),
            "the server never listened"
        );
        std::thread::sleep(Duration::from_millis(100));
    };

    let device_config = config(&dir, "device.toml", "127.0.0.1:0", &addr);
    let out = Command::new(env!("CARGO_BIN_EXE_device"))
        .arg("--config")
        .arg(&device_config)
        .args(["--images", "4"])
        .stderr(Stdio::inherit())
        .output()
        .expect("run the device");
    let stdout = String::from_utf8_lossy(&out.stdout);
    println!("{stdout}");

    let term = Command::new("kill")
        .args(["-TERM", &server.0.id().to_string()])
        .status()
        .expect("signal the server");
    assert!(term.success());
    let status = server.0.wait().expect("the server stops");

    assert!(out.status.success(), "the device failed: {stdout}");
    let last: serde_json::Value = serde_json::from_str(stdout.lines().last().expect("a summary"))
        .expect("the summary is JSON");
    assert_eq!(last["done"], true, "{last}");
    assert_eq!(last["requests"], 4, "{last}");
    assert_eq!(
        last["ok"], 4,
        "every request answered with a result: {last}"
    );
    assert!(
        status.success(),
        "the server's exit after SIGTERM: {status}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
