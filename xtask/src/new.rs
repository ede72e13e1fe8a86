//! `cargo xtask new <dir> --template <name>`: a standalone crate that extends collab, with its
//! own `Cargo.toml` (the collab crates by path, switchable to released versions), a README and
//! tests that hold the extension to collab's conformance suites and compare it with the
//! baselines.
//!
//! Templates (in `xtask/templates/`, embedded at build time; `{{name}}` is the crate's name,
//! `{{crate}}` its Rust identifier):
//! - `batch-policy`: a `BatchPolicy` and its `typetag` config, the conformance suite, and a
//!   comparison with the shared-model and per-split baselines through collab-bench;
//! - `codec`: an `ActivationCodec` and its `CodecFactory`, the codec conformance suite, and a
//!   row against `int8` and `tpca` on the real DeiT-Tiny at one split;
//! - `split-strategy`: a `SplitStrategy` and its config, the conformance suite, and a device
//!   running it against a real server over loopback TCP;
//! - `pipeline`: server and device binaries assembled from one pipeline file, with the user's
//!   policy named in it and a backend per side; its test runs both as processes.
//!
//! The generated `Cargo.toml` copies collab's dev-profile settings and the generator copies
//! collab's `Cargo.lock`, so that with `CARGO_TARGET_DIR` pointing at collab's `target/` cargo
//! reuses collab's builds wherever the dependencies' features agree (a collab crate whose
//! dependencies resolve differently is built once more): `cargo xtask test` generates every
//! template and runs its tests that way.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use clap::ValueEnum;

/// Which template.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub(crate) enum Template {
    /// A custom batch policy for the shared-model server.
    BatchPolicy,
    /// A custom activation codec.
    Codec,
    /// A custom split strategy for devices.
    SplitStrategy,
    /// A server + device deployment from one pipeline file.
    Pipeline,
}

impl Template {
    pub(crate) const ALL: [Template; 4] = [
        Template::BatchPolicy,
        Template::Codec,
        Template::SplitStrategy,
        Template::Pipeline,
    ];

