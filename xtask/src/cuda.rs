//! `cargo xtask setup-cuda`: installs the CUDA 13.0 build toolchain (nvcc, the CUDA headers and
//! the libraries candle links against) from the Python package registry into a cache directory,
//! for the `cuda` feature of collab-backends (candle-core/cuda: candle-kernels compiles its
//! kernels with nvcc; cudarc links libcuda, libcublas, libcublasLt, libcurand and libnvrtc).
//!
//! The versions are those of `cuda-toolkit==13.0.2`, the toolkit torch 2.11.0 (the GPU machine's
//! PyTorch) depends on, so a binary built here links against the same library versions that a
//! torch 2.11 install carries. The wheels all unpack into one tree `nvidia/cu13/{bin,include,lib,
//! nvvm}`; this keeps that tree, minus its `nvidia/cu13/` prefix, as the CUDA root:
//! - `bin/nvcc` and its tools (`nvidia-cuda-nvcc`), `nvvm/` (cicc, libdevice: `nvidia-nvvm`),
//!   `include/` (`nvidia-cuda-runtime`, `nvidia-cuda-crt`, `nvidia-cuda-cccl`, ...);
//! - `lib/` with the real `libcudart.so.13`, `libcublas.so.13`, `libcublasLt.so.13`,
//!   `libcurand.so.10`, `libnvrtc.so.13`, plus the unversioned `libX.so` links the linker needs;
//! - `lib/stubs/libcuda.so` (soname `libcuda.so.1`): no wheel ships the driver library or its
//!   link stub, so this generates one with the C compiler: every `cu*` function that `cuda.h`
//!   declares (all API versions), each returning `CUDA_ERROR_STUB_LIBRARY` (34), as NVIDIA's own
//!   stub does. It is for linking, and for starting a binary on a machine without a driver
//!   (where opening a CUDA device then fails cleanly); it must never shadow a real driver.
//!
//! The install directory and protocol are `wheel_cache`'s (`$COLLAB_CUDA` overrides the
//! directory, `~/.cache/collab/cuda-13.0` by default).

use std::collections::BTreeSet;
use std::path::Path;
use std::process::{Command, Stdio};

use anyhow::{Context, Result, bail};

use crate::wheel_cache::{WheelInstall, prepend, run};

/// The CUDA release installed (the version `nvcc --version` reports).
const CUDA_VERSION: &str = "13.0";
/// The wheels, pinned to the versions `cuda-toolkit==13.0.2` requires.
const WHEELS: &[&str] = &[
    "nvidia-cuda-nvcc==13.0.88.*",
    "nvidia-nvvm==13.0.88.*",
    "nvidia-cuda-crt==13.0.88.*",
    "nvidia-cuda-runtime==13.0.96.*",
    "nvidia-cuda-cccl==13.0.85.*",
    "nvidia-cuda-nvrtc==13.0.88.*",
    "nvidia-cublas==13.1.0.3.*",
    "nvidia-curand==10.4.0.35.*",
];
/// The compute capability the kernels are built for unless `CUDA_COMPUTE_CAP` is set: 90, the
/// H100/H200 of the GPU machine.
const DEFAULT_COMPUTE_CAP: &str = "90";
/// Unversioned link names the linker resolves `-lX` with, and the libraries they point at.
const LINK_NAMES: &[(&str, &str)] = &[
    ("libcudart.so", "libcudart.so.13"),
    ("libcublas.so", "libcublas.so.13"),
    ("libcublasLt.so", "libcublasLt.so.13"),
    ("libcurand.so", "libcurand.so.10"),
    ("libnvrtc.so", "libnvrtc.so.13"),
];
/// `CUresult` of NVIDIA's stub driver library: "the stub library was loaded, not the driver".
const CUDA_ERROR_STUB_LIBRARY: u32 = 34;

