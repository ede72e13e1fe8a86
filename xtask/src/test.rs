//! `cargo xtask test`: the README's test command, which `.ci/run` calls.
//!
//! Three stages, each a `cargo test` whose output streams through:
//! 1. `cargo test --workspace` (default features: candle CPU, the reference backend and the
//!    quantised device backend, which compiles and runs natively on x86_64 too);
//! 2. the libtorch backend: `cargo xtask setup-libtorch` (cached after the first run), then the
//!    tests whose names mention tch, in collab-backends (conformance, unit tests, cross-backend
//!    splits) and collab-tests (real checkpoints, split execution);
//! 3. `cargo xtask check-arm`: the device backend cross-built for aarch64 and run under qemu.
//!
//! The last line sums every stage: `tests: N passed, M failed, K skipped` (K ignored). Any
//! failing stage fails the command, after the later stages have still run.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

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

/// `cargo`, as the running cargo names itself.
pub(crate) fn cargo() -> Command {
    Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
}

/// Runs the three stages (see the module documentation); `args` go to the workspace stage.
pub(crate) fn run(args: &[String]) -> Result<()> {
    let mut total = Counts::default();
    let mut failures = vec![];

    println!("== stage 1/3: cargo test --workspace");
    let mut cmd = cargo();
    cmd.args(["test", "--workspace"]).args(args);
    let (c, ok) = stream(cmd, "cargo test --workspace")?;
    total.add(c);
    if !ok {
        failures.push("workspace tests");
    }

    println!("== stage 2/3: the libtorch backend (features tch, and arm for the arm -> tch split)");
    match crate::libtorch::ensure() {
        Ok(env) => {
            let mut cmd = cargo();
            cmd.args([
                "test",
                "-p",
                "collab-backends",
                "-p",
                "collab-tests",
                "--features",
                "collab-backends/tch,collab-backends/arm,collab-tests/tch,collab-tests/arm",
                // Only the tests about tch (the rest already ran in stage 1): the conformance
                // module `tch_cpu`, the unit tests in `tch::`, and tests named `.._tch..`.
                "--",
                "tch_cpu::",
                "tch::",
                "_tch",
            ]);
            env.apply(&mut cmd)?;
            let (c, ok) = stream(cmd, "cargo test (tch)")?;
            total.add(c);
            if !ok {
                failures.push("tch tests");
            }
        }
        Err(e) => {
            println!("cannot install libtorch: {e:#}");
            failures.push("libtorch setup");
        }
    }

    println!("== stage 3/3: cargo xtask check-arm (aarch64 cross build, tests under qemu)");
    match crate::check_arm::run_for_tests() {
        Ok(c) => total.add(c),
        Err(e) => {
            println!("check-arm failed: {e:#}");
            failures.push("check-arm");
        }
    }

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
