//! `cargo xtask fuzz`: runs the cargo-fuzz targets of `collab-net/fuzz` for a set time each
//! and records what they did (issue 31).
//!
//! - `frame_decoder`: arbitrary bytes through the frame decoder (whole and streamed in
//!   chunks) and, for every request that decodes, the server's validation;
//! - `codec_decode`: every built-in codec family's decoder through both validation steps, as
//!   DeiT-Tiny's server at split 6 with split bases; its corpus is seeded with a valid payload
//!   of each family.
//!
//! libFuzzer runs with `-rss_limit_mb` and `-malloc_limit_mb`, so an allocation a hostile
//! payload could force is a finding like a panic. Needs the nightly toolchain and
//! `cargo-fuzz` (installed with `cargo install cargo-fuzz --locked` when missing). Writes
//! `results/fuzz/summary.csv`; the last line is `fuzz targets=N seconds=S executions=E
//! findings=F`. Findings stay under `collab-net/fuzz/artifacts/<target>/`.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};
use clap::Args as ClapArgs;
use collab_core::split::{Activation, CodecId};
use collab_policies::codec::{CodecContext, CodecRegistry};
use collab_policies::svd::{SplitBases, SplitBasis};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// The targets, in the order they run.
const TARGETS: [&str; 2] = ["frame_decoder", "codec_decode"];

/// Options.
#[derive(ClapArgs, Debug)]
pub(crate) struct Args {
    /// Seconds per target.
    #[arg(long, default_value_t = 60)]
    seconds: u64,
    /// Only these targets (default: all).
    #[arg(long, value_delimiter = ',')]
    targets: Vec<String>,
    /// libFuzzer's limit on one allocation, MB. Above 64: faer's matrix kernels take a 64 MiB
    /// scratch buffer per thread on first use, whatever the input (found by the first run
    /// with a 64 MB limit).
    #[arg(long, default_value_t = 128)]
    malloc_limit_mb: u64,
    /// libFuzzer's limit on the process's resident set, MB.
    #[arg(long, default_value_t = 1024)]
    rss_limit_mb: u64,
}

fn fuzz_dir() -> PathBuf {
    PathBuf::from("collab-net").join("fuzz")
}

/// Makes sure `cargo +nightly fuzz` runs, installing cargo-fuzz if it is missing.
fn ensure_cargo_fuzz() -> Result<()> {
    let works = |args: &[&str]| {
        Command::new("cargo")
            .args(args)
            .output()
            .is_ok_and(|o| o.status.success())
    };
    if !works(&["+nightly", "--version"]) {
        bail!("the nightly toolchain is missing: `rustup toolchain install nightly`");
    }
    if !works(&["+nightly", "fuzz", "--version"]) {
        println!("installing cargo-fuzz (cargo install cargo-fuzz --locked)");
        let status = Command::new("cargo")
            .args(["install", "cargo-fuzz", "--locked"])
            .status()?;
        anyhow::ensure!(status.success(), "cargo install cargo-fuzz failed");
    }
    Ok(())
}

/// Writes one valid payload per built-in family (at the split and shape `codec_decode`
/// fuzzes, first byte the family's index, second the rank) into its corpus.
fn seed_codec_corpus(dir: &Path) -> Result<usize> {
    std::fs::create_dir_all(dir)?;
    let mut rng = StdRng::seed_from_u64(1);
    let mut draw = || {
        let values = (0..197 * 192)
            .map(|_| rng.random_range(-3.0f32..3.0))
            .collect();
        Activation::new(197, 192, values)
    };
    // The target fits its own bases; a payload on these others is still a fine seed (its
    // header and lengths are right; the fingerprint check is one more branch to cover).
    let calibration = (0..3)
        .map(|_| draw())
        .collect::<collab_core::Result<Vec<_>>>()?;
    let mut bases = SplitBases::new("deit_tiny_patch16_224");
    bases.insert(6, SplitBasis::fit(&calibration, "seed")?)?;
    let registry = CodecRegistry::builtin();
    let x = draw()?;
    let context = CodecContext {
        split: 6,
        bases: Some(&bases),
    };
    let mut written = 0;
    for (i, family) in registry.families().enumerate() {
        let id: CodecId = format!("{family}-r16").parse()?;
        let Ok(codec) = registry.build(&id, &context) else {
            continue;
        };
        let mut seed = vec![u8::try_from(i).unwrap_or(u8::MAX), 16];
        seed.extend(codec.encode(&x)?);
        std::fs::write(dir.join(format!("seed-{family}")), seed)?;
        written += 1;
    }
    Ok(written)
}