    pub(crate) fn name(self) -> &'static str {
        match self {
            Template::BatchPolicy => "batch-policy",
            Template::Codec => "codec",
            Template::SplitStrategy => "split-strategy",
            Template::Pipeline => "pipeline",
        }
    }

    /// The template's files: (path in the new crate, text with placeholders).
    fn files(self) -> Vec<(&'static str, &'static str)> {
        macro_rules! files {
            ($dir:literal: $($path:literal),+ $(,)?) => {
                vec![$(($path, include_str!(concat!("../templates/", $dir, "/", $path)))),+]
            };
        }
        match self {
            Template::BatchPolicy => files!("batch-policy": "README.md", "src/lib.rs",
                "tests/conformance.rs", "tests/compare.rs", "tests/serve.rs"),
            Template::Codec => files!("codec": "README.md", "src/lib.rs",
                "tests/conformance.rs", "tests/accuracy.rs", "tests/wire.rs"),
            Template::SplitStrategy => files!("split-strategy": "README.md", "src/lib.rs",
                "tests/conformance.rs", "tests/loopback.rs"),
            Template::Pipeline => files!("pipeline": "README.md", "pipeline.toml", "src/lib.rs",
                "src/bin/server.rs", "src/bin/device.rs", "tests/processes.rs"),
        }
    }

    /// (dependencies, dev-dependencies): collab crates by name, others as manifest lines.
    ///
    /// Every template's tests serve its extension on a real server over loopback TCP, so all
    /// of them build the same collab crates (with the same features of their dependencies):
    /// the four then share one build of those in a shared target directory.
    fn dependencies(self) -> (Vec<Dep>, Vec<Dep>) {
        use Dep::{Collab, Line};
        let common = [
            Collab("collab-core"),
            Collab("collab-policies"),
            Line(r#"serde = { version = "1.0", features = ["derive"] }"#),
            Line(r#"typetag = "0.2""#),
        ];
        let serving_tests = [
            Collab("collab-backends"),
            Collab("collab-net"),
            Line(r#"tokio = { version = "1.48", features = ["rt-multi-thread", "macros"] }"#),
            Line(
                r#"image = { version = "0.25.10", default-features = false, features = ["jpeg", "png"] }"#,
            ),
        ];
        match self {
            Template::BatchPolicy | Template::Codec => (
                common.to_vec(),
                [serving_tests.as_slice(), &[Collab("collab-bench")]].concat(),
            ),
            Template::SplitStrategy => (common.to_vec(), serving_tests.to_vec()),
            Template::Pipeline => (
                [
                    common.as_slice(),
                    &[
                        Collab("collab-net"),
                        Collab("collab-backends"),
                        Line(r#"clap = { version = "4.6", features = ["derive"] }"#),
                        Line(r#"anyhow = "1.0""#),
                    ],
                ]
                .concat(),
                vec![Line(r#"serde_json = "1.0""#)],
            ),
        }
    }
}

/// One dependency line of the generated manifest.
#[derive(Clone, Copy, Debug)]
enum Dep {
    /// A collab crate, by path into the checkout.
    Collab(&'static str),
    /// Any other dependency, as written.
    Line(&'static str),
}

/// Arguments.
#[derive(clap::Args, Debug)]
pub(crate) struct Args {
    /// The folder to create; its last component is the crate's name unless `--name` gives one
    /// (lowercase letters, digits and `-`).
    pub(crate) dir: PathBuf,
    /// The crate's name (default: the folder's name).
    #[arg(long)]
    pub(crate) name: Option<String>,
    /// What to generate.
    #[arg(long, value_enum)]
    pub(crate) template: Template,
    /// The collab checkout the crate depends on by path (default: this one).
    #[arg(long)]
    pub(crate) collab: Option<PathBuf>,
    /// Write into a folder that already has files (they are overwritten).
    #[arg(long)]
    pub(crate) force: bool,
}

/// This checkout's root (xtask's parent folder).
pub(crate) fn checkout() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map_or_else(|| PathBuf::from("."), Path::to_path_buf)
}

pub(crate) fn run(args: Args) -> Result<()> {
    let written = generate(&args)?;
    println!(
        "wrote {} ({} template, {} files): cd {} && cargo test",
        args.dir.display(),
        args.template.name(),
        written,
        args.dir.display()
    );
    Ok(())
}

/// Writes the crate; returns how many files it wrote.
pub(crate) fn generate(args: &Args) -> Result<usize> {
    let name = match &args.name {
        Some(n) => n.clone(),
        None => args
            .dir
            .file_name()
            .and_then(|n| n.to_str())
            .context("the folder needs a name")?
            .to_string(),
    };
    let valid = !name.is_empty()
        && name.starts_with(|c: char| c.is_ascii_lowercase())
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
    if !valid {
        bail!("crate name `{name}`: use lowercase letters, digits and `-`, starting with a letter");
    }
    if name.starts_with("collab") {
        bail!("crate name `{name}`: the collab-* names are the framework's own");
    }
    // The name is also the `kind` the crate registers, and for a codec its family: it may not
    // take a built-in's, look like a codec id with a rank, or be a dependency's name.
    let builtin_kinds = ["shared", "per-split", "server-only", "fixed", "selector"];
    let dependencies = [
        "serde",
        "typetag",
        "clap",
        "anyhow",
        "tokio",
        "image",
        "serde-json",
    ];
    let ranked = name
        .rsplit_once("-r")
        .is_some_and(|(_, r)| !r.is_empty() && r.bytes().all(|b| b.is_ascii_digit()));
    if builtin_kinds.contains(&name.as_str())
        || dependencies.contains(&name.as_str())
        || collab_policies::codec::CodecRegistry::builtin().contains(&name)
        || ranked
    {
        bail!(
            "crate name `{name}`: it is also the kind (and codec family) the crate registers, so it may not be a built-in kind ({}) or codec family, a dependency's name, or end in -r<digits>",
            builtin_kinds.join(", ")
        );
    }
    let collab = match &args.collab {
        Some(p) => p.clone(),
        None => checkout(),
    };
    let collab = std::fs::canonicalize(&collab)
        .with_context(|| format!("the collab checkout {}", collab.display()))?;
    if !collab.join("collab-core").is_dir() {
        bail!(
            "{} is not a collab checkout (no collab-core/)",
            collab.display()
        );
    }
    if args.dir.exists() && !args.force && std::fs::read_dir(&args.dir)?.next().is_some() {
        bail!(
            "{} has files already (--force overwrites)",
            args.dir.display()
        );
    }
    let ident = name.replace('-', "_");
    let fill = |text: &str| text.replace("{{name}}", &name).replace("{{crate}}", &ident);
    let mut files = vec![(
        "Cargo.toml".to_string(),
        manifest(&name, args.template, &collab),
    )];
    for (path, text) in args.template.files() {
        files.push((path.to_string(), fill(text)));
    }
    for (path, text) in &files {
        let to = args.dir.join(path);
        if let Some(parent) = to.parent() {
            std::fs::create_dir_all(parent)?;
        }
        std::fs::write(&to, text).with_context(|| format!("write {}", to.display()))?;
    }
    // collab's lock file: the same versions as collab's own build (cargo prunes the rest).
    let lock = collab.join("Cargo.lock");
    if lock.exists() {
        std::fs::copy(&lock, args.dir.join("Cargo.lock"))?;
    }
    Ok(files.len() + usize::from(lock.exists()))
}

/// The generated `Cargo.toml`.
fn manifest(name: &str, template: Template, collab: &Path) -> String {
    let line = |d: &Dep| match d {
        Dep::Collab(c) => {
            let features = if *c == "collab-backends" {
                r#", features = ["arm"]"#
            } else {
                ""
            };
            format!(
                "{c} = {{ path = {:?}{features} }}",
                collab.join(c).display().to_string()
            )
        }
        Dep::Line(l) => l.to_string(),
    };
    let (deps, dev) = template.dependencies();
    let direct: Vec<&str> = deps
        .iter()
        .chain(&dev)
        .filter_map(|d| match d {
            Dep::Collab(c) => Some(*c),
            Dep::Line(_) => None,
        })
        .collect();
    let deps: Vec<String> = deps.iter().map(line).collect();
    let dev: Vec<String> = dev.iter().map(line).collect();
    format!(
        r#"[package]
name = "{name}"
version = "0.1.0"
edition = "2024"
publish = false

# The collab crates of the checkout this crate was generated from, by path (they are not
# published yet; once they are, `version = "..."` replaces each `path = "..."`).
# (collab-backends' `arm` feature is the quantised device backend, `arm-q8`/`arm-q4`.)
[dependencies]
{deps}

[dev-dependencies]
{dev}

# A workspace of its own, not a member of any folder above it.
[workspace]

# collab's development profile: the tensor kernels optimised in test builds, so that tests on
# real models run at speed. With the same settings (and collab's Cargo.lock), building with
# CARGO_TARGET_DIR=<collab>/target reuses collab's own builds.
[profile.dev]
debug = "line-tables-only"

[profile.dev.package."*"]
opt-level = 3
debug-assertions = false
overflow-checks = false
debug = false

[profile.dev.package.gemm-f16]
opt-level = 3
{collab_profiles}"#,
        deps = deps.join("\n"),
        dev = dev.join("\n"),
        collab_profiles = collab_profiles(&direct),
    )
}

/// collab's crates are workspace members there (the `"*"` override does not apply to them):
/// each gets the same settings here, so that its builds are reused. (crate, opt-level, the
/// collab crates it depends on.)
const COLLAB_CRATES: [(&str, u8, &[&str]); 5] = [
    ("collab-core", 3, &[]),
    ("collab-backends", 3, &["collab-core"]),
    ("collab-policies", 3, &["collab-core"]),
    ("collab-bench", 3, &["collab-core", "collab-policies"]),
    (
        "collab-net",
        0,
        &["collab-core", "collab-policies", "collab-backends"],
    ),
];

/// The profile sections of the collab crates `direct` pulls in (only those: cargo warns about
/// a section that names a crate outside the build).
fn collab_profiles(direct: &[&str]) -> String {
    let used: Vec<&str> = COLLAB_CRATES
        .iter()
        .filter(|(c, _, _)| {
            direct.contains(c)
                || direct.iter().any(|d| {
                    COLLAB_CRATES
                        .iter()
                        .any(|(n, _, deps)| n == d && deps.contains(c))
                })
        })
        .map(|(c, _, _)| *c)
        .collect();
    COLLAB_CRATES
        .iter()
        .filter(|(c, _, _)| used.contains(c))
        .map(|(c, opt, _)| {
            format!(
                "\n[profile.dev.package.{c}]\nopt-level = {opt}\ndebug = \"line-tables-only\"\ndebug-assertions = true\noverflow-checks = true\n"
            )
        })
        .collect()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn args(dir: PathBuf, template: Template) -> Args {
        Args {
            dir,
            name: None,
            template,
            collab: None,
            force: false,
        }
    }

    #[test]
    fn every_template_fills_its_placeholders_and_names_existing_crates() {
        let root = std::env::temp_dir().join(format!("xtask-new-{}", std::process::id()));
        for t in Template::ALL {
            let dir = root.join(format!("my-{}", t.name()));
            let n = generate(&args(dir.clone(), t)).unwrap();
            assert!(n >= 5, "{}: {n} files", t.name());
            for entry in walk(&dir) {
                let text = std::fs::read_to_string(&entry).unwrap();
                assert!(
                    !text.contains("{{"),
                    "{} keeps a placeholder",
                    entry.display()
                );
            }
            let manifest = std::fs::read_to_string(dir.join("Cargo.toml")).unwrap();
            assert!(manifest.contains(&format!("name = \"my-{}\"", t.name())));
            for line in manifest.lines().filter(|l| l.contains("{ path = ")) {
                let path = line.split('"').nth(1).unwrap();
                assert!(Path::new(path).join("Cargo.toml").exists(), "{line}");
            }
            // A second run refuses to overwrite unless forced.
            assert!(generate(&args(dir.clone(), t)).is_err());
            let mut forced = args(dir, t);
            forced.force = true;
            assert!(generate(&forced).is_ok());
        }
        let _ = std::fs::remove_dir_all(&root);
    }

    /// docs/guide.md's Rust and TOML blocks are copies from the templates (all but the
    /// `[dependencies]` example): a template that changes without the guide fails here.
    #[test]
    fn every_snippet_of_the_guide_is_in_a_template() {
        let guide = std::fs::read_to_string(checkout().join("docs/guide.md")).unwrap();
        let sources: Vec<&str> = Template::ALL
            .iter()
            .flat_map(|t| t.files())
            .map(|(_, text)| text)
            .collect();
        let mut checked = 0;
        let mut lines = guide.lines();
        while let Some(line) = lines.next() {
            if line != "```rust" && line != "```toml" {
                continue;
            }
            let block: Vec<&str> = lines.by_ref().take_while(|l| *l != "```").collect();
            let block = block.join("\n");
            if block.contains("[dependencies]") {
                continue;
            }
            assert!(
                sources.iter().any(|s| s.contains(&block)),
                "this block of docs/guide.md is in no template:\n{block}"
            );
            checked += 1;
        }
        assert!(checked >= 10, "only {checked} blocks checked");
    }

    #[test]
    fn bad_names_are_refused() {
        for name in [
            "Bad",
            "1abc",
            "a_b",
            "collab-x",
            "shared",
            "int8",
            "tpca",
            "serde",
            "top-k-r16",
        ] {
            let dir = std::env::temp_dir().join(name);
            assert!(generate(&args(dir, Template::Codec)).is_err(), "{name}");
        }
    }

    fn walk(dir: &Path) -> Vec<PathBuf> {
        let mut out = vec![];
        for e in std::fs::read_dir(dir).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                out.extend(walk(&p));
            } else {
                out.push(p);
            }
        }
        out
    }
}
