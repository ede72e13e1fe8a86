//! Starts the processes, follows their reports, draws the view, shuts everything down and
//! prints the summary.

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::Args;
use collab_core::fixtures;
use serde_json::Value;

use super::fleet::{self, Profile};
use super::pipeline::{DeviceFile, Template};
use super::stats::Tally;
use super::view::View;

/// The accuracy table the devices' split selection reads: measured on this project's machine by
/// `cargo xtask exp svd-accuracy --images 200 --codecs f16,int8,svd-int8 --rhos 0.75,0.85,0.9`
/// and `--codecs f16,int8 --rhos 0.5,0.74` (180 evaluation images, 20 calibration; merged).
const ACCURACY_TABLE: &str = include_str!("../../../assets/deit-tiny-accuracy.json");
/// DeiT-Tiny's per-block cost profile on this machine's CPU with both cores (`cargo xtask exp
/// block-profile`): the devices' model of the server. Each device measures its own profile at
/// start-up (one thread, see [`Proc::spawn`]) and scales it by its slowdown.
const COST_PROFILE: &str = include_str!("../../../assets/deit-tiny-profile-candle-cpu.json");

/// Options of the demo.
#[derive(Args, Debug, Clone)]
pub(crate) struct DemoArgs {
    /// Number of device processes (they cycle through four compute/link profiles).
    #[arg(long, default_value_t = 4)]
    pub(crate) devices: usize,
    /// Images each device classifies (each device takes different sample images).
    #[arg(long, default_value_t = 60)]
    images: usize,
    /// Requests per second each device sends (Poisson arrivals); 0 (the default): back to
    /// back, one request in flight per device.
    #[arg(long, default_value_t = 0.0)]
    rate: f64,
    /// Bandwidth of every device's link, Mbit/s (default: each profile's own).
    #[arg(long)]
    mbit: Option<f64>,
    /// RTT of every device's link, ms (default: each profile's own).
    #[arg(long)]
    rtt_ms: Option<f64>,
    /// End-to-end deadline per request, ms (default: the pipeline file's `[device]
    /// deadline_ms`, 400 in the shipped one).
    #[arg(long)]
    deadline_ms: Option<f64>,
    /// Largest accuracy loss a split choice may cost, 0.02 = two points of top-1 (default: the
    /// pipeline file's, 0.02 in the shipped one).
    #[arg(long)]
    max_loss: Option<f64>,
    /// Background load, requests per second (0: none).
    #[arg(long, default_value_t = 5.0)]
    load_rate: f64,
    /// Server batch budget (default: the pipeline file's `[server.batch] budget`, 8 in the
    /// shipped one).
    #[arg(long)]
    batch: Option<usize>,
    /// Server admission limit, requests in flight (default: the pipeline file's, 64 in the
    /// shipped one).
    #[arg(long)]
    capacity: Option<usize>,
    /// The pipeline config file the server and devices start from (batch policy, codecs,
    /// backends, split strategy, limits; see `collab_net::pipeline`). Default: the shipped
    /// `collab-examples/pipelines/deit-tiny.toml`, embedded in the binary. The demo writes in
    /// the addresses, device ids and each device's slowdown, and the options given here.
    #[arg(long)]
    pipeline: Option<PathBuf>,
    /// Give up and stop everything after this many seconds.
    #[arg(long, default_value_t = 600)]
    timeout_s: u64,
    /// Keep the devices classifying (cycling through their images) for this many seconds
    /// instead of stopping after `--images`: time to use the dashboard's controls.
    #[arg(long, default_value_t = 0.0)]
    duration_s: f64,
    /// No web dashboard: only the terminal view (a headless run).
    #[arg(long)]
    no_dashboard: bool,
    /// Address of the web dashboard (default: a free port on loopback).
    #[arg(long)]
    dashboard: Option<SocketAddr>,
    /// Images per device of the server-only run that goes first, with the dashboard, as the
    /// comparison trace (the same devices and load, every request at split 0); 0: none.
    #[arg(long, default_value_t = 16)]
    compare_images: usize,
    /// Accuracy table the devices' split selection reads (default: the embedded one, f16,
    /// int8 and svd-int8 cells). Pass a `table.json` of `cargo xtask exp svd-accuracy`.
    #[arg(long)]
    accuracy_table: Option<PathBuf>,
    /// Split bases for the calibrated codecs (`cpca`, `mpca`, `tpca`, ...): the `bases.bin`
    /// written beside that table. The server and every device load it; without it the
    /// table's calibrated entries are dropped.
    #[arg(long)]
    bases: Option<PathBuf>,
}

/// The variable the server reads its operator token from (`collab-server`'s default).
const OPERATOR_TOKEN_ENV: &str = "COLLAB_OPERATOR_TOKEN";

