//! `cargo xtask test`: the README's test command, which `.ci/run` calls.
//!
//! Stages, each a `cargo test` whose output streams through. By default (the README's test
//! command: no root, no large download):
//! 1. `cargo test --workspace` (default features: candle CPU, the reference backend and the
//!    quantised device backend, which compiles and runs natively on x86_64 too);
//! 2. every `cargo xtask new` template generated into `target/templates/` and tested there as
//!    its own crate (with the workspace's target directory, whose builds it reuses).
//!
//! Optional, with `--with tch` / `--with arm` (`.ci/run` runs both; `--only STAGES` runs just
//! the named stages):
//! - `tch`: `cargo xtask setup-libtorch` (cached after the first run), then the tests whose
//!   names mention tch, in collab-backends (conformance, unit tests, cross-backend splits) and
//!   collab-tests (real checkpoints, split execution);
//! - `arm`: `cargo xtask check-arm`: the device backend cross-built for aarch64 and run under
//!   qemu.
//!
//! The last lines give each stage's wall time and sum every stage: `tests: N passed, M
//! failed, K skipped` (K ignored). Any failing stage fails the command, after the later
//! stages have still run.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

use std::time::Instant;

use anyhow::{Context, Result, bail};

/// Test counts of `cargo test` runs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Counts {
    pub(crate) passed: u64,
    pub(crate) failed: u64,
    pub(crate) ignored: u64,
}

impl Counts {
    fn add(&mut self, o: Counts) {
        self.passed += o.passed;
        self.failed += o.failed;
        self.ignored += o.ignored;
    }

    /// Adds one `test result: ...` line of libtest's output, if `line` is one.
    pub(crate) fn add_line(&mut self, line: &str) {
        let Some(rest) = line.strip_prefix("test result: ") else {
            return;
        };
        let count = |word: &str| -> u64 {
            rest.split(';')
                .find_map(|part| {
                    let part = part
                        .trim()
                        .trim_start_matches("ok. ")
                        .trim_start_matches("FAILED. ");
                    part.strip_suffix(word).and_then(|n| n.trim().parse().ok())
                })
                .unwrap_or(0)
        };
        self.passed += count(" passed");
        self.failed += count(" failed");
        self.ignored += count(" ignored");
    }
}

/// Runs `cmd` (a `cargo test`), streaming its stdout and counting its results; the exit status
/// says whether it succeeded.
pub(crate) fn stream(mut cmd: Command, what: &str) -> Result<(Counts, bool)> {
    let mut child = cmd
        .stdout(Stdio::piped())
        .spawn()
        .with_context(|| format!("cannot start {what}"))?;
    let stdout = child
        .stdout
        .take()
        .with_context(|| format!("no stdout from {what}"))?;
    let mut counts = Counts::default();
    for line in BufReader::new(stdout).lines() {
        let line = line?;
        println!("{line}");
        counts.add_line(&line);
    }
    Ok((counts, child.wait()?.success()))
}

/// `cargo`, as the running cargo names itself, without the variables `cargo run` set for
/// xtask itself (`CARGO_MANIFEST_DIR`, `CARGO_PKG_NAME`, ...).
///
/// Build scripts ask cargo to rerun them when such a variable changes (ring's asks for
/// `CARGO_MANIFEST_DIR` and `CARGO_PKG_*`), and cargo compares its own environment. A `cargo
/// test` started from xtask with xtask's values therefore re-ran ring's build script and
/// rebuilt ring, rustls and everything above them, all built a moment before for xtask
/// (measured in the session-19 CI log: the test build began with `Compiling ring`).
pub(crate) fn cargo() -> Command {
    let mut cmd = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    for (key, _) in std::env::vars_os() {
        let Some(key) = key.to_str() else { continue };
        let set_by_cargo_run = [
            "CARGO_PKG_",
            "CARGO_MANIFEST_",
            "CARGO_CRATE_",
            "CARGO_BIN_",
        ]
        .iter()
        .any(|p| key.starts_with(p))
            || key == "CARGO_PRIMARY_PACKAGE";
        if set_by_cargo_run {
            cmd.env_remove(key);
        }
    }
    cmd
}

/// A stage of `cargo xtask test`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum Stage {
    /// `cargo test --workspace` (default).
    Workspace,
    /// Every `cargo xtask new` template tested as its own crate (default).
    Templates,
    /// The libtorch backend's tests (installs libtorch 2.11, about 500 MB, once).
    Tch,
    /// The device backend cross-built for aarch64 and run under qemu (installs the toolchain
    /// and qemu with apt, as root, once).
    Arm,
}

impl Stage {
    /// The stages `cargo xtask test` runs without options: no root, no large download.
    pub(crate) const DEFAULT: [Stage; 2] = [Stage::Workspace, Stage::Templates];

    fn name(self) -> &'static str {
        match self {
            Stage::Workspace => "workspace",
            Stage::Templates => "templates",
            Stage::Tch => "tch",
            Stage::Arm => "arm",
        }
    }
}

