//! `cargo xtask check-arm`: the quantised device backend cross-built for aarch64 and run under
//! qemu.
//!
//! 1. Installs what is missing (as root, with apt): the arm64 architecture, Debian's
//!    `rustc-web`/`cargo-web` with its aarch64 std (`libstd-rust-web-dev:arm64`), the aarch64
//!    linker and C library, and `qemu-user`. rustup's x86_64 toolchain cannot target aarch64
//!    here (no other std), and its rustc cannot use Debian's std, so every cargo below is
//!    Debian's (`/usr/bin/cargo`, `/usr/bin/rustc`) with its own target dir
//!    (`target/aarch64` by default).
//! 2. `cargo test --target aarch64-unknown-linux-gnu -p collab-backends --features arm`: the
//!    quantised module's unit tests and the `arm_f32`/`arm_q8`/`arm_q4` conformance tests,
//!    at `--rounds` rounds (`COLLAB_CONFORMANCE_ROUNDS`), run by `qemu-aarch64 -L /`.
//! 3. The `split_classify` example under qemu: DeiT-Tiny with blocks `0..k` on `arm-q8`, the
//!    rest on `f32`; it fails unless at least 3 in 4 images keep the `f32` top-1 class.
//!
//! Only collab-backends and its dependencies are built. Any failing step fails the command;
//! the last line is a summary: `check-arm ok: ...` or `check-arm FAILED: ...`.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::{Context, Result, bail};

use crate::test::{Counts, stream};

const TARGET: &str = "aarch64-unknown-linux-gnu";
const PACKAGES: [&str; 6] = [
    "rustc-web",
    "cargo-web",
    "libstd-rust-web-dev:arm64",
    "gcc-aarch64-linux-gnu",
    "libc6-dev-arm64-cross",
    "qemu-user",
];

/// Arguments.
#[derive(clap::Args, Debug)]
pub(crate) struct Args {
    /// Conformance rounds per family under qemu.
    #[arg(long, default_value_t = 10)]
    rounds: usize,
    /// Cargo target dir of the cross build (kept apart from rustup's builds).
    #[arg(long, default_value = "target/aarch64")]
    target_dir: PathBuf,
    /// Images of the split-classify run.
    #[arg(long, default_value_t = 4)]
    images: usize,
    /// Split point of the split-classify run (blocks 0..k on the device).
    #[arg(long, default_value_t = 6)]
    split: usize,
}

impl Default for Args {
    fn default() -> Self {
        Self {
            rounds: 10,
            target_dir: PathBuf::from("target/aarch64"),
            images: 4,
            split: 6,
        }
    }
}

/// `cargo xtask check-arm`.
pub(crate) fn run(args: Args) -> Result<()> {
    check(&args).map(drop)
}

/// The check with default arguments, for `cargo xtask test`: the test counts under qemu.
pub(crate) fn run_for_tests() -> Result<Counts> {
    check(&Args::default())
}

fn check(args: &Args) -> Result<Counts> {
    let start = Instant::now();
    let result = steps(args);
    let secs = start.elapsed().as_secs_f64();
    match &result {
        Ok((c, line)) => println!(
            "check-arm ok: {} tests passed under qemu-aarch64 ({} failed), {line}, {secs:.0} s",
            c.passed, c.failed
        ),
        Err(e) => println!("check-arm FAILED after {secs:.0} s: {e:#}"),
    }
    result.map(|(c, _)| c)
}