/// Extracts the wheels given as arguments 2.. into the directory given as argument 1, dropping
/// the `nvidia/cu13/` prefix, keeping the executable bits, and skipping what no build needs
/// (packaging metadata, CMake files, static and alternative copies of the libraries).
const EXTRACT_PY: &str = r#"
import sys, zipfile, os
dest = sys.argv[1]
prefix = "nvidia/cu13/"
skip = ("libnvblas", "libcudart_static", "libnvrtc.alt", "libnvrtc-builtins.alt")
count = 0
for wheel in sys.argv[2:]:
    with zipfile.ZipFile(wheel) as z:
        for info in z.infolist():
            name = info.filename
            if info.is_dir() or not name.startswith(prefix):
                continue
            rel = name[len(prefix):]
            if ".." in rel.split("/") or rel.startswith((".metadata/", "lib/cmake/")):
                continue
            if os.path.basename(rel).startswith(skip):
                continue
            out = os.path.join(dest, rel)
            os.makedirs(os.path.dirname(out), exist_ok=True)
            with z.open(info) as src, open(out, "wb") as dst:
                while True:
                    chunk = src.read(1 << 20)
                    if not chunk:
                        break
                    dst.write(chunk)
            mode = (info.external_attr >> 16) & 0o777
            if mode:
                os.chmod(out, mode)
            count += 1
print(count, "files extracted", file=sys.stderr)
"#;

/// Where and how the toolchain is installed.
const INSTALL: WheelInstall<'static> = WheelInstall {
    what: "the CUDA 13.0 build toolchain",
    env_var: "COLLAB_CUDA",
    dir_name: "cuda-13.0",
    wheels: WHEELS,
    extract_py: EXTRACT_PY,
    download_size: "about 700 MB",
};

/// Installs the toolchain unless a complete copy is there, and returns the
/// environment a build (and a test run) with the `cuda` feature needs, with the values this
/// process's own variables imply:
/// - `PATH` with `<root>/bin` first (cudarc runs `nvcc --version` to pick its CUDA version);
/// - `NVCC` (read by cudaforge, candle-kernels' kernel builder), `CUDA_ROOT` and `CUDA_HOME`
///   (cudarc adds `<root>/lib` and `<root>/lib/stubs` to the link search path);
/// - `CUDARC_CUDA_VERSION=13000` (cudarc's bindings, without asking nvcc);
/// - `CUDA_COMPUTE_CAP` (kept if set, else 90: there is no GPU to ask here);
/// - `LIBRARY_PATH` with `<root>/lib` and `<root>/lib/stubs` (for the C linker);
/// - `LD_LIBRARY_PATH` with `<root>/lib` first, and `<root>/lib/stubs` too only when the system
///   has no `libcuda.so.1`, so that the stub never hides a real driver.
///
/// # Errors
/// When python3 with pip, a C compiler or the package registry is missing, a wheel lacks an
/// expected file, the cache directory cannot be written, or a path is not UTF-8 or contains `:`.
pub(crate) fn ensure() -> Result<Vec<(String, String)>> {
    let root = INSTALL.ensure(finish)?;
    check_install(&root)?;
    let lib = root.join("lib");
    let stubs = lib.join("stubs");
    let mut ld = vec![lib.clone()];
    if !system_has_libcuda() {
        ld.push(stubs.clone());
    }
    let compute_cap = std::env::var("CUDA_COMPUTE_CAP")
        .ok()
        .filter(|c| !c.is_empty())
        .unwrap_or_else(|| DEFAULT_COMPUTE_CAP.into());
    Ok(vec![
        ("PATH".into(), prepend("PATH", &[root.join("bin")])?),
        ("NVCC".into(), utf8(&root.join("bin").join("nvcc"))?),
        ("CUDA_ROOT".into(), utf8(&root)?),
        ("CUDA_HOME".into(), utf8(&root)?),
        ("CUDARC_CUDA_VERSION".into(), "13000".into()),
        ("CUDA_COMPUTE_CAP".into(), compute_cap),
        (
            "LIBRARY_PATH".into(),
            prepend("LIBRARY_PATH", &[lib, stubs])?,
        ),
        ("LD_LIBRARY_PATH".into(), prepend("LD_LIBRARY_PATH", &ld)?),
    ])
}

