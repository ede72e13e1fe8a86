//! Criterion bench of shard dequantisation (STI, SPEC §3): one MiniLM shard's FFN matrix
//! (128 x 384 weights) at every stored width, the executor's hot path between a shard's bytes
//! and its f32 weights.
//!
//! ```text
//! cargo bench -p collab-policies --bench dequantize
//! ```

use std::hint::black_box;

use collab_policies::shard::QUANT_BITS;
use collab_policies::shard::quant::{QuantOptions, quantize_matrix};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};

fn dequantize(c: &mut Criterion) {
    let n = 128 * 384;
    // Deterministic, roughly Gaussian weights with a few large ones (the outliers).
    let w: Vec<f32> = (0..n)
        .map(|i| {
            let x = ((i * 7919 % 1000) as f32 / 500.0) - 1.0;
            if i % 997 == 0 { 8.0 * x } else { 0.05 * x }
        })
        .collect();
    let mut out = vec![0f32; n];
    let mut g = c.benchmark_group("dequantize 128x384");
    g.throughput(Throughput::Elements(n as u64));
    for bits in QUANT_BITS {
        let q = quantize_matrix(&w, bits, &QuantOptions::default()).expect("quantize");
        g.bench_function(format!("{bits}-bit"), |b| {
            b.iter(|| q.dequantize_into(black_box(&mut out)).expect("dequantize"))
        });
    }
    g.finish();
}

criterion_group!(benches, dequantize);
criterion_main!(benches);
