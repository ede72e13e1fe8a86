//! `cargo xtask shard --model minilm|deit-tiny`: writes a real checkpoint's STI shard file
//! (SPEC §3: every shard at 2, 3, 4, 5, 6, 8 bits and f32, plus the resident parameters) and
//! prints, per fidelity, the bytes of all shards, the effective bits per weight and the mean
//! relative reconstruction error of the shards' weights (read back from the file).

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use clap::ValueEnum;
use collab_backends::candle::CandleBackend;
use collab_core::fixtures;
use collab_policies::shard::file::{ShardFile, WriteReport, write_shard_file};
use collab_policies::shard::quant::{QuantOptions, decode_shard};
use collab_policies::shard::{FIDELITIES, Fidelity};
use indicatif::{ProgressBar, ProgressStyle};

/// Which checkpoint to shard.
#[derive(Clone, Copy, Debug, ValueEnum)]
pub(crate) enum Model {
    /// all-MiniLM-L6-v2 (model cache; `cargo xtask fetch-models`).
    Minilm,
    /// DeiT-Tiny/16 (fixtures).
    DeitTiny,
}

impl Model {
    /// The name used in paths and in the file's metadata: `minilm`, `deit-tiny`.
    pub(crate) fn name(self) -> &'static str {
        match self {
            Model::Minilm => "minilm",
            Model::DeitTiny => "deit-tiny",
        }
    }

    fn parse(name: &str) -> Result<Self> {
        match name {
            "minilm" => Ok(Model::Minilm),
            "deit-tiny" => Ok(Model::DeitTiny),
            other => bail!("no shardable model `{other}` (known: minilm, deit-tiny)"),
        }
    }
}

/// Arguments.
#[derive(clap::Args, Debug)]
pub(crate) struct Args {
    /// The model.
    #[arg(long, value_enum)]
    model: Model,
    /// Where to write the file (default: `<model cache>/sti/<model>.safetensors`).
    #[arg(long)]
    out: Option<PathBuf>,
    /// Values per quantisation group (a multiple of 8).
    #[arg(long, default_value_t = 64)]
    group: usize,
    /// Fraction of each matrix's largest-magnitude weights kept exactly.
    #[arg(long, default_value_t = 1.0 / 256.0)]
    outlier_frac: f64,
}

/// Where the shard file of `model` (`minilm` or `deit-tiny`) lives by default:
/// `<model cache>/sti/<model>.safetensors`.
pub(crate) fn default_path(model: &str) -> PathBuf {
    fixtures::models_dir()
        .join("sti")
        .join(format!("{model}.safetensors"))
}

/// Writes the shard file of `model` (`minilm` or `deit-tiny`) to `path` with the default
/// quantisation options, showing progress.
pub(crate) fn write(model: &str, path: &Path) -> Result<WriteReport> {
    write_with(Model::parse(model)?, path, &QuantOptions::default())
}

fn write_with(model: Model, path: &Path, opts: &QuantOptions) -> Result<WriteReport> {
    let be = CandleBackend::cpu();
    let transformer = match model {
        Model::Minilm => fixtures::minilm(be)?.0,
        Model::DeitTiny => fixtures::deit_tiny(be)?,
    };
    let pb = ProgressBar::new(0);
    pb.set_style(
        ProgressStyle::with_template("{msg} [{bar:40}] {pos}/{len} shards {elapsed_precise}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    pb.set_message(format!("sharding {}", model.name()));
    let progress = |done: usize, total: usize| {
        pb.set_length(total as u64);
        pb.set_position(done as u64);
    };
    let report = write_shard_file(&transformer, model.name(), path, opts, &progress)
        .with_context(|| format!("writing {}", path.display()))?;
    pb.finish_and_clear();
    Ok(report)
}

pub(crate) fn run(args: Args) -> Result<()> {
    let opts = QuantOptions {
        group: args.group,
        outlier_frac: args.outlier_frac,
    };
    opts.validate()?;
    let path = args
        .out
        .clone()
        .unwrap_or_else(|| default_path(args.model.name()));
    let report = write_with(args.model, &path, &opts)?;
    let file = ShardFile::open(&path)?;
    let g = file.geometry().clone();
    let weights = g.keys().count() as f64 * (g.attention_weights() + g.ffn_weights()) as f64;
    let mut errors = [0f64; FIDELITIES.len()];
    for key in g.keys() {
        let exact = decode_shard(&file.read_shard(key, Fidelity::F32)?, &g)?;
        for f in FIDELITIES {
            let approx = decode_shard(&file.read_shard(key, f)?, &g)?;
            errors[f.index()] += exact.relative_error(&approx);
        }
    }
    let shards = g.keys().count() as f64;
    println!(
        "{}: {} layers x {} shards (d={} hd={} s={}), group {}, outliers {}",
        args.model.name(),
        g.layers,
        g.heads,
        g.hidden,
        g.head_dim,
        g.ffn_slice(),
        opts.group,
        opts.outlier_frac
    );
    println!(
        "{:<8} {:>14} {:>10} {:>14}",
        "fidelity", "shard bytes", "bits/wt", "mean rel err"
    );
    for (f, bytes) in &report.bytes_per_fidelity {
        println!(
            "{:<8} {:>14} {:>10.3} {:>14.3e}",
            f.tag(),
            bytes,
            *bytes as f64 * 8.0 / weights,
            errors[f.index()] / shards
        );
    }
    println!(
        "resident {} bytes ({:.1} MB); file {} ({:.1} MB): {}",
        report.resident_bytes,
        report.resident_bytes as f64 / 1e6,
        report.file_bytes,
        report.file_bytes as f64 / 1e6,
        report.path.display()
    );
    Ok(())
}
