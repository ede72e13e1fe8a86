//! `cargo xtask exp block-profile --model deit-tiny|vit-b16|minilm`: measures the model's
//! per-stage latency (embed, block, head) over a grid of batch sizes and token counts on a
//! backend (`--backend`, candle CPU by default) and saves it as a `MeasuredProfile` JSON under
//! `results/`: the cost model that split selection, schedulers and collab-bench's replay read.

use anyhow::Result;
use clap::ValueEnum;
use collab_backends::any::BackendTask;
use collab_core::cost::{CostModel, ProfileSpec, Workload, profile_model};
use collab_core::model::weights::SeededRandom;
use collab_core::model::{Input, ModelConfig, Transformer};
use collab_core::{Backend, fixtures};

use super::results_dir;

/// Which model to profile.
#[derive(Clone, Copy, Debug, ValueEnum)]
pub(crate) enum Model {
    /// DeiT-Tiny/16 (real weights).
    DeitTiny,
    /// ViT-B/16 (seeded random weights: compute cost only).
    VitB16,
    /// all-MiniLM-L6-v2 (real weights, from the model cache).
    Minilm,
}

/// Arguments.
#[derive(clap::Args, Debug)]
pub(crate) struct Args {
    /// The model.
    #[arg(long, value_enum)]
    model: Model,
    /// Batch sizes.
    #[arg(long, value_delimiter = ',', default_values_t = vec![1, 4, 16])]
    batches: Vec<usize>,
    /// Token counts entering a block (default: the model's own count and smaller ones).
    #[arg(long, value_delimiter = ',')]
    tokens: Vec<usize>,
    /// Timed repetitions per point (median kept).
    #[arg(long, default_value_t = 3)]
    repeats: usize,
    /// The backend to measure on (`candle-cpu`, `candle-cuda`, `tch-cuda`, ...: those this
    /// xtask build has; see `exp forward-throughput` for the features): on a GPU server, the
    /// profile `exp collabtrans-throughput --profile` and collab-bench replay.
    #[arg(long, default_value = "candle-cpu")]
    backend: String,
}

pub(crate) fn run(args: Args) -> Result<()> {
    super::throughput::open(&args.backend)?.run(Profile { args: &args })
}

/// [`profile`] on whichever backend `--backend` names.
struct Profile<'a> {
    args: &'a Args,
}

impl BackendTask for Profile<'_> {
    type Output = Result<()>;
    fn run<B: Backend>(self, backend: &B) -> Result<()> {
        profile(self.args, backend.clone())
    }
}

fn profile<B: Backend>(args: &Args, be: B) -> Result<()> {
    let (name, model, default_tokens) = match args.model {
        Model::DeitTiny => (
            "deit_tiny_patch16_224",
            fixtures::deit_tiny(be.clone())?,
            vec![50, 100, 150, 197],
        ),
        Model::VitB16 => (
            "vit_base_patch16_224",
            Transformer::new(
                be.clone(),
                ModelConfig::preset("vit_base_patch16_224")?,
                &SeededRandom::new(0),
            )?,
            vec![50, 100, 150, 197],
        ),
        Model::Minilm => (
            "all_minilm_l6_v2",
            fixtures::minilm(be.clone())?.0,
            vec![16, 32, 64, 128],
        ),
    };
    let spec = ProfileSpec {
        batches: args.batches.clone(),
        tokens: if args.tokens.is_empty() {
            default_tokens
        } else {
            args.tokens.clone()
        },
        repeats: args.repeats,
        per_layer: false,
    };
    let make = |b: usize| -> collab_core::Result<Input<B>> {
        match args.model {
            Model::Minilm => Ok(Input::Tokens(vec![vec![101; 32]; b])),
            _ => Ok(Input::Images(be.zeros(&[b, 3, 224, 224])?)),
        }
    };
    let profile = profile_model(&model, name, &spec, &make)?;
    for p in &profile.points {
        println!("{:<40} {:>9.2} ms", p.work.to_string(), p.seconds * 1e3);
    }
    let path = results_dir()?.join(format!("block-profile-{name}-{}.json", be.name()));
    profile.save(&path)?;
    println!("wrote {}", path.display());
    let b = *spec.batches.last().unwrap_or(&1);
    let t = *spec.tokens.last().unwrap_or(&1);
    let whole = profile.blocks_seconds(0..profile.layers, b, t)?;
    println!(
        "{name} blocks={} batch={b} tokens={t} predicted_blocks_ms={:.1} block0_ms={:.2}",
        profile.layers,
        whole * 1e3,
        profile.seconds(&Workload::Block {
            layer: 0,
            batch: b,
            tokens: t
        })? * 1e3
    );
    Ok(())
}
