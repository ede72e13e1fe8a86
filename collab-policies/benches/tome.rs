//! Criterion bench of ToMe token merging (OTAS, SPEC §4): the DeiT-Tiny forward pass at batch
//! 16 on the candle CPU backend with no merging and with constant `r = 8` and `r = 16`
//! (schedules fitted to the 197 tokens). Merging must make the forward pass faster.
//!
//! ```text
//! cargo bench -p collab-policies --bench tome
//! ```

use std::hint::black_box;
use std::path::Path;
use std::time::Duration;

use collab_backends::candle::CandleBackend;
use collab_core::Backend;
use collab_core::fixtures::{deit_tiny, imagenet_sample};
use collab_core::input::{ImagePreprocess, load_image_batch};
use collab_core::model::Input;
use collab_policies::token::schedule::MergeSchedule;
use collab_policies::token::tome::ToMe;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};

const BATCH: usize = 16;

fn tome_forward(c: &mut Criterion) {
    let be = CandleBackend::cpu();
    let model = deit_tiny(be.clone()).expect("DeiT-Tiny fixture");
    let imgs = imagenet_sample().expect("ImageNet sample fixture");
    let paths: Vec<&Path> = imgs[..BATCH].iter().map(|i| i.path.as_path()).collect();
    let data = load_image_batch(&ImagePreprocess::imagenet(224), &paths).expect("images");
    let input = Input::Images(be.from_vec(data, &[BATCH, 3, 224, 224]).expect("tensor"));
    let layers = model.num_blocks();
    let mut g = c.benchmark_group("deit-tiny forward, batch 16");
    g.sample_size(10)
        .warm_up_time(Duration::from_secs(2))
        .measurement_time(Duration::from_secs(10))
        .throughput(Throughput::Elements(BATCH as u64));
    for r in [0, 8, 16] {
        let tome = ToMe::new(MergeSchedule::constant(r, layers).fitted(197, 1));
        g.bench_function(format!("tome r={r}"), |b| {
            b.iter(|| {
                let h = model.embed(black_box(&input)).expect("embed");
                let h = model.run_blocks_with(h, 0..layers, &tome).expect("blocks");
                model.head(&h).expect("head")
            })
        });
    }
    g.finish();
}

criterion_group!(benches, tome_forward);
criterion_main!(benches);