/// Runs `stages` in order; `args` go to the workspace stage. Each stage's wall time is
/// printed at the end, with the summed counts.
pub(crate) fn run(stages: &[Stage], args: &[String]) -> Result<()> {
    let mut total = Counts::default();
    let mut failures = vec![];
    let mut times = vec![];
    let mut add = |result: Result<(Counts, bool)>, what: &'static str| match result {
        Ok((c, ok)) => {
            total.add(c);
            if !ok {
                failures.push(what);
            }
        }
        Err(e) => {
            println!("{what}: {e:#}");
            failures.push(what);
        }
    };
    for (i, &stage) in stages.iter().enumerate() {
        let t = Instant::now();
        let n = format!("{}/{}", i + 1, stages.len());
        match stage {
            Stage::Workspace => {
                println!("== stage {n}: cargo test --workspace");
                let mut cmd = cargo();
                cmd.args(["test", "--workspace"]).args(args);
                add(stream(cmd, "cargo test --workspace"), "workspace tests");
            }
            Stage::Templates => {
                println!(
                    "== stage {n}: the templates of `cargo xtask new`, each tested as its own crate"
                );
                for template in crate::new::Template::ALL {
                    add(template_test(template), template.name());
                }
            }
            Stage::Tch => {
                println!(
                    "== stage {n}: the libtorch backend (features tch, and arm for the arm -> tch split)"
                );
                add(tch_stage(), "tch tests");
            }
            Stage::Arm => {
                println!(
                    "== stage {n}: cargo xtask check-arm (aarch64 cross build, tests under qemu)"
                );
                add(
                    crate::check_arm::run_for_tests().map(|c| (c, true)),
                    "check-arm",
                );
            }
        }
        times.push(format!("{} {} s", stage.name(), t.elapsed().as_secs()));
    }
    if !stages.contains(&Stage::Tch) || !stages.contains(&Stage::Arm) {
        println!(
            "(optional stages: `cargo xtask test --with tch` for the libtorch backend, `--with arm` for the aarch64 check under qemu; `.ci/run` runs both)"
        );
    }
    println!("stage times: {}", times.join(", "));
    println!(
        "tests: {} passed, {} failed, {} skipped",
        total.passed, total.failed, total.ignored
    );
    if !failures.is_empty() {
        bail!("failed: {}", failures.join(", "));
    }
    if total.passed == 0 {
        bail!("no test ran");
    }
    Ok(())
}

/// The libtorch stage: only the tests about tch (the rest ran in the workspace stage).
fn tch_stage() -> Result<(Counts, bool)> {
    let env = crate::libtorch::ensure()?;
    let mut cmd = cargo();
    cmd.args([
        "test",
        "-p",
        "collab-backends",
        "-p",
        "collab-tests",
        "--features",
        "collab-backends/tch,collab-backends/arm,collab-tests/tch,collab-tests/arm",
        // The conformance module `tch_cpu`, the unit tests in `tch::`, tests named `.._tch..`.
        "--",
        "tch_cpu::",
        "tch::",
        "_tch",
    ]);
    env.apply(&mut cmd)?;
    stream(cmd, "cargo test (tch)")
}

/// Generates `template` as crate `my-<template>` into `target/templates/extension` (one folder
/// for all, replaced each time) and runs `cargo test` in it with the workspace's target
/// directory. Cargo reuses the workspace's builds of every dependency whose features and
/// profile agree; a collab crate whose dependencies resolve to other features in the template
/// is built again once (measured in session 17: 23 s for all four templates after the
/// workspace's build, 2 min when the collab crates had changed).
fn template_test(template: crate::new::Template) -> Result<(Counts, bool)> {
    let root = crate::new::checkout();
    let dir = root.join("target").join("templates").join("extension");
    if dir.exists() {
        std::fs::remove_dir_all(&dir).with_context(|| format!("clear {}", dir.display()))?;
    }
    crate::new::generate(&crate::new::Args {
        dir: dir.clone(),
        name: Some(format!("my-{}", template.name())),
        template,
        collab: Some(root.clone()),
        force: false,
    })?;
    println!("-- {}: cargo test in {}", template.name(), dir.display());
    let mut cmd = cargo();
    cmd.arg("test")
        .current_dir(&dir)
        .env("CARGO_TARGET_DIR", root.join("target"));
    stream(cmd, &format!("cargo test ({} template)", template.name()))
}

#[cfg(test)]
mod tests {
    use super::Counts;

    #[test]
    fn result_lines_are_summed_and_other_lines_ignored() {
        let mut c = Counts::default();
        c.add_line("test result: ok. 12 passed; 0 failed; 1 ignored; 0 measured; 0 filtered out");
        c.add_line("test result: FAILED. 3 passed; 2 failed; 0 ignored; 0 measured");
        c.add_line("test foo ... ok");
        c.add_line("running 5 tests");
        assert_eq!(
            c,
            Counts {
                passed: 15,
                failed: 2,
                ignored: 1
            }
        );
    }
}
