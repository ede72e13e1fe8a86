//! `cargo xtask check-dashboard`: the live demo's web dashboard, checked in a real browser.
//!
//! 1. Installs Debian's `chromium` and `chromium-driver` with apt when they are missing
//!    (needs root).
//! 2. Starts the demo (`cargo run --release -p collab-examples --bin demo`) with the
//!    dashboard: a short server-only run, then the collaborative run for `--duration-s`.
//! 3. Starts chromedriver and drives headless Chromium over WebDriver: opens the page the
//!    demo printed (with its operator token), waits until the charts have received data in
//!    the collaborative run, reads one device's split point, types a new bandwidth and RTT
//!    into that device's row and clicks its `apply` button, and waits until the page shows
//!    the device at another split point. It also types a bandwidth out of range and checks
//!    that the page shows the server's refusal.
//! 4. Saves screenshots under `results/dashboard/`.
//!
//! Exits non-zero on any failure; prints last
//! `dashboard ok split_changed=true screenshots=N`.
//!
//! The WebDriver calls are a few JSON requests to chromedriver on loopback, written over
//! `std::net` (`webdriver.rs`): a client crate would bring a URL and IDNA stack for them.

use std::io::{BufRead, BufReader};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use serde_json::Value;

use crate::webdriver::{Session, free_port};

/// Options.
#[derive(clap::Args, Debug)]
pub(crate) struct Args {
    /// Seconds the demo's collaborative run lasts (the check needs about a minute of it).
    #[arg(long, default_value_t = 150.0)]
    duration_s: f64,
    /// The device whose link the check changes.
    #[arg(long, default_value = "device-0")]
    device: String,
    /// The bandwidth set through the page, Mbit/s.
    #[arg(long, default_value_t = 0.5)]
    mbit: f64,
    /// The RTT set through the page, ms.
    #[arg(long, default_value_t = 150.0)]
    rtt_ms: f64,
    /// Where the screenshots go.
    #[arg(long, default_value = "results/dashboard")]
    out: PathBuf,
}

const CHROMIUM: &str = "/usr/bin/chromium";
/// Seconds of points on the charts before the change, and after it before the last screenshot.
const SETTLE_S: u64 = 10;
const CHROMEDRIVER: &str = "/usr/bin/chromedriver";

pub(crate) fn run(args: Args) -> Result<()> {
    let start = Instant::now();
    let result = check(&args);
    match &result {
        Ok(shots) => println!(
            "dashboard ok split_changed=true screenshots={shots} ({:.0} s)",
            start.elapsed().as_secs_f64()
        ),
        Err(e) => println!(
            "dashboard FAILED after {:.0} s: {e:#}",
            start.elapsed().as_secs_f64()
        ),
    }
    result.map(drop)
}

/// Installs Chromium and chromedriver with apt when either is missing.
fn ensure_browser() -> Result<()> {
    if Path::new(CHROMIUM).exists() && Path::new(CHROMEDRIVER).exists() {
        return Ok(());
    }
    println!("== check-dashboard: installing chromium and chromium-driver with apt");
    for cmd in [
        vec!["apt-get", "update", "-q"],
        vec![
            "apt-get",
            "install",
            "-y",
            "-q",
            "chromium",
            "chromium-driver",
        ],
    ] {
        let status = Command::new(cmd[0])
            .args(&cmd[1..])
            .env("DEBIAN_FRONTEND", "noninteractive")
            .status()
            .with_context(|| format!("running {}", cmd.join(" ")))?;
        ensure!(
            status.success(),
            "`{}` failed ({status}); it needs root and apt",
            cmd.join(" ")
        );
    }
    ensure!(
        Path::new(CHROMIUM).exists() && Path::new(CHROMEDRIVER).exists(),
        "{CHROMIUM} or {CHROMEDRIVER} is still missing after apt-get install"
    );
    Ok(())
}

/// A child process group, killed when dropped.
struct Group(Child);

