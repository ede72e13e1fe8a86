//! Split classification with the quantised device backend: DeiT-Tiny's embedding and blocks
//! `0..k` run on the device backend (`arm-q8` by default), the hidden state crosses to the
//! server as host `f32` values, and blocks `k..L` plus the head run on `f32`. Prints the top-1
//! class of each image next to the `f32` single-backend run, the device's weight memory, and
//! the device's per-block latency for one image.
//!
//! ```sh
//! cargo run -p collab-backends --features arm --example split_classify -- --images 4 --split 6 --bits q8
//! ```
//!
//! `cargo xtask check-arm` cross-builds it for aarch64 and runs it under qemu (it sets
//! `COLLAB_EMULATED=qemu`, and the latency is then labelled as emulated: not device speed).
//! Exits with an error when fewer than 3 in 4 images keep the `f32` top-1 class, or on any
//! failure (missing fixtures included). Needs the `arm` feature.

#[cfg(feature = "arm")]
fn main() -> std::process::ExitCode {
    match device::run() {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("split_classify: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

#[cfg(not(feature = "arm"))]
fn main() -> std::process::ExitCode {
    eprintln!("split_classify needs the `arm` feature: --features arm");
    std::process::ExitCode::FAILURE
}

#[cfg(feature = "arm")]
mod device {
    use std::path::Path;
    use std::time::Instant;

    use collab_backends::candle::quantized::{QuantizedCandleBackend, WeightBits, megabytes};
    use collab_core::input::{ImagePreprocess, load_image_batch};
    use collab_core::model::Input;
    use collab_core::{Backend, Error, Result, fixtures};

    /// Split classification on the quantised device backend.
    #[derive(clap::Parser, Debug)]
    struct Opts {
        /// Images to classify (the first sample images).
        #[arg(long, default_value_t = 4)]
        images: usize,
        /// Split point: embed and blocks `0..split` on the device.
        #[arg(long, default_value_t = 6)]
        split: usize,
        /// Device weight precision: f32, q8 or q4.
        #[arg(long, default_value = "q8", value_parser = |s: &str| WeightBits::parse(s).map_err(|e| e.to_string()))]
        bits: WeightBits,
    }

    fn argmax(
        b: &QuantizedCandleBackend,
        logits: &<QuantizedCandleBackend as Backend>::Tensor,
    ) -> Result<Vec<u32>> {
        b.index_to_vec(&b.argmax_last(logits)?)
    }

    pub(super) fn run() -> Result<()> {
        let o = <Opts as clap::Parser>::parse();
        let dev = QuantizedCandleBackend::new(o.bits);
        let srv = QuantizedCandleBackend::new(WeightBits::F32);
        let dev_model = fixtures::deit_tiny(dev.clone())?;
        let dev_mem = dev.memory();
        let srv_model = fixtures::deit_tiny(srv.clone())?;
        let srv_mem = srv.memory();
        let blocks = dev_model.num_blocks();
        if o.split > blocks || o.images == 0 {
            return Err(Error::Config(format!(
                "--split must be 0..={blocks} and --images at least 1"
            )));
        }
        let imgs = fixtures::imagenet_sample()?;
        let imgs = &imgs[..o.images.min(imgs.len())];
        let paths: Vec<&Path> = imgs.iter().map(|i| i.path.as_path()).collect();
        let data = load_image_batch(&ImagePreprocess::imagenet(224), &paths)?;
        let shape = [imgs.len(), 3, 224, 224];

        // The f32 single-backend run.
        let whole = argmax(
            &srv,
            &srv_model.forward(&Input::Images(srv.from_vec(data.clone(), &shape)?))?,
        )?;
        // Device: embed + blocks 0..k; hand over host f32 values; server: blocks k..L + head.
        let h = dev_model.embed(&Input::Images(dev.from_vec(data.clone(), &shape)?))?;
        let h = dev_model.run_blocks(h, 0..o.split)?;
        let wire = h.to_host(&dev)?;
        let h = srv_model.run_blocks(wire.to_backend(&srv)?, o.split..blocks)?;
        let split = argmax(&srv, &srv_model.head(&h)?)?;

        println!(
            "split-classify: DeiT-Tiny, embed + blocks 0..{} on {} (device), blocks {}..{blocks} + head on {}",
            o.split,
            dev.name(),
            o.split,
            srv.name()
        );
        let mut agree = 0;
        for (i, img) in imgs.iter().enumerate() {
            let same = whole[i] == split[i];
            agree += usize::from(same);
            println!(
                "image {i}: label {:>4}  f32 top-1 {:>4}  split top-1 {:>4}  {}",
                img.label,
                whole[i],
                split[i],
                if same { "same" } else { "DIFFERENT" }
            );
        }
        println!(
            "device weight memory: {:.2} MB ({} of {} linear weights packed, {:.2} bits/weight; \
             f32: {:.2} MB); interleaved kernel copy on this CPU: {:.2} MB",
            megabytes(dev_mem.total_bytes()),
            dev_mem.packed_weights,
            dev_mem.linear_weights,
            dev_mem.linear_bits_per_weight(),
            megabytes(srv_mem.total_bytes()),
            megabytes(dev_mem.interleaved_bytes),
        );

        let label = if std::env::var_os("COLLAB_EMULATED").is_some() {
            "emulated under qemu, not device speed".to_string()
        } else {
            format!("native {}", std::env::consts::ARCH)
        };
        let one = dev.from_vec(data[..3 * 224 * 224].to_vec(), &[1, 3, 224, 224])?;
        let t = Instant::now();
        let mut h = dev_model.embed(&Input::Images(one))?;
        let mut line = format!("embed {:.1}", t.elapsed().as_secs_f64() * 1e3);
        for i in 0..o.split {
            let t = Instant::now();
            h = dev_model.run_blocks(h, i..i + 1)?;
            line.push_str(&format!(
                ", block {i} {:.1}",
                t.elapsed().as_secs_f64() * 1e3
            ));
        }
        println!("device latency, one image, ms ({label}): {line}");

        let n = imgs.len();
        println!(
            "split-classify {} split={} agreement={agree}/{n} weight_mb={:.2} f32_weight_mb={:.2}",
            dev.name(),
            o.split,
            megabytes(dev_mem.total_bytes()),
            megabytes(srv_mem.total_bytes())
        );
        if 4 * agree < 3 * n {
            return Err(Error::Config(format!(
                "only {agree} of {n} images keep the f32 top-1 class (at least 3 in 4 expected)"
            )));
        }
        Ok(())
    }
}
