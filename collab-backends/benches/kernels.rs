//! Criterion benches of the candle backend's CPU kernels (`collab_backends::candle::kernels`),
//! each beside the candle operation it replaces, on every instruction set this CPU has, at the
//! shapes of DeiT-Tiny and ViT-B/16 blocks (197 tokens).
//!
//! ```text
//! cargo bench -p collab-backends --bench kernels
//! ```

use std::hint::black_box;

use candle_core::{Device, Tensor};
use collab_backends::candle::kernels::gelu::{gelu_erf, gelu_erf_with};
use collab_backends::candle::kernels::layer_norm::{layer_norm, layer_norm_with};
use collab_backends::candle::kernels::linear::{Activation, WeightLayout, linear};
use collab_backends::candle::kernels::simd::Isa;
use collab_backends::candle::kernels::softmax::{softmax_rows, softmax_rows_with};
use criterion::{Criterion, criterion_group, criterion_main};

fn values(n: usize) -> Vec<f32> {
    (0..n).map(|i| ((i % 113) as f32 / 28.0) - 2.0).collect()
}

fn tensor(shape: &[usize]) -> Tensor {
    Tensor::from_vec(values(shape.iter().product()), shape, &Device::Cpu).expect("tensor")
}

/// DeiT-Tiny's MLP activation at batch 1 and 8: `[b * 197, 768]`.
fn gelu(c: &mut Criterion) {
    let mut g = c.benchmark_group("gelu_erf");
    g.sample_size(20);
    for rows in [197, 8 * 197] {
        let n = rows * 768;
        let x = values(n);
        let t = tensor(&[rows, 768]);
        g.bench_function(format!("candle {rows}x768"), |b| {
            b.iter(|| black_box(&t).gelu_erf().expect("gelu"))
        });
        for isa in Isa::available() {
            let mut out = vec![0f32; n];
            g.bench_function(format!("{isa:?} one thread {rows}x768"), |b| {
                b.iter(|| gelu_erf_with(isa, black_box(&x), &mut out))
            });
        }
        let mut out = vec![0f32; n];
        g.bench_function(format!("threaded {rows}x768"), |b| {
            b.iter(|| gelu_erf(black_box(&x), &mut out))
        });
    }
    g.finish();
}

/// Layer norm of `[8 * 197, d]` for DeiT-Tiny's and ViT-B's widths.
fn norm(c: &mut Criterion) {
    let mut g = c.benchmark_group("layer_norm");
    g.sample_size(20);
    for d in [192, 768] {
        let rows = 8 * 197;
        let x = values(rows * d);
        let (gamma, beta) = (vec![1.1f32; d], vec![0.1f32; d]);
        let (t, tg, tb) = (tensor(&[rows, d]), tensor(&[d]), tensor(&[d]));
        g.bench_function(format!("candle-nn {rows}x{d}"), |b| {
            b.iter(|| candle_nn::ops::layer_norm(black_box(&t), &tg, &tb, 1e-6).expect("ln"))
        });
        for isa in Isa::available() {
            let mut out = vec![0f32; rows * d];
            g.bench_function(format!("{isa:?} one thread {rows}x{d}"), |b| {
                b.iter(|| layer_norm_with(isa, black_box(&x), &gamma, &beta, 1e-6, &mut out))
            });
        }
        let mut out = vec![0f32; rows * d];
        g.bench_function(format!("threaded {rows}x{d}"), |b| {
            b.iter(|| layer_norm(black_box(&x), &gamma, &beta, 1e-6, &mut out))
        });
    }
    g.finish();
}

/// Softmax over attention rows: `[3 * 197, 197]` (DeiT-Tiny's heads at batch 1).
fn softmax(c: &mut Criterion) {
    let mut g = c.benchmark_group("softmax");
    g.sample_size(20);
    let (rows, m) = (3 * 197, 197);
    let x = values(rows * m);
    let t = tensor(&[rows, m]);
    g.bench_function(format!("candle-nn {rows}x{m}"), |b| {
        b.iter(|| candle_nn::ops::softmax_last_dim(black_box(&t)).expect("softmax"))
    });
    for isa in Isa::available() {
        let mut y = x.clone();
        g.bench_function(format!("{isa:?} one thread {rows}x{m}"), |b| {
            b.iter(|| {
                y.copy_from_slice(&x);
                softmax_rows_with(isa, black_box(&mut y), m)
            })
        });
    }
    let mut y = x.clone();
    g.bench_function(format!("threaded {rows}x{m}"), |b| {
        b.iter(|| {
            y.copy_from_slice(&x);
            softmax_rows(black_box(&mut y), m)
        })
    });
    g.finish();
}

/// DeiT-Tiny's fc1 (`192 -> 768`) and fc2 (`768 -> 192`) at batch 1 and 32, and ViT-B's qkv at
/// batch 8: candle's `x W^T` then its bias add, against the fused kernel in both weight layouts.
fn linear_layers(c: &mut Criterion) {
    let mut g = c.benchmark_group("linear");
    g.sample_size(10);
    for (rows, k, n) in [
        (197, 192, 768),
        (197, 768, 192),
        (32 * 197, 192, 768),
        (32 * 197, 768, 192),
        (8 * 197, 768, 2304),
    ] {
        let (x, w, bias) = (values(rows * k), values(n * k), values(n));
        let (tx, tw, tb) = (tensor(&[rows, k]), tensor(&[n, k]), tensor(&[n]));
        let wt: Vec<f32> = (0..k * n).map(|i| w[(i % n) * k + i / n]).collect();
        g.bench_function(format!("candle {rows}x{k}->{n}"), |b| {
            b.iter(|| {
                black_box(&tx)
                    .matmul(&tw.t().expect("t"))
                    .and_then(|y| y.broadcast_add(&tb))
                    .expect("linear")
            })
        });
        let mut out = vec![0f32; rows * n];
        g.bench_function(format!("fused [n,k] {rows}x{k}->{n}"), |b| {
            b.iter(|| {
                linear(
                    black_box(&x),
                    rows,
                    k,
                    &w,
                    WeightLayout::OutIn,
                    n,
                    Some(&bias),
                    Activation::Identity,
                    &mut out,
                )
            })
        });
        g.bench_function(format!("fused [k,n] {rows}x{k}->{n}"), |b| {
            b.iter(|| {
                linear(
                    black_box(&x),
                    rows,
                    k,
                    &wt,
                    WeightLayout::InOut,
                    n,
                    Some(&bias),
                    Activation::Identity,
                    &mut out,
                )
            })
        });
    }
    g.finish();
}

criterion_group!(kernels, gelu, norm, softmax, linear_layers);
criterion_main!(kernels);