fn steps(args: &Args) -> Result<(Counts, String)> {
    ensure_toolchain()?;
    println!(
        "== check-arm: cross-building collab-backends (feature arm) for {TARGET} into {}",
        args.target_dir.display()
    );
    let mut cmd = debian_cargo(&args.target_dir, "test");
    cmd.args(["--lib", "--test", "conformance", "--", "quantized", "arm_"])
        .env("COLLAB_CONFORMANCE_ROUNDS", args.rounds.to_string());
    let (counts, ok) = stream(cmd, "the aarch64 tests")?;
    if !ok || counts.failed > 0 {
        bail!("aarch64 tests under qemu failed ({} failed)", counts.failed);
    }
    if counts.passed == 0 {
        bail!("no aarch64 test ran");
    }

    println!("== check-arm: split_classify under qemu");
    let mut cmd = debian_cargo(&args.target_dir, "run");
    cmd.args(["--example", "split_classify", "--"])
        .args(["--images", &args.images.to_string()])
        .args(["--split", &args.split.to_string(), "--bits", "q8"])
        .env("COLLAB_EMULATED", "qemu");
    let mut last = String::new();
    let child = cmd
        .stdout(std::process::Stdio::piped())
        .spawn()
        .context("cannot start the split_classify example")?;
    let out = child.wait_with_output()?;
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        println!("{line}");
        if line.starts_with("split-classify ") {
            last = line.to_string();
        }
    }
    if !out.status.success() || last.is_empty() {
        bail!("split_classify under qemu failed ({})", out.status);
    }
    Ok((counts, last))
}

/// Debian's `cargo <subcommand>` for collab-backends with the `arm` feature, cross-compiling
/// for aarch64 into `target_dir` with the aarch64 linker and running results under qemu;
/// nothing of rustup's.
fn debian_cargo(target_dir: &Path, subcommand: &str) -> Command {
    let path = std::env::var("PATH").unwrap_or_default();
    let mut cmd = Command::new("/usr/bin/cargo");
    cmd.args([subcommand, "--target", TARGET])
        .args(["-p", "collab-backends", "--features", "arm"])
        // Dependencies at opt-level 1 instead of the workspace's 3 (gemm-f16 keeps its own 3,
        // which it needs on aarch64): measured in session 17, the cross build took 580 s
        // instead of 762 s on 2 cores, and the tests and split-classify under qemu 50 s
        // either way.
        .args(["--config", "profile.dev.package.\"*\".opt-level=1"])
        .env("PATH", format!("/usr/bin:{path}"))
        .env("RUSTC", "/usr/bin/rustc")
        .env(
            "CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_LINKER",
            "aarch64-linux-gnu-gcc",
        )
        // `-L /`: with `-L /usr/aarch64-linux-gnu` any program that starts a thread hangs.
        .env(
            "CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_RUNNER",
            "qemu-aarch64 -L /",
        )
        .env("CARGO_TARGET_DIR", target_dir);
    for var in [
        "CARGO",
        "RUSTUP_TOOLCHAIN",
        "RUSTC_WRAPPER",
        "RUSTC_WORKSPACE_WRAPPER",
        "RUSTDOC",
        "RUSTFLAGS",
        "CARGO_ENCODED_RUSTFLAGS",
        "CARGO_BUILD_TARGET",
    ] {
        cmd.env_remove(var);
    }
    cmd
}

/// Whether everything the cross build and qemu need is installed.
fn toolchain_present() -> bool {
    [
        "/usr/bin/cargo",
        "/usr/bin/rustc",
        "/usr/lib/rustlib/aarch64-unknown-linux-gnu/lib",
        "/usr/bin/aarch64-linux-gnu-gcc",
        "/usr/aarch64-linux-gnu/lib/libc.so.6",
        "/usr/bin/qemu-aarch64",
    ]
    .iter()
    .all(|p| Path::new(p).exists())
}

fn ensure_toolchain() -> Result<()> {
    if toolchain_present() {
        return Ok(());
    }
    println!(
        "== check-arm: installing the cross toolchain with apt: {}",
        PACKAGES.join(" ")
    );
    let run = |args: &[&str]| -> Result<()> {
        let status = Command::new(args[0])
            .args(&args[1..])
            .env("DEBIAN_FRONTEND", "noninteractive")
            .status()
            .with_context(|| format!("cannot run {}", args[0]))?;
        if !status.success() {
            bail!(
                "`{}` failed ({status}); it needs root and apt",
                args.join(" ")
            );
        }
        Ok(())
    };
    run(&["dpkg", "--add-architecture", "arm64"])?;
    run(&["apt-get", "update", "-q"])?;
    let mut install = vec!["apt-get", "install", "-y", "-q"];
    install.extend(PACKAGES);
    run(&install)?;
    if !toolchain_present() {
        bail!("the cross toolchain is still incomplete after apt-get install");
    }
    Ok(())
}