/// What one run printed in its final stats.
fn stat(stderr: &str, name: &str) -> Option<u64> {
    stderr
        .lines()
        .filter_map(|l| l.strip_prefix(&format!("stat::{name}:")))
        .filter_map(|v| v.trim().parse().ok())
        .next_back()
}

/// Files libFuzzer left for `target` (crashes, ooms, leaks, timeouts).
fn findings(target: &str) -> Result<Vec<String>> {
    let dir = fuzz_dir().join("artifacts").join(target);
    let mut out = vec![];
    if dir.exists() {
        for e in std::fs::read_dir(&dir)? {
            out.push(e?.file_name().to_string_lossy().into_owned());
        }
    }
    out.sort();
    Ok(out)
}

pub(crate) fn run(args: Args) -> Result<()> {
    ensure_cargo_fuzz()?;
    let targets: Vec<&str> = if args.targets.is_empty() {
        TARGETS.to_vec()
    } else {
        for t in &args.targets {
            anyhow::ensure!(
                TARGETS.contains(&t.as_str()),
                "unknown target {t} ({TARGETS:?})"
            );
        }
        args.targets.iter().map(String::as_str).collect()
    };
    let seeds = seed_codec_corpus(&fuzz_dir().join("corpus").join("codec_decode"))?;
    println!(
        "fuzz: {} s per target; codec_decode corpus seeded with {seeds} families",
        args.seconds
    );
    let mut rows = vec![];
    let (mut executions, mut found) = (0u64, 0usize);
    for target in &targets {
        let before = findings(target)?;
        let out = Command::new("cargo")
            .current_dir("collab-net")
            .args(["+nightly", "fuzz", "run", target, "--"])
            .arg(format!("-max_total_time={}", args.seconds))
            .arg(format!("-malloc_limit_mb={}", args.malloc_limit_mb))
            .arg(format!("-rss_limit_mb={}", args.rss_limit_mb))
            .arg("-print_final_stats=1")
            .output()
            .with_context(|| format!("running cargo fuzz run {target}"))?;
        let stderr = String::from_utf8_lossy(&out.stderr);
        let runs = stat(&stderr, "number_of_executed_units").unwrap_or(0);
        let peak = stat(&stderr, "peak_rss_mb").unwrap_or(0);
        let new: Vec<String> = findings(target)?
            .into_iter()
            .filter(|f| !before.contains(f))
            .collect();
        if !out.status.success() && new.is_empty() {
            let tail: Vec<&str> = stderr.lines().rev().take(30).collect();
            let tail: Vec<&str> = tail.into_iter().rev().collect();
            bail!("cargo fuzz run {target} failed:\n{}", tail.join("\n"));
        }
        println!(
            "| {target} | {runs} executions | peak RSS {peak} MB | {} new findings{} |",
            new.len(),
            if new.is_empty() {
                String::new()
            } else {
                format!(": {}", new.join(", "))
            }
        );
        executions += runs;
        found += new.len();
        rows.push(format!(
            "{target},{},{runs},{peak},{}",
            args.seconds,
            new.len()
        ));
    }
    let dir = super::exp::results_dir()?.join("fuzz");
    std::fs::create_dir_all(&dir)?;
    std::fs::write(
        dir.join("summary.csv"),
        format!(
            "target,seconds,executions,peak_rss_mb,findings\n{}\n",
            rows.join("\n")
        ),
    )?;
    println!("wrote results/fuzz/summary.csv");
    println!(
        "fuzz targets={} seconds={} executions={executions} findings={found}",
        targets.len(),
        args.seconds * targets.len() as u64
    );
    Ok(())
}
