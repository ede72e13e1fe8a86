//! `cargo xtask setup-libtorch`: installs libtorch 2.11.0 (the version tch 0.24 pins, see the
//! workspace Cargo.toml) from the Python package registry into a cache directory, for the `tch`
//! features of collab-backends, collab-tests and xtask.
//!
//! The registry has no CPU-only torch wheel for Linux x86_64, so this downloads the CUDA 13 wheel
//! `torch==2.11.0` (about 530 MB) and the two small wheels libtorch loads at start-up
//! (`nvidia-cuda-runtime`, `nvidia-cuda-cupti`), and keeps only what a Rust build needs:
//! - `torch/include` (the headers torch-sys compiles its C++ wrapper against),
//! - the CPU libraries of `torch/lib` (`libtorch_cpu`, `libtorch`, `libc10`, `libgomp`, ...),
//!   not `libtorch_cuda` and the other CUDA libraries (450 MB more, and they load only next to
//!   the whole CUDA stack): a build against this copy runs on the CPU. The linker drops the
//!   empty `libtorch.so` (whose only content is its dependency on `libtorch_cuda.so`) since
//!   nothing uses a symbol of it, so the missing `libtorch_cuda.so` is never looked for.
//! - `libcudart.so.13` and `libcupti.so.13` from the small wheels, in `nvidia/cu13/lib`, where
//!   the RUNPATH `$ORIGIN/../../nvidia/cu13/lib` of `libtorch_cpu.so` looks for them.
//!
//! Layout of the cache directory (see `wheel_cache` for where it is and the install protocol;
//! `$COLLAB_LIBTORCH` overrides it): `torch/` (what `LIBTORCH` points at, with a
//! `build-version` file so torch-sys checks the version) and `nvidia/cu13/lib/`.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Result, bail};

use crate::wheel_cache::{WheelInstall, prepend};

/// The libtorch version tch 0.24 requires.
const TORCH_VERSION: &str = "2.11.0";
/// The wheels to download: torch and the two CUDA runtime wheels `libtorch_cpu.so` needs at
/// load time (versions pinned in the torch wheel's METADATA).
const WHEELS: &[&str] = &[
    "torch==2.11.0",
    "nvidia-cuda-runtime==13.0.96.*",
    "nvidia-cuda-cupti==13.0.85.*",
];

/// Extracts the needed members of the wheels given as arguments 2.. into the directory given
/// as argument 1: the headers, the CPU libraries and the two CUDA runtime libraries.
const EXTRACT_PY: &str = r#"
import sys, zipfile, os
dest = sys.argv[1]
skip_libs = ("libtorch_cuda", "libc10_cuda", "libcaffe2_nvrtc", "libtorch_nvshmem", "libtorch_python")
cuda_libs = ("nvidia/cu13/lib/libcudart.so.13", "nvidia/cu13/lib/libcupti.so.13")
count = 0
for wheel in sys.argv[2:]:
    with zipfile.ZipFile(wheel) as z:
        for info in z.infolist():
            name = info.filename
            if info.is_dir():
                continue
            keep = name.startswith("torch/include/") or name in cuda_libs
            if name.startswith("torch/lib/"):
                base = name[len("torch/lib/"):]
                keep = "/" not in base and not base.startswith(skip_libs)
            if keep:
                z.extract(info, dest)
                count += 1
print(f"extracted {count} files")
"#;

/// The environment a build or test with the `tch` feature needs.
#[derive(Debug, Clone)]
pub(crate) struct LibtorchEnv {
    /// The install directory (holding `torch/` and `nvidia/`).
    pub(crate) root: PathBuf,
    /// `LIBTORCH`, read by torch-sys's build script: the `torch/` directory.
    pub(crate) libtorch: PathBuf,
    /// The libtorch libraries (`torch/lib`), to put ahead of `LD_LIBRARY_PATH` so that test
    /// binaries and programs built with the `tch` feature find them at run time.
    pub(crate) lib_dir: PathBuf,
}