/// A child process and its label.
struct Proc {
    label: String,
    child: Child,
}

impl Proc {
    /// Starts the demo binary with `args`; `threads` caps its compute threads (candle's CPU
    /// kernels read `RAYON_NUM_THREADS`), so that device processes act as one-core devices
    /// instead of all contending for every core of this machine.
    fn spawn(
        label: &str,
        args: &[String],
        log: &Path,
        stdin: bool,
        threads: Option<usize>,
    ) -> Result<Self> {
        Self::spawn_with_env(label, args, log, stdin, threads, &[])
    }

    /// [`Proc::spawn`] with extra environment variables.
    fn spawn_with_env(
        label: &str,
        args: &[String],
        log: &Path,
        stdin: bool,
        threads: Option<usize>,
        env: &[(&str, &str)],
    ) -> Result<Self> {
        let exe = std::env::current_exe().context("finding the demo binary")?;
        let mut command = Command::new(exe);
        command.envs(env.iter().copied());
        if let Some(n) = threads {
            command.env("RAYON_NUM_THREADS", n.to_string());
        }
        let child = command
            .args(args)
            .stdin(if stdin { Stdio::piped() } else { Stdio::null() })
            .stdout(Stdio::piped())
            .stderr(
                std::fs::File::create(log)
                    .with_context(|| format!("creating {}", log.display()))?,
            )
            .spawn()
            .with_context(|| format!("starting the {label} process"))?;
        Ok(Self {
            label: label.into(),
            child,
        })
    }

    /// Sends stdout's JSON lines to `tx` tagged with `source`.
    fn follow(&mut self, source: usize, tx: mpsc::Sender<(usize, Option<Value>)>) {
        let Some(out) = self.child.stdout.take() else {
            return;
        };
        std::thread::spawn(move || {
            for line in BufReader::new(out)
                .lines()
                .map_while(std::result::Result::ok)
            {
                if let Ok(v) = serde_json::from_str::<Value>(&line) {
                    let _ = tx.send((source, Some(v)));
                }
            }
            let _ = tx.send((source, None));
        });
    }