impl Drop for Group {
    fn drop(&mut self) {
        let pid = self.0.id().to_string();
        let group = format!("-{pid}");
        let _ = Command::new("kill")
            .args(["-s", "TERM", "--", &group])
            .status();
        let until = Instant::now() + Duration::from_secs(20);
        while Instant::now() < until {
            if matches!(self.0.try_wait(), Ok(Some(_))) {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = Command::new("kill")
            .args(["-s", "KILL", "--", &group])
            .status();
        let _ = self.0.wait();
    }
}

/// Starts the demo; returns it and the dashboard URL it printed.
fn start_demo(args: &Args) -> Result<(Group, String, mpsc::Receiver<String>)> {
    println!("== check-dashboard: building and starting the demo");
    let mut child = Command::new(env!("CARGO"))
        .args([
            "run",
            "--release",
            "-p",
            "collab-examples",
            "--bin",
            "demo",
            "--",
        ])
        .args(["--devices", "2", "--images", "60"])
        .args([
            "--load-rate",
            "2",
            "--duration-s",
            &args.duration_s.to_string(),
        ])
        .stdout(Stdio::piped())
        .process_group(0)
        .spawn()
        .context("starting the demo")?;
    let out = child.stdout.take().context("the demo's stdout")?;
    let group = Group(child);
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines().map_while(Result::ok) {
            println!("demo: {line}");
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    // The release build may take minutes on a clean tree.
    let until = Instant::now() + Duration::from_secs(1200);
    loop {
        let left = until.saturating_duration_since(Instant::now());
        let line = rx
            .recv_timeout(left)
            .context("the demo printed no dashboard address")?;
        if let Ok(v) = serde_json::from_str::<Value>(&line)
            && let Some(url) = v.get("dashboard").and_then(Value::as_str)
        {
            return Ok((group, url.to_owned(), rx));
        }
    }
}

/// Polls `script` (a function body returning a value) until `done` accepts its value.
fn wait_for(
    s: &Session,
    what: &str,
    limit: Duration,
    script: &str,
    done: impl Fn(&Value) -> bool,
) -> Result<Value> {
    let until = Instant::now() + limit;
    loop {
        let v = s.execute(script)?;
        if done(&v) {
            return Ok(v);
        }
        if Instant::now() > until {
            bail!("timed out after {limit:?} waiting for {what} (last: {v})");
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}

fn check(args: &Args) -> Result<usize> {
    ensure_browser()?;
    std::fs::create_dir_all(&args.out)
        .with_context(|| format!("creating {}", args.out.display()))?;
    let (_demo, url, _lines) = start_demo(args)?;
    let port = free_port()?;
    let driver = Command::new(CHROMEDRIVER)
        .arg(format!("--port={port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .process_group(0)
        .spawn()
        .context("starting chromedriver")?;
    let _driver = Group(driver);
    let profile = std::env::temp_dir().join(format!("collab-chromium-{}", std::process::id()));
    let session = Session::start(port, CHROMIUM, &profile)?;
    let result = drive(&session, args, &url);
    session.end();
    let _ = std::fs::remove_dir_all(&profile);
    result
}

fn drive(s: &Session, args: &Args, url: &str) -> Result<usize> {
    s.navigate(url)?;
    let device = serde_json::to_string(&args.device)?;
    // Charts: three uPlot charts with data, in the collaborative run, after the comparison.
    let board = wait_for(
        s,
        "the charts to receive data from the collaborative run",
        Duration::from_secs(300),
        "const b = window.collabBoard; if (!b) return null; \
         return { events: window.collabEvents, charts: document.querySelectorAll('.uplot').length, \
                  label: b.live.label, comparison: b.comparison && b.comparison.points.length, \
                  served: b.live.points.filter(p => p.throughput > 0).length };",
        |v| {
            v.get("label").and_then(Value::as_str) == Some("collaborative")
                && v.get("served").and_then(Value::as_u64).unwrap_or(0) >= SETTLE_S
                && v.get("comparison").and_then(Value::as_u64).unwrap_or(0) >= 1
        },
    )?;
    ensure!(
        board["charts"] == 3,
        "expected 3 charts, found {}",
        board["charts"]
    );
    println!("== check-dashboard: charts receive data: {board}");
    let row = format!("tr[data-device={device}]");
    let split_of = format!(
        "const d = window.collabBoard.devices.find(x => x.id === {device}); \
         const cell = document.querySelector('{row} .split'); \
         return d ? {{ split: d.split, finished: d.finished, link: d.link_mbit, cell: cell && cell.textContent, \
                  set: d.settings.link && d.settings.link.mbit }} : null;"
    );
    let before = wait_for(
        s,
        "the device's first requests",
        Duration::from_secs(60),
        &split_of,
        |v| v.get("finished").and_then(Value::as_u64).unwrap_or(0) >= 3,
    )?;
    let split_before = before["split"].clone();
    println!("== check-dashboard: {} before: {before}", args.device);
    let mut shots = 0;
    shots += s.screenshot(&args.out.join("01-live.png"))?;
    // A value out of range: the page shows the server's refusal.
    s.type_into(&format!("{row} input.mbit"), "-5")?;
    s.type_into(&format!("{row} input.rtt-in"), &args.rtt_ms.to_string())?;
    s.click(&format!("{row} button.apply"))?;
    let refused = wait_for(
        s,
        "the refusal of a bad bandwidth",
        Duration::from_secs(10),
        "return document.getElementById('message').textContent;",
        |v| v.as_str().is_some_and(|m| m.contains("refused")),
    )?;
    ensure!(
        refused
            .as_str()
            .is_some_and(|m| m.contains("400") && m.contains("mbit")),
        "the refusal does not name the field: {refused}"
    );
    println!("== check-dashboard: a bad value is refused: {refused}");
    shots += s.screenshot(&args.out.join("02-refused.png"))?;
    // The real change, through the same controls.
    s.type_into(&format!("{row} input.mbit"), &args.mbit.to_string())?;
    s.click(&format!("{row} button.apply"))?;
    wait_for(
        s,
        "the page to confirm the settings",
        Duration::from_secs(10),
        "return document.getElementById('message').textContent;",
        |v| v.as_str().is_some_and(|m| m.contains("applied")),
    )?;
    let after = wait_for(
        s,
        "the device's split point to change",
        Duration::from_secs(60),
        &split_of,
        |v| {
            // The operator's link is the device's, the device measured it, and its split
            // moved: not a split that wandered on its own.
            let set = v.get("set").and_then(Value::as_f64);
            let measured = v
                .get("link")
                .and_then(Value::as_f64)
                .unwrap_or(f64::INFINITY);
            set == Some(args.mbit)
                && measured < 2.0 * args.mbit
                && v.get("split") != Some(&split_before)
                && v.get("cell") != before.get("cell")
        },
    )?;
    println!(
        "== check-dashboard: {} after setting {} Mbit/s: {after}",
        args.device, args.mbit
    );
    // A few more seconds on the charts before the last screenshot.
    let now = s.execute("return window.collabBoard.live.points.length;")?;
    let points = now.as_u64().unwrap_or(0);
    wait_for(
        s,
        "more points after the change",
        Duration::from_secs(30),
        "return window.collabBoard.live.points.length;",
        |v| v.as_u64().unwrap_or(0) >= points + SETTLE_S,
    )?;
    shots += s.screenshot(&args.out.join("03-split-changed.png"))?;
    Ok(shots)
}