impl LibtorchEnv {
    /// The variables to set, `LD_LIBRARY_PATH` being [`LibtorchEnv::lib_dir`] ahead of this
    /// process's own value.
    ///
    /// # Errors
    /// When a path contains the separator `:` or is not UTF-8.
    pub(crate) fn vars(&self) -> Result<Vec<(String, String)>> {
        Ok(vec![
            (
                "LIBTORCH".into(),
                self.libtorch.to_string_lossy().into_owned(),
            ),
            (
                "LD_LIBRARY_PATH".into(),
                prepend("LD_LIBRARY_PATH", std::slice::from_ref(&self.lib_dir))?,
            ),
        ])
    }

    /// Sets [`LibtorchEnv::vars`] on `cmd`.
    ///
    /// # Errors
    /// As [`LibtorchEnv::vars`].
    pub(crate) fn apply(&self, cmd: &mut Command) -> Result<()> {
        for (k, v) in self.vars()? {
            cmd.env(k, v);
        }
        Ok(())
    }

    /// `export` lines for a shell to `eval`: `LIBTORCH`, and `LD_LIBRARY_PATH` with the
    /// libtorch libraries ahead of the shell's own value.
    pub(crate) fn exports(&self) -> String {
        let quote = |p: &Path| format!("'{}'", p.to_string_lossy().replace('\'', r"'\''"));
        format!(
            "export LIBTORCH={}\nexport LD_LIBRARY_PATH={}${{LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}}\n",
            quote(&self.libtorch),
            quote(&self.lib_dir)
        )
    }
}

/// Where and how libtorch is installed.
const INSTALL: WheelInstall<'static> = WheelInstall {
    what: "libtorch 2.11.0",
    env_var: "COLLAB_LIBTORCH",
    dir_name: "libtorch-2.11.0",
    wheels: WHEELS,
    extract_py: EXTRACT_PY,
    download_size: "the torch wheel, about 530 MB",
};

/// Installs libtorch unless a complete copy is already there, and returns the environment a
/// `tch` build needs.
///
/// # Errors
/// When python3 with pip or the package registry is unreachable, a wheel lacks the expected
/// files, or the cache directory cannot be written.
pub(crate) fn ensure() -> Result<LibtorchEnv> {
    let root = INSTALL.ensure(finish)?;
    env_for(&root)
}

/// `cargo xtask setup-libtorch`: [`ensure`], then the install path and the `export` lines.
pub(crate) fn setup() -> Result<()> {
    let env = ensure()?;
    eprintln!("libtorch {TORCH_VERSION} in {}", env.root.display());
    eprintln!("# for builds and tests with the tch feature, in a shell:");
    print!("{}", env.exports());
    Ok(())
}

/// The environment for a complete install at `root`.
fn env_for(root: &Path) -> Result<LibtorchEnv> {
    let libtorch = root.join("torch");
    let lib_dir = libtorch.join("lib");
    if !lib_dir.join("libtorch_cpu.so").is_file() {
        bail!(
            "{} is marked complete but lacks libtorch_cpu.so: delete {} and run `cargo xtask setup-libtorch` again",
            lib_dir.display(),
            root.display()
        );
    }
    Ok(LibtorchEnv {
        root: root.to_path_buf(),
        libtorch,
        lib_dir,
    })
}

/// Checks the extracted files and writes `torch/build-version`.
fn finish(partial: &Path) -> Result<()> {
    let torch = partial.join("torch");
    for needed in [
        "lib/libtorch_cpu.so",
        "lib/libtorch.so",
        "lib/libc10.so",
        "include/torch/csrc/api/include/torch/torch.h",
    ] {
        if !torch.join(needed).is_file() {
            bail!("the torch wheel lacks torch/{needed}");
        }
    }
    for needed in ["libcudart.so.13", "libcupti.so.13"] {
        if !partial.join("nvidia/cu13/lib").join(needed).is_file() {
            bail!("the CUDA runtime wheels lack nvidia/cu13/lib/{needed}");
        }
    }
    std::fs::write(torch.join("build-version"), format!("{TORCH_VERSION}\n"))?;
    Ok(())
}
