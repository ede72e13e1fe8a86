//! Criterion benches of the Backend primitives on the candle CPU backend, at the shapes a
//! DeiT-Tiny / ViT-B block uses (batch 8, 197 tokens).
//!
//! ```text
//! cargo bench -p collab-backends --bench primitives
//! ```

use std::hint::black_box;

use collab_backends::candle::CandleBackend;
use collab_core::Backend;
use criterion::{Criterion, criterion_group, criterion_main};

fn filled(be: &CandleBackend, shape: &[usize]) -> <CandleBackend as Backend>::Tensor {
    let n: usize = shape.iter().product();
    be.from_vec(
        (0..n).map(|i| ((i % 113) as f32 / 56.0) - 1.0).collect(),
        shape,
    )
    .expect("tensor")
}

fn primitives(c: &mut Criterion) {
    let be = CandleBackend::cpu();
    let (b, n, d) = (8, 197, 768);
    let x = filled(&be, &[b, n, d]);
    let w = filled(&be, &[3 * d, d]);
    let bias = filled(&be, &[3 * d]);
    let gamma = filled(&be, &[d]);
    let beta = filled(&be, &[d]);
    let (h, hd) = (12, 64);
    let q = filled(&be, &[b, h, n, hd]);
    let scores = filled(&be, &[b, h, n, n]);
    let mut g = c.benchmark_group("candle-cpu");
    g.sample_size(10);
    g.bench_function("linear 1576x768 -> 2304 (ViT-B qkv, batch 8)", |bn| {
        bn.iter(|| be.linear(black_box(&x), &w, Some(&bias)).expect("linear"))
    });
    g.bench_function("attention [8,12,197,64]", |bn| {
        bn.iter(|| {
            be.attention(black_box(&q), &q, &q, 0.125, None)
                .expect("attention")
        })
    });
    g.bench_function("softmax_last [8,12,197,197]", |bn| {
        bn.iter(|| be.softmax_last(black_box(&scores), None).expect("softmax"))
    });
    g.bench_function("layer_norm [8,197,768]", |bn| {
        bn.iter(|| {
            be.layer_norm(black_box(&x), &gamma, &beta, 1e-6)
                .expect("ln")
        })
    });
    g.bench_function("gelu_erf [8,197,768]", |bn| {
        bn.iter(|| be.gelu_erf(black_box(&x)).expect("gelu"))
    });
    g.bench_function("permute+reshape qkv [8,197,3,12,64]", |bn| {
        let qkv = filled(&be, &[b, n, 3, h, hd]);
        bn.iter(|| {
            let p = be
                .permute(black_box(&qkv), &[2, 0, 3, 1, 4])
                .expect("permute");
            be.reshape(&be.narrow(&p, 0, 0, 1).expect("narrow"), &[b, h, n, hd])
                .expect("reshape")
        })
    });
    // ToMe's primitives: score argsort, gather of merged tokens, scatter-add into destinations.
    let sim = filled(&be, &[b, 98, 99]);
    let idx = be
        .index_from_vec(
            (0..b * 40 * d).map(|i| ((i / d) % 98) as u32).collect(),
            &[b, 40, d],
        )
        .expect("idx");
    let src = filled(&be, &[b, 40, d]);
    let dst = filled(&be, &[b, 99, d]);
    g.bench_function("argsort_last [8,98,99]", |bn| {
        bn.iter(|| be.argsort_last(black_box(&sim), true).expect("argsort"))
    });
    g.bench_function("gather [8,197,768] -> [8,40,768]", |bn| {
        bn.iter(|| be.gather(black_box(&x), 1, &idx).expect("gather"))
    });
    g.bench_function("scatter_add [8,40,768] into [8,99,768]", |bn| {
        bn.iter(|| {
            be.scatter_add(black_box(&dst), 1, &idx, &src)
                .expect("scatter")
        })
    });
    g.finish();
}

criterion_group!(benches, primitives);
criterion_main!(benches);
