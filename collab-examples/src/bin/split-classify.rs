//! `split-classify`: classifies ImageNet sample images with DeiT-Tiny split between a device
//! part (embedding + blocks `1..=k`) and a server part (blocks `k+1..=L` + head), both run
//! in-process, for every split point `k`.
//!
//! For each split point it prints the prediction (checked identical to the unsplit model), the
//! measured device and server latency, and the bytes that would cross the network (the
//! activation as f32, uncompressed; at split 0, the image as 8-bit pixels). Defaults are
//! embedded: the fixtures' DeiT-Tiny and the first sample images; no network, no GPU.
//!
//! Each side may run on its own backend: `--backends '{"device": "arm-q8", "cloud":
//! "candle-cpu"}'` (names in `collab_backends::any`; a backend whose feature is not compiled
//! in is refused with the feature to build with). On one f32 backend every split must give the
//! unsplit model's logits bit for bit; across backends the program reports the largest logit
//! difference and how many predictions agree with the unsplit model on the cloud's backend.
//!
//! ```text
//! cargo run --release -p collab-examples --bin split-classify -- --images 4 --split 6
//! cargo run --release -p collab-examples --features arm --bin split-classify -- \
//!     --backends '{"device": "arm-q8", "cloud": "candle-cpu"}'
//! ```

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use clap::Parser;
use collab_backends::any::{AnyTransformer, HostInput, SplitBackends};
use collab_core::cost::median;
use collab_core::fixtures;
use collab_core::input::ImagePreprocess;
use collab_core::model::ModelConfig;

#[derive(Parser, Debug)]
#[command(about = "Classify images with DeiT-Tiny split between device and server at every block")]
struct Args {
    /// How many sample images to classify (sorted file names).
    #[arg(long, default_value_t = 4)]
    images: usize,
    /// Only this split point (0 = server-only ... 12 = device-only); default: all.
    #[arg(long)]
    split: Option<usize>,
    /// Image files to classify instead of the fixture sample.
    #[arg(long, num_args = 1..)]
    files: Vec<PathBuf>,
    /// Checkpoint (default: the fixtures' DeiT-Tiny).
    #[arg(long)]
    checkpoint: Option<PathBuf>,
    /// Timed repetitions per split point (median reported).
    #[arg(long, default_value_t = 3)]
    repeats: usize,
    /// The backend of each side, as JSON.
    #[arg(
        long,
        default_value = r#"{ "device": "candle-cpu", "cloud": "candle-cpu" }"#
    )]
    backends: String,
}

fn main() -> Result<()> {
    let args = Args::parse();
    let backends = SplitBackends::from_json(&args.backends)?;
    let ckpt = match args.checkpoint {
        Some(p) => p,
        None => fixtures::deit_tiny_checkpoint()?,
    };
    let load = |name: &collab_backends::any::BackendName| -> Result<AnyTransformer> {
        AnyTransformer::from_safetensors(
            &name.open()?,
            ModelConfig::preset("deit_tiny_patch16_224")?,
            &ckpt,
        )
        .with_context(|| format!("loading {} on {name}", ckpt.display()))
    };
    let device = load(&backends.device)?;
    let cloud = load(&backends.cloud)?;
    let same_backend = backends.device == backends.cloud;
    let (paths, labels): (Vec<PathBuf>, Vec<Option<usize>>) = if args.files.is_empty() {
        let mut s = fixtures::imagenet_sample()?;
        s.truncate(args.images.max(1));
        s.into_iter().map(|i| (i.path, Some(i.label))).unzip()
    } else {
        (args.files.clone(), vec![None; args.files.len()])
    };
    let pre = ImagePreprocess::imagenet(224);
    let mut data = vec![];
    for p in &paths {
        data.extend(pre.load(p)?);
    }
    let n = paths.len();
    let input = HostInput::Images {
        data,
        dims: [n, 3, 224, 224],
    };
    let l = cloud.num_blocks();

    // The unsplit model, on the cloud's backend.
    let (full, _) = cloud.forward(&input)?;
    let argmax = |v: &[f32]| {
        v.iter()
            .enumerate()
            .max_by(|a, b| a.1.total_cmp(b.1))
            .map_or(0, |(i, _)| i)
    };
    let unsplit: Vec<usize> = full.chunks(1000).map(argmax).collect();
    println!(
        "DeiT-Tiny ({}), {n} image(s), device backend {}, cloud backend {}",
        ckpt.display(),
        device.backend_name(),
        cloud.backend_name()
    );
    for (i, p) in paths.iter().enumerate() {
        let name = p.file_name().and_then(|f| f.to_str()).unwrap_or("?");
        let label = labels[i].map_or("-".to_string(), |l| l.to_string());
        println!(
            "  {name:<40} predicted class {:>4}  label {label:>4}",
            unsplit[i]
        );
    }

    let splits: Vec<usize> = match args.split {
        Some(k) if k > l => bail!("split point {k} is past the last block ({l})"),
        Some(k) => vec![k],
        None => (0..=l).collect(),
    };
    println!();
    println!(
        "{:>5} {:>12} {:>12} {:>14} {:>16} {:>8}  predictions",
        "split", "device_ms", "server_ms", "bytes_on_wire", "max_logit_diff", "agree"
    );
    for k in splits {
        let (mut dev, mut srv) = (vec![], vec![]);
        let mut out = vec![];
        let mut wire = 0;
        for _ in 0..args.repeats.max(1) {
            let t = Instant::now();
            let h = device.start(&input, 0..k)?;
            dev.push(t.elapsed().as_secs_f64());
            // What crosses the network: the image's 8-bit pixels when nothing runs on the
            // device, else the hidden states as f32 (uncompressed).
            wire = if k == 0 {
                n * 3 * 224 * 224
            } else {
                h.x.len() * 4
            };
            let t = Instant::now();
            out = cloud.finish(&h, k..l)?.0;
            srv.push(t.elapsed().as_secs_f64());
        }
        let preds: Vec<usize> = out.chunks(1000).map(argmax).collect();
        let diff = out
            .iter()
            .zip(&full)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0f32, f32::max);
        if same_backend && diff != 0.0 {
            bail!("split at {k} on one backend changed the output: this is a bug");
        }
        let agree = preds.iter().zip(&unsplit).filter(|(a, b)| a == b).count();
        let (d, s) = (median(&dev) * 1e3, median(&srv) * 1e3);
        println!(
            "{k:>5} {d:>12.1} {s:>12.1} {wire:>14} {diff:>16.2e} {:>8}  {preds:?}",
            format!("{agree}/{n}")
        );
    }
    let h = device.start(&input, 0..0)?;
    let mut per_block = vec![];
    for b in 0..l {
        let t = Instant::now();
        device.run_blocks(&h, b..b + 1)?;
        per_block.push(t.elapsed().as_secs_f64() * 1e3);
    }
    println!();
    println!(
        "device per-block latency (ms, batch {n}, {}): {}",
        device.backend_name(),
        per_block
            .iter()
            .map(|v| format!("{v:.1}"))
            .collect::<Vec<_>>()
            .join(" ")
    );
    println!(
        "per image: activation at any split 197 x 192 x 4 bytes = {} bytes; \
         the image as 8-bit pixels {} bytes (what split 0 sends)",
        197 * 192 * 4,
        3 * 224 * 224
    );
    Ok(())
}
