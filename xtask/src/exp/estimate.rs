//! `cargo xtask exp estimate-profile`: a per-block cost profile of a model on hardware that is
//! not here, from a roofline (collab_bench::estimate), labelled as an estimate in the file.
//! `exp collabtrans-throughput --profile FILE` replays it.

use anyhow::Result;
use collab_bench::estimate::RooflineEstimate;
use collab_core::cost::CostModel;
use collab_core::model::ModelConfig;

/// Arguments.
#[derive(clap::Args, Debug)]
pub(crate) struct Args {
    /// The model preset (`deit_tiny_patch16_224`, `vit_base_patch16_224`, ...).
    #[arg(long, default_value = "deit_tiny_patch16_224")]
    model: String,
    /// Batch sizes.
    #[arg(long, value_delimiter = ',', default_values_t = vec![1, 2, 4, 8, 16, 32, 64])]
    batches: Vec<usize>,
    /// Fraction of the H100's peak FLOP/s a kernel attains.
    #[arg(long, default_value_t = 0.5)]
    efficiency: f64,
    /// Microseconds per kernel launch.
    #[arg(long, default_value_t = 5.0)]
    launch_us: f64,
    /// Where to write the profile (default: `results/estimate-profile/h100-<model>.json`).
    #[arg(long)]
    out: Option<std::path::PathBuf>,
}

pub(crate) fn run(args: Args) -> Result<()> {
    let config = ModelConfig::preset(&args.model)?;
    let tokens = match &config {
        ModelConfig::Vit(v) => v.num_tokens(),
        ModelConfig::Bert(b) => b.max_positions.min(128),
    };
    let estimate = RooflineEstimate {
        efficiency: args.efficiency,
        launch_seconds: args.launch_us * 1e-6,
        ..RooflineEstimate::h100()
    };
    let profile =
        estimate.encoder_profile(&args.model, &config, tokens, &args.batches, &[tokens])?;
    let out = match args.out {
        Some(p) => p,
        None => {
            let dir = super::results_dir()?.join("estimate-profile");
            std::fs::create_dir_all(&dir)?;
            dir.join(format!("h100-{}.json", args.model))
        }
    };
    profile.save(&out)?;
    for &b in &args.batches {
        let t = profile.blocks_seconds(0..1, b, tokens)?;
        println!(
            "batch {b:>3}: one block {:.1} us, {:.2} us per request",
            t * 1e6,
            t * 1e6 / b as f64
        );
    }
    let one = profile.blocks_seconds(0..1, 1, tokens)?;
    let eight = profile.blocks_seconds(0..1, 8, tokens)?;
    println!("wrote {} ({})", out.display(), profile.provenance());
    println!(
        "estimate {}: a block at batch 8 costs {:.2}x batch 1 per request",
        args.model,
        eight / 8.0 / one
    );
    Ok(())
}
