//! `split-classify`: classifies ImageNet sample images with DeiT-Tiny split between a device
//! part (embedding + blocks `1..=k`) and a server part (blocks `k+1..=L` + head), both run
//! in-process, for every split point `k`.
//!
//! For each split point it prints the prediction (checked identical to the unsplit model), the
//! measured device and server latency, and the bytes that would cross the network (the
//! activation as f32, uncompressed; at split 0, the image as 8-bit pixels). Defaults are
//! embedded: the fixtures' DeiT-Tiny and the first sample images; no network, no GPU.
//!
//! ```text
//! cargo run --release -p collab-examples --bin split-classify -- --images 4 --split 6
//! ```

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use clap::Parser;
use collab_backends::candle::CandleBackend;
use collab_core::cost::median;
use collab_core::input::ImagePreprocess;
use collab_core::model::{Input, ModelConfig, Transformer};
use collab_core::{Backend, fixtures};

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
}

fn main() -> Result<()> {
    let args = Args::parse();
    let be = CandleBackend::cpu();
    let ckpt = match args.checkpoint {
        Some(p) => p,
        None => fixtures::deit_tiny_checkpoint()?,
    };
    let model = Transformer::from_safetensors(
        be.clone(),
        ModelConfig::preset("deit_tiny_patch16_224")?,
        &ckpt,
    )
    .with_context(|| format!("loading {}", ckpt.display()))?;
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
    let input = Input::Images(be.from_vec(data, &[n, 3, 224, 224])?);
    let l = model.num_blocks();

    let full = be.to_vec(&model.forward(&input)?)?;
    let argmax = |v: &[f32]| {
        v.iter()
            .enumerate()
            .max_by(|a, b| a.1.total_cmp(b.1))
            .map_or(0, |(i, _)| i)
    };
    let unsplit: Vec<usize> = full.chunks(1000).map(argmax).collect();
    println!(
        "DeiT-Tiny ({}), {n} image(s), backend {}",
        ckpt.display(),
        be.name()
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
        "{:>5} {:>12} {:>12} {:>14} {:>12}  predictions",
        "split", "device_ms", "server_ms", "bytes_on_wire", "identical"
    );
    let mut block_ms = vec![];
    for k in splits {
        let (mut dev, mut srv) = (vec![], vec![]);
        let mut out = vec![];
        let mut wire = 0;
        for _ in 0..args.repeats.max(1) {
            let t = Instant::now();
            let h = model.run_blocks(model.embed(&input)?, 0..k)?;
            dev.push(t.elapsed().as_secs_f64());
            // What crosses the network: the image's 8-bit pixels when nothing runs on the
            // device, else the hidden states as f32 (uncompressed).
            wire = if k == 0 {
                n * 3 * 224 * 224
            } else {
                h.f32_bytes(&be)?
            };
            let t = Instant::now();
            let logits = model.head(&model.run_blocks(h, k..l)?)?;
            srv.push(t.elapsed().as_secs_f64());
            out = be.to_vec(&logits)?;
        }
        let preds: Vec<usize> = out.chunks(1000).map(argmax).collect();
        let identical = out == full;
        if !identical {
            bail!("split at {k} changed the output: this is a bug");
        }
        let (d, s) = (median(&dev) * 1e3, median(&srv) * 1e3);
        block_ms.push((k, d + s));
        println!("{k:>5} {d:>12.1} {s:>12.1} {wire:>14} {identical:>12}  {preds:?}");
    }
    let h = model.embed(&input)?;
    let mut per_block = vec![];
    for b in 0..l {
        let t = Instant::now();
        model.run_blocks(h.clone(), b..b + 1)?;
        per_block.push(t.elapsed().as_secs_f64() * 1e3);
    }
    println!();
    println!(
        "per-block latency (ms, batch {n}): {}",
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