/// `cargo xtask setup-cuda`: [`ensure`]; then, on stdout, only the `export` lines (so that
/// `eval "$(cargo xtask setup-cuda)"` works), and on stderr where the toolchain is and its size.
pub(crate) fn setup() -> Result<()> {
    let vars = ensure()?;
    let root = INSTALL.dir()?;
    eprintln!(
        "CUDA {CUDA_VERSION} build toolchain in {} ({} MB)",
        root.display(),
        dir_size(&root)? / 1_000_000
    );
    eprintln!("# for builds and tests with the cuda feature, in a shell:");
    print!("{}", crate::wheel_cache::exports(&vars));
    Ok(())
}

/// Fails unless a complete install is at `root`.
fn check_install(root: &Path) -> Result<()> {
    let mut needed: Vec<String> = [
        "bin/nvcc",
        "bin/ptxas",
        "nvvm/bin/cicc",
        "nvvm/libdevice/libdevice.10.bc",
        "include/cuda_runtime.h",
        "include/cuda_fp16.h",
        "include/cublas_v2.h",
        "include/curand.h",
        "include/nvrtc.h",
        "include/crt/host_config.h",
        "include/cccl/cuda/std/version",
        "lib/stubs/libcuda.so",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    needed.extend(LINK_NAMES.iter().map(|(_, lib)| format!("lib/{lib}")));
    needed.extend(LINK_NAMES.iter().map(|(link, _)| format!("lib/{link}")));
    for rel in &needed {
        if !root.join(rel).is_file() {
            bail!(
                "the CUDA toolchain in {} lacks {rel}: delete that directory and run `cargo xtask setup-cuda` again",
                root.display()
            );
        }
    }
    Ok(())
}

/// After extraction: adds the link names and the driver stub, and checks nvcc and the files.
fn finish(partial: &Path) -> Result<()> {
    let lib = partial.join("lib");
    for (link, target) in LINK_NAMES {
        if !lib.join(target).is_file() {
            bail!("the wheels lack lib/{target}");
        }
        std::os::unix::fs::symlink(target, lib.join(link))
            .with_context(|| format!("cannot link lib/{link}"))?;
    }
    build_driver_stub(partial)?;
    let version = output(Command::new(partial.join("bin").join("nvcc")).arg("--version"))?;
    if !version.contains(&format!("release {CUDA_VERSION},")) {
        bail!("nvcc reports another release than {CUDA_VERSION}:\n{version}");
    }
    check_install(partial)
}

/// Writes `<root>/lib/stubs/libcuda.so` (and the link `libcuda.so.1`): a shared library with the
/// soname `libcuda.so.1` that defines every driver function `<root>/include/cuda.h` declares,
/// under each API version's name (`cuMemAlloc`, `cuMemAlloc_v2`, the `_ptds`/`_ptsz`
/// per-thread-stream forms, ...), each returning [`CUDA_ERROR_STUB_LIBRARY`].
fn build_driver_stub(root: &Path) -> Result<()> {
    let stubs = root.join("lib").join("stubs");
    std::fs::create_dir_all(&stubs)?;
    let cc = std::env::var("CC").unwrap_or_else(|_| "cc".into());
    let probe = stubs.join("cuda_h.c");
    std::fs::write(&probe, "#include <cuda.h>\n")?;
    let mut names = BTreeSet::new();
    for defines in [
        &[][..],
        &["-D__CUDA_API_VERSION_INTERNAL"][..],
        &["-DCUDA_API_PER_THREAD_DEFAULT_STREAM"][..],
    ] {
        let expanded = output(
            Command::new(&cc)
                .args(["-E", "-P"])
                .args(defines)
                .arg("-I")
                .arg(root.join("include"))
                .arg(&probe),
        )
        .context("cannot preprocess cuda.h: a C compiler (cc, or $CC) is needed")?;
        names.extend(driver_functions(&expanded));
    }
    if names.len() < 300 || !names.contains("cuInit") || !names.contains("cuMemAlloc_v2") {
        bail!(
            "found only {} driver functions in cuda.h: cannot build the libcuda stub",
            names.len()
        );
    }
    let mut source =
        String::from("/* Link stub of the CUDA driver, generated by cargo xtask setup-cuda. */\n");
    for name in &names {
        source.push_str(&format!(
            "int {name}(void) {{ return {CUDA_ERROR_STUB_LIBRARY}; }}\n"
        ));
    }
    let stub_c = stubs.join("libcuda_stub.c");
    std::fs::write(&stub_c, source)?;
    run(Command::new(&cc)
        .args(["-shared", "-fPIC", "-O1", "-Wl,-soname,libcuda.so.1", "-o"])
        .arg(stubs.join("libcuda.so"))
        .arg(&stub_c))
    .context("cannot compile the libcuda stub")?;
    std::os::unix::fs::symlink("libcuda.so", stubs.join("libcuda.so.1"))?;
    std::fs::remove_file(&probe)?;
    eprintln!("libcuda stub: {} driver functions", names.len());
    Ok(())
}

/// The driver functions declared in preprocessed C: identifiers `cu` + an upper-case letter
/// followed by `(`.
fn driver_functions(c: &str) -> BTreeSet<String> {
    let bytes = c.as_bytes();
    let is_ident = |b: u8| b.is_ascii_alphanumeric() || b == b'_';
    let mut names = BTreeSet::new();
    let mut i = 0;
    while i < bytes.len() {
        if !is_ident(bytes[i]) {
            i += 1;
            continue;
        }
        let start = i;
        while i < bytes.len() && is_ident(bytes[i]) {
            i += 1;
        }
        let ident = &c[start..i];
        let rest = c[i..].trim_start();
        let upper = ident.as_bytes().get(2).is_some_and(u8::is_ascii_uppercase);
        if ident.starts_with("cu") && upper && rest.starts_with('(') {
            names.insert(ident.to_string());
        }
    }
    names
}

/// Whether the dynamic loader can find a real `libcuda.so.1` (an NVIDIA driver) on this system.
fn system_has_libcuda() -> bool {
    for ldconfig in ["ldconfig", "/sbin/ldconfig", "/usr/sbin/ldconfig"] {
        if let Ok(out) = Command::new(ldconfig)
            .arg("-p")
            .stderr(Stdio::null())
            .output()
            && out.status.success()
        {
            return String::from_utf8_lossy(&out.stdout).contains("libcuda.so.1 ");
        }
    }
    [
        "/usr/lib/x86_64-linux-gnu",
        "/usr/lib64",
        "/usr/lib/wsl/lib",
    ]
    .iter()
    .any(|d| Path::new(d).join("libcuda.so.1").exists())
}

fn utf8(path: &Path) -> Result<String> {
    path.to_str()
        .map(str::to_string)
        .with_context(|| format!("{} is not UTF-8", path.display()))
}

/// Total size of the files under `dir` (links not followed).
fn dir_size(dir: &Path) -> Result<u64> {
    let mut total = 0;
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let meta = entry.path().symlink_metadata()?;
        total += if meta.is_dir() {
            dir_size(&entry.path())?
        } else {
            meta.len()
        };
    }
    Ok(total)
}

/// Runs `cmd` and returns its stdout.
fn output(cmd: &mut Command) -> Result<String> {
    let out = cmd
        .stderr(Stdio::inherit())
        .output()
        .with_context(|| format!("cannot start {cmd:?}"))?;
    if !out.status.success() {
        bail!("{cmd:?} exited with {}", out.status);
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn driver_functions_finds_declared_calls_only() {
        let c = "CUresult cuInit(unsigned int Flags);\nCUresult  cuMemAlloc_v2 (CUdeviceptr *p);\n\
                 typedef CUresult (*PFN_cuInit)(unsigned int);\nint cudaFoo(void); CUdevice cuda;";
        let names: Vec<_> = driver_functions(c).into_iter().collect();
        assert_eq!(names, ["cuInit", "cuMemAlloc_v2"]);
    }
}
