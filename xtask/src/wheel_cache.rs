//! Toolchains installed from Python wheels on the package registry into a cache directory
//! (`setup-libtorch`, `setup-cuda`): one download-extract-mark protocol for both.
//!
//! The install directory is `$<env_var>`, else `$XDG_CACHE_HOME/collab/<dir_name>`, else
//! `~/.cache/collab/<dir_name>`. An install happens in a sibling `<name>.partial` directory:
//! `pip download --no-deps` of the pinned wheels, a Python `zipfile` script that extracts what is
//! needed, the caller's own finishing steps (checks, links), the wheels deleted, and the marker
//! `.complete` written last before the directory is renamed into place. An interrupted install
//! therefore never looks complete, and a second run finds the marker and does nothing.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{Context, Result, bail};

/// Written into the install directory once everything is in place.
const MARKER: &str = ".complete";

/// A set of pinned wheels and how to unpack them.
#[derive(Debug)]
pub(crate) struct WheelInstall<'a> {
    /// What is installed, for messages (`libtorch 2.11.0`).
    pub(crate) what: &'a str,
    /// The variable that overrides the install directory (`COLLAB_LIBTORCH`).
    pub(crate) env_var: &'a str,
    /// The directory's name under the cache (`libtorch-2.11.0`).
    pub(crate) dir_name: &'a str,
    /// `pip` requirement specifiers, each pinned.
    pub(crate) wheels: &'a [&'a str],
    /// A Python script called as `python3 -c SCRIPT DEST WHEEL...` that extracts what is needed.
    pub(crate) extract_py: &'a str,
    /// Roughly how much is downloaded, for the progress message (`about 530 MB`).
    pub(crate) download_size: &'a str,
}

impl WheelInstall<'_> {
    /// The install directory (see the module documentation).
    ///
    /// # Errors
    /// When none of the override variable, `XDG_CACHE_HOME` and `HOME` is set.
    pub(crate) fn dir(&self) -> Result<PathBuf> {
        if let Some(dir) = std::env::var_os(self.env_var).filter(|d| !d.is_empty()) {
            return Ok(PathBuf::from(dir));
        }
        let cache = std::env::var_os("XDG_CACHE_HOME")
            .filter(|d| !d.is_empty())
            .map(PathBuf::from)
            .or_else(|| std::env::var_os("HOME").map(|h| Path::new(&h).join(".cache")))
            .with_context(|| {
                format!(
                    "set {} (or HOME) to say where {} goes",
                    self.env_var, self.what
                )
            })?;
        Ok(cache.join("collab").join(self.dir_name))
    }

    /// The install directory, installed first unless a complete copy is there. `finish` runs on
    /// the partial directory after extraction (checks, links, generated files); an error from it
    /// leaves the install incomplete.
    ///
    /// # Errors
    /// When python3 with pip or the package registry is unreachable, a download or extraction
    /// fails, `finish` fails, or the cache directory cannot be written.
    pub(crate) fn ensure(&self, finish: impl FnOnce(&Path) -> Result<()>) -> Result<PathBuf> {
        let root = self.dir()?;
        if !root.join(MARKER).is_file() {
            self.install(&root, finish)?;
        }
        Ok(root)
    }

    fn install(&self, root: &Path, finish: impl FnOnce(&Path) -> Result<()>) -> Result<()> {
        let name = root
            .file_name()
            .with_context(|| format!("{} names no directory", root.display()))?;
        let mut partial_name = name.to_os_string();
        partial_name.push(".partial");
        let partial = root.with_file_name(partial_name);
        for stale in [&partial, &root.to_path_buf()] {
            if stale.exists() {
                std::fs::remove_dir_all(stale)
                    .with_context(|| format!("cannot remove the incomplete {}", stale.display()))?;
            }
        }
        let wheels_dir = partial.join("wheels");
        std::fs::create_dir_all(&wheels_dir)
            .with_context(|| format!("cannot create {}", wheels_dir.display()))?;
        eprintln!(
            "downloading {} ({}) into {}",
            self.what,
            self.download_size,
            partial.display()
        );
        run(Command::new("python3")
            .args(["-m", "pip", "download", "--quiet", "--no-deps"])
            .args(self.wheels)
            .arg("-d")
            .arg(&wheels_dir))
        .context(
            "pip download failed: python3 with pip and access to the package registry are needed",
        )?;
        let mut wheels: Vec<PathBuf> = std::fs::read_dir(&wheels_dir)?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "whl"))
            .collect();
        wheels.sort();
        if wheels.len() != self.wheels.len() {
            bail!(
                "pip left {} wheels in {}, expected {} ({:?})",
                wheels.len(),
                wheels_dir.display(),
                self.wheels.len(),
                self.wheels
            );
        }
        eprintln!("extracting");
        run(Command::new("python3")
            .args(["-c", self.extract_py])
            .arg(&partial)
            .args(&wheels))
        .context("cannot extract the wheels")?;
        std::fs::remove_dir_all(&wheels_dir)
            .with_context(|| format!("cannot delete {}", wheels_dir.display()))?;
        finish(&partial)?;
        std::fs::write(
            partial.join(MARKER),
            format!("{} from {:?}\n", self.what, self.wheels),
        )
        .context("cannot write the completion marker")?;
        std::fs::rename(&partial, root)
            .with_context(|| format!("cannot rename {} to {}", partial.display(), root.display()))
    }
}

/// Runs `cmd` with its stdout sent to stderr (the setup commands' stdout carries only `export`
/// lines).
///
/// # Errors
/// When `cmd` cannot start or exits unsuccessfully.
pub(crate) fn run(cmd: &mut Command) -> Result<()> {
    let status = cmd
        .stdout(Stdio::from(std::io::stderr()))
        .status()
        .with_context(|| format!("cannot start {cmd:?}"))?;
    if !status.success() {
        bail!("{cmd:?} exited with {status}");
    }
    Ok(())
}

/// `dirs` ahead of the entries of the variable `var` (without repeating them), joined with `:`.
///
/// # Errors
/// When a path contains `:` or the result is not UTF-8.
pub(crate) fn prepend(var: &str, dirs: &[PathBuf]) -> Result<String> {
    let mut paths = dirs.to_vec();
    if let Some(old) = std::env::var_os(var) {
        paths.extend(std::env::split_paths(&old).filter(|p| !dirs.contains(p)));
    }
    let joined =
        std::env::join_paths(paths).with_context(|| format!("a {var} entry contains ':'"))?;
    joined
        .into_string()
        .map_err(|_| anyhow::anyhow!("{var} is not UTF-8"))
}

/// `export K='V'` lines for a shell to `eval`.
pub(crate) fn exports(vars: &[(String, String)]) -> String {
    vars.iter()
        .map(|(k, v)| format!("export {k}='{}'\n", v.replace('\'', r"'\''")))
        .collect()
}