    fn stop(&mut self, signal: &str, wait: Duration) {
        if matches!(self.child.try_wait(), Ok(Some(_))) {
            return;
        }
        let _ = Command::new("kill")
            .args([signal, &self.child.id().to_string()])
            .status();
        let start = Instant::now();
        while start.elapsed() < wait {
            if matches!(self.child.try_wait(), Ok(Some(_))) {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        eprintln!("{} did not stop within {wait:?}; killing it", self.label);
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A process still running when its handle goes (the demo failed half-way) is killed, so no
/// server or device outlives the demo.
impl Drop for Proc {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

fn free_port() -> Result<SocketAddr> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?)
}

/// Writes the embedded assets to `dir`: the accuracy table (unless `table` names one) and
/// the cost profile; returns their paths.
fn write_assets(dir: &Path, table: Option<&Path>) -> Result<(PathBuf, PathBuf)> {
    std::fs::create_dir_all(dir)?;
    let profile = dir.join("deit-tiny-profile.json");
    std::fs::write(&profile, COST_PROFILE)?;
    let table = match table {
        Some(t) => t.to_path_buf(),
        None => {
            let t = dir.join("deit-tiny-accuracy.json");
            std::fs::write(&t, ACCURACY_TABLE)?;
            t
        }
    };
    Ok((table, profile))
}

fn wait_ready(server: &mut Proc, ready: &Path) -> Result<SocketAddr> {
    let start = Instant::now();
    loop {
        if let Ok(text) = std::fs::read_to_string(ready)
            && let Ok(addr) = text.trim().parse()
        {
            return Ok(addr);
        }
        if let Ok(Some(status)) = server.child.try_wait() {
            bail!("the server exited ({status}) before listening; see its log");
        }
        if start.elapsed() > Duration::from_secs(120) {
            bail!("the server did not start listening within 120 s");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Device `i`'s command line: its copy of the pipeline file, and the workload and link
/// options.
fn device_args(
    i: usize,
    p: &Profile,
    a: &DemoArgs,
    config: &Path,
    assets: &(PathBuf, PathBuf),
    phase: &Phase,
) -> Vec<String> {
    let s = |v: &dyn ToString| v.to_string();
    [
        "device",
        "--config",
        &s(&config.display()),
        "--device-profile",
        &s(&assets.1.display()),
        "--server-profile",
        &s(&assets.1.display()),
        "--slowdown",
        &s(&p.slowdown),
        "--mbit",
        &s(&p.mbit),
        "--rtt-ms",
        &s(&p.rtt_ms),
        "--jitter-ms",
        &s(&p.jitter_ms),
        "--loss",
        &s(&p.loss),
        "--images",
        &s(&phase.images),
        "--offset",
        &s(&(i * a.images)),
        "--rate",
        &s(&a.rate),
        "--duration-s",
        &s(&phase.duration_s),
    ]
    .iter()
    .map(|x| x.to_string())
    .collect()
}

/// One run of the devices: the server-only comparison or the collaborative run.
#[derive(Debug)]
struct Phase {
    /// Its label on the dashboard.
    label: &'static str,
    /// Images per device.
    images: usize,
    /// Seconds the devices keep cycling through them (0: once).
    duration_s: f64,
    /// Every request at split 0.
    server_only: bool,
}

/// What every phase shares.
struct Fleet<'a> {
    a: &'a DemoArgs,
    dir: PathBuf,
    template: Template,
    assets: (PathBuf, PathBuf),
    profiles: Vec<Profile>,
    server: SocketAddr,
    deadline_ms: f64,
}

impl Fleet<'_> {
    /// Starts the phase's device processes, reporting on `tx` under their index.
    fn start(&self, phase: &Phase, tx: &mpsc::Sender<(usize, Option<Value>)>) -> Result<Vec<Proc>> {
        let mut devices = Vec::new();
        for (i, p) in self.profiles.iter().enumerate() {
            let config = self.dir.join(format!("device-{i}-{}.toml", phase.label));
            self.template.write_device(
                &config,
                &DeviceFile {
                    server: self.server,
                    id: format!("device-{i}"),
                    profile: p,
                    deadline_ms: self.deadline_ms,
                    max_loss: self.a.max_loss,
                    accuracy_table: self.assets.0.clone(),
                    bases: self.a.bases.as_deref(),
                    server_only: phase.server_only,
                },
            )?;
            let mut d = Proc::spawn(
                &format!("device-{i}"),
                &device_args(i, p, self.a, &config, &self.assets, phase),
                &self.dir.join(format!("device-{i}-{}.log", phase.label)),
                false,
                Some(1),
            )?;
            d.follow(i, tx.clone());
            devices.push(d);
        }
        Ok(devices)
    }

    /// Follows the devices' and the load's lines until every device is done (or the
    /// timeout); returns the devices' tallies, the load's, and the wall time.
    fn follow(
        &self,
        rx: &mpsc::Receiver<(usize, Option<Value>)>,
        started: Instant,
        phase: &Phase,
    ) -> (Vec<Tally>, Tally, Duration) {
        let a = self.a;
        let mut tallies = vec![Tally::default(); a.devices];
        let mut load_tally = Tally::default();
        let mut open = vec![true; a.devices];
        let mut view = View::new(&self.profiles, phase.images);
        let start = Instant::now();
        while open.iter().any(|&o| o) {
            if started.elapsed() > Duration::from_secs(a.timeout_s) {
                eprintln!("collab demo: timed out after {} s; stopping", a.timeout_s);
                break;
            }
            match rx.recv_timeout(Duration::from_millis(100)) {
                Ok((i, Some(v))) if i < a.devices => tallies[i].record(&v, self.deadline_ms),
                Ok((_, Some(v))) => load_tally.record(&v, f64::INFINITY),
                Ok((i, None)) if i < a.devices => open[i] = false,
                Ok((_, None)) | Err(mpsc::RecvTimeoutError::Timeout) => {}
                Err(mpsc::RecvTimeoutError::Disconnected) => break,
            }
            view.update(&tallies, &load_tally, start.elapsed(), self.deadline_ms);
        }
        view.finish();
        (tallies, load_tally, start.elapsed())
    }
}

/// A random operator token for this run (hex).
fn operator_token() -> String {
    use rand::Rng;
    let mut rng = rand::rng();
    (0..16)
        .map(|_| format!("{:02x}", rng.random::<u8>()))
        .collect()
}

/// Runs the demo.
pub(crate) fn run(a: DemoArgs) -> Result<()> {
    if a.devices == 0 {
        bail!("--devices must be at least 1");
    }
    // Fail early, and clearly, when the fixtures are missing.
    fixtures::deit_tiny_checkpoint()?;
    let samples = fixtures::imagenet_sample()?.len();
    if a.devices * a.images > samples {
        eprintln!(
            "note: {} devices x {} images is more than the {samples} sample images; some repeat",
            a.devices, a.images
        );
    }
    let dir = std::env::temp_dir().join(format!("collab-demo-{}", std::process::id()));
    for path in [&a.accuracy_table, &a.bases].into_iter().flatten() {
        if !path.is_file() {
            bail!("{} is not a file", path.display());
        }
    }
    let assets = write_assets(&dir, a.accuracy_table.as_deref())?;
    let template = Template::load(a.pipeline.as_deref())?;
    let deadline_ms = template.deadline_ms(a.deadline_ms);
    let ready = dir.join("server.addr");
    let metrics_addr = free_port()?;
    let dashboard = if a.no_dashboard {
        None
    } else {
        Some(match a.dashboard {
            Some(d) => d,
            None => free_port()?,
        })
    };
    let server_file = dir.join("server.toml");
    template.write_server(
        &server_file,
        metrics_addr,
        dashboard,
        a.capacity,
        a.batch,
        a.bases.as_deref(),
    )?;
    let server_args: Vec<String> = vec![
        "serve".into(),
        "--config".into(),
        server_file.display().to_string(),
        "--ready-file".into(),
        ready.display().to_string(),
    ];
    let token = operator_token();
    // Only the server process gets the token (it opens the dashboard's controls).
    let mut server = Proc::spawn_with_env(
        "server",
        &server_args,
        &dir.join("server.log"),
        false,
        None,
        &[(OPERATOR_TOKEN_ENV, &token)],
    )?;
    eprintln!(
        "collab demo: starting the server from {} (logs and pipeline copies in {})",
        template.origin(),
        dir.display()
    );
    let addr = wait_ready(&mut server, &ready)?;
    let profiles: Vec<Profile> = (0..a.devices)
        .map(|i| fleet::profile(i, a.mbit, a.rtt_ms))
        .collect();
    eprintln!(
        "collab demo: server on {addr}, metrics on http://{metrics_addr}/metrics; {} devices, {} images each, deadline {} ms",
        a.devices, a.images, deadline_ms
    );
    if let Some(d) = dashboard {
        let url = format!("http://{d}/#token={token}");
        eprintln!("collab demo: dashboard on {url}");
        // For the browser check (`cargo xtask check-dashboard`): one JSON line.
        println!("{}", serde_json::json!({ "dashboard": url }));
    }
    let fleet = Fleet {
        a: &a,
        dir: dir.clone(),
        template,
        assets,
        profiles,
        server: addr,
        deadline_ms,
    };
    let (tx, rx) = mpsc::channel();
    let mut load = if a.load_rate > 0.0 {
        let mut l = Proc::spawn(
            "load",
            &[
                "load".into(),
                "--server".into(),
                addr.to_string(),
                "--rate".into(),
                a.load_rate.to_string(),
            ],
            &dir.join("load.log"),
            true,
            Some(1),
        )?;
        l.follow(a.devices, tx.clone());
        Some(l)
    } else {
        None
    };
    let started = Instant::now();
    let mut comparison = None;
    if let Some(d) = dashboard.filter(|_| a.compare_images > 0) {
        let phase = Phase {
            label: "server-only",
            images: a.compare_images,
            duration_s: 0.0,
            server_only: true,
        };
        eprintln!(
            "collab demo: the server-only run first ({} images per device, every request at split 0), the dashboard's comparison trace",
            phase.images
        );
        let mut devices = fleet.start(&phase, &tx)?;
        let (tallies, _, wall) = fleet.follow(&rx, started, &phase);
        for d in &mut devices {
            d.stop("-TERM", Duration::from_secs(5));
        }
        comparison = Some((tallies, wall));
        super::summary::http_post(
            d,
            "/api/phase",
            &token,
            &serde_json::json!({ "label": "collaborative", "previous": "server-only" }),
        )?;
    }
    let phase = Phase {
        label: "collaborative",
        images: a.images,
        duration_s: a.duration_s,
        server_only: false,
    };
    let mut devices = fleet.start(&phase, &tx)?;
    let (tallies, mut load_tally, wall) = fleet.follow(&rx, started, &phase);
    drop(tx);
    let metrics = super::summary::http_get(metrics_addr, "/metrics");
    let health = super::summary::http_get(metrics_addr, "/healthz");
    for d in &mut devices {
        d.stop("-TERM", Duration::from_secs(5));
    }
    if let Some(l) = load.as_mut() {
        drop(l.child.stdin.take().map(|mut s: ChildStdin| s.flush()));
        let until = Instant::now() + Duration::from_secs(10);
        while Instant::now() < until && !matches!(l.child.try_wait(), Ok(Some(_))) {
            if let Ok((_, Some(v))) = rx.recv_timeout(Duration::from_millis(100)) {
                load_tally.record(&v, f64::INFINITY);
            }
        }
        l.stop("-TERM", Duration::from_secs(2));
    }
    server.stop("-TERM", Duration::from_secs(30));
    if let Some((tallies, wall)) = &comparison {
        super::summary::print_comparison(tallies, *wall, deadline_ms);
    }
    super::summary::print(
        &a,
        &fleet.profiles,
        &tallies,
        &load_tally,
        wall,
        &metrics,
        &health,
    );
    Ok(())
}
