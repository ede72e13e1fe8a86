//! Executor tests on small seeded models written to real shard files.

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is the failed assertion

use std::sync::Arc;

use collab_backends::candle::CandleBackend;
use collab_core::model::{Input, Transformer};
use collab_core::{Backend, Error};

use super::super::file::{ShardFile, write_shard_file};
use super::super::layout::test_models::{TempDir, tiny_bert, tiny_vit};
use super::super::quant::QuantOptions;
use super::super::{FIDELITIES, Fidelity, ShardKey};
use super::*;

type Be = CandleBackend;

fn shard_file(model: &Transformer<Be>, dir: &TempDir) -> Arc<ShardFile> {
    let path = dir.path().join("m.safetensors");
    write_shard_file(model, "tiny", &path, &QuantOptions::default(), &|_, _| {}).unwrap();
    Arc::new(ShardFile::open(&path).unwrap())
}

fn executor(file: &Arc<ShardFile>, buffer_bytes: u64, chunk: usize) -> Executor<Be> {
    let cfg = ExecConfig {
        io_bytes_per_s: None,
        buffer_bytes,
        chunk,
    };
    Executor::open(CandleBackend::cpu(), Arc::clone(file), cfg).unwrap()
}

fn images(be: &Be, n: usize) -> Input<Be> {
    let data: Vec<f32> = (0..n * 3 * 32 * 32)
        .map(|i| ((i * 37 % 101) as f32 / 50.0) - 1.0)
        .collect();
    Input::Images(be.from_vec(data, &[n, 3, 32, 32]).unwrap())
}

fn tokens() -> Input<Be> {
    Input::Tokens(vec![vec![1, 7, 7, 42, 3], vec![9, 2]])
}

fn max_diff(be: &Be, a: &<Be as Backend>::Tensor, b: &<Be as Backend>::Tensor) -> f32 {
    let (a, b) = (be.to_vec(a).unwrap(), be.to_vec(b).unwrap());
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(&b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

/// A sub-model with a varied shape: every fidelity, a layer without shards, shards skipped.
fn mixed(layers: usize, heads: usize) -> Vec<Vec<(usize, Fidelity)>> {
    (0..layers)
        .map(|l| {
            if l == 1 {
                return Vec::new();
            }
            (0..heads)
                .filter(|s| (s + l) % 3 != 2)
                .map(|s| (s, FIDELITIES[(s + 2 * l) % FIDELITIES.len()]))
                .collect()
        })
        .collect()
}

#[test]
fn every_shard_at_f32_computes_the_dense_model() {
    for (model, input) in [
        (tiny_vit(3).unwrap(), images(&CandleBackend::cpu(), 2)),
        (tiny_bert(4).unwrap(), tokens()),
    ] {
        let dir = TempDir::new("exec-dense");
        let file = shard_file(&model, &dir);
        let g = file.geometry().clone();
        let full = uniform(g.layers, g.heads, Fidelity::F32);
        let dense = model.forward(&input).unwrap();
        for chunk in [1, 2, g.heads] {
            let exec = executor(&file, u64::MAX, chunk);
            let cached = exec
                .run_cached(
                    &full,
                    &ShardCache::load(&file, &[Fidelity::F32]).unwrap(),
                    &input,
                )
                .unwrap();
            let (streamed, _) = exec.run(&full, &input).unwrap();
            let be = exec.backend();
            assert!(
                max_diff(be, &cached, &dense) < 1e-4,
                "chunk {chunk}: {}",
                max_diff(be, &cached, &dense)
            );
            assert!(max_diff(be, &streamed, &dense) < 1e-4);
        }
    }
}

#[test]
fn streaming_computes_exactly_what_the_cache_computes_with_a_preload() {
    let model = tiny_bert(5).unwrap();
    let dir = TempDir::new("exec-stream");
    let file = shard_file(&model, &dir);
    let g = file.geometry().clone();
    let sub = mixed(g.layers, g.heads);
    let cache = ShardCache::load(&file, &FIDELITIES).unwrap();
    let mut exec = executor(&file, u64::MAX, 2);
    let want = exec.run_cached(&sub, &cache, &tokens()).unwrap();
    let preload: Vec<(ShardKey, Fidelity)> = sub[0]
        .iter()
        .take(2)
        .map(|&(s, f)| (ShardKey { layer: 0, shard: s }, f))
        .collect();
    exec.set_preload(&preload).unwrap();
    let (got, report) = exec.run(&sub, &tokens()).unwrap();
    assert_eq!(
        exec.backend().to_vec(&got).unwrap(),
        exec.backend().to_vec(&want).unwrap()
    );
    // Only the shards not preloaded were read, plus the embedding rows (6 distinct tokens,
    // 5 positions).
    let streamed: u64 = sub
        .iter()
        .enumerate()
        .flat_map(|(l, v)| {
            v.iter()
                .map(move |&(s, f)| (ShardKey { layer: l, shard: s }, f))
        })
        .filter(|k| !preload.contains(k))
        .map(|(k, f)| file.shard_len(k, f).unwrap())
        .sum();
    let rows = 4 * g.hidden as u64 * (6 + 5);
    assert_eq!(report.io_bytes, streamed + rows);
    assert_eq!(report.layers.len(), g.layers);
    assert!(
        report
            .layers
            .windows(2)
            .all(|w| w[0].finish_s <= w[1].start_s)
    );
}

#[test]
fn the_loader_buffer_bounds_peak_weight_memory_and_one_layer_serialises_io() {
    let model = tiny_vit(6).unwrap();
    let dir = TempDir::new("exec-buffer");
    let file = shard_file(&model, &dir);
    let g = file.geometry().clone();
    let full = uniform(g.layers, g.heads, Fidelity::F32);
    let layer_bytes = g.heads as u64
        * file
            .shard_len(ShardKey { layer: 0, shard: 0 }, Fidelity::F32)
            .unwrap();
    let be = CandleBackend::cpu();
    let input = images(&be, 1);
    let mut unbounded = executor(&file, u64::MAX, 1);
    let resident = unbounded.meter().current();
    let (_, wide) = unbounded.run(&full, &input).unwrap();
    unbounded.set_config(ExecConfig {
        buffer_bytes: layer_bytes,
        ..unbounded.config()
    });
    let (_, narrow) = unbounded.run(&full, &input).unwrap();
    // One layer of buffer: at most one layer's shards, plus one chunk's f32 weights (decoded
    // and assembled: 2 x one shard), plus what is resident.
    let chunk_f32 = 2 * g.shard_f32_bytes();
    assert!(
        narrow.peak_weight_bytes <= resident + layer_bytes + chunk_f32,
        "{narrow:?}"
    );
    assert!(wide.peak_weight_bytes >= narrow.peak_weight_bytes);
    // With one layer of buffer, layer l + 1 is read only after layer l is done.
    for w in narrow.layers.windows(2) {
        assert!(w[1].ready_s >= w[0].finish_s, "{narrow:?}");
    }
    // A layer that cannot fit the buffer is refused before anything runs.
    unbounded.set_config(ExecConfig {
        buffer_bytes: layer_bytes - 1,
        ..unbounded.config()
    });
    assert!(matches!(
        unbounded.run(&full, &input),
        Err(Error::InvalidInput(_))
    ));
}

#[test]
fn the_throttled_loader_takes_bytes_over_bandwidth() {
    let model = tiny_vit(7).unwrap();
    let dir = TempDir::new("exec-throttle");
    let file = shard_file(&model, &dir);
    let g = file.geometry().clone();
    let full = uniform(g.layers, g.heads, Fidelity::F32);
    let total = g.keys().count() as u64
        * file
            .shard_len(ShardKey { layer: 0, shard: 0 }, Fidelity::F32)
            .unwrap();
    // All shards in 60 ms.
    let rate = total as f64 / 0.060;
    let mut exec = executor(&file, u64::MAX, 1);
    exec.set_config(ExecConfig {
        io_bytes_per_s: Some(rate),
        ..exec.config()
    });
    let (_, r) = exec.run(&full, &images(&CandleBackend::cpu(), 1)).unwrap();
    let last_ready = r.layers.last().unwrap().ready_s;
    assert!(last_ready >= 0.060 * 0.99, "{r:?}");
    assert!(r.latency_s >= last_ready);
}

#[test]
fn sub_models_that_do_not_fit_are_typed_errors() {
    let model = tiny_bert(8).unwrap();
    let dir = TempDir::new("exec-errors");
    let file = shard_file(&model, &dir);
    let g = file.geometry().clone();
    let mut exec = executor(&file, u64::MAX, 1);
    let cache = ShardCache::load(&file, &[Fidelity::F32]).unwrap();
    let bad: Vec<Vec<Vec<(usize, Fidelity)>>> = vec![
        uniform(g.layers + 1, g.heads, Fidelity::F32),
        vec![vec![(g.heads, Fidelity::F32)], vec![]],
        vec![vec![(0, Fidelity::F32), (0, Fidelity::Bits(4))], vec![]],
    ];
    for sub in &bad {
        assert!(
            matches!(exec.run(sub, &tokens()), Err(Error::InvalidInput(_))),
            "{sub:?}"
        );
        assert!(matches!(
            exec.run_cached(sub, &cache, &tokens()),
            Err(Error::InvalidInput(_))
        ));
    }
    // A fidelity missing from the cache, a token outside the vocabulary, images to a text model.
    let q4 = uniform(g.layers, g.heads, Fidelity::Bits(4));
    assert!(matches!(
        exec.run_cached(&q4, &cache, &tokens()),
        Err(Error::InvalidInput(_))
    ));
    let full = uniform(g.layers, g.heads, Fidelity::F32);
    assert!(matches!(
        exec.run(&full, &Input::Tokens(vec![vec![1, 50]])),
        Err(Error::InvalidInput(_))
    ));
    assert!(exec.run(&full, &images(&CandleBackend::cpu(), 1)).is_err());
    assert!(
        exec.set_preload(&[(ShardKey { layer: 9, shard: 0 }, Fidelity::F32)])
            .is_err()
    );
    // The executor still serves after every refusal.
    assert!(exec.run(&full, &tokens()).is_ok());
}

#[test]
fn fewer_shards_change_the_output_and_an_empty_sub_model_still_runs() {
    let model = tiny_vit(9).unwrap();
    let dir = TempDir::new("exec-fewer");
    let file = shard_file(&model, &dir);
    let g = file.geometry().clone();
    let exec = executor(&file, u64::MAX, 1);
    let cache = ShardCache::load(&file, &FIDELITIES).unwrap();
    let input = images(exec.backend(), 1);
    let full = exec
        .run_cached(&uniform(g.layers, g.heads, Fidelity::F32), &cache, &input)
        .unwrap();
    let q8 = exec
        .run_cached(
            &uniform(g.layers, g.heads, Fidelity::Bits(8)),
            &cache,
            &input,
        )
        .unwrap();
    let q2 = exec
        .run_cached(
            &uniform(g.layers, g.heads, Fidelity::Bits(2)),
            &cache,
            &input,
        )
        .unwrap();
    let fewer = exec
        .run_cached(&mixed(g.layers, g.heads), &cache, &input)
        .unwrap();
    let empty = exec
        .run_cached(&vec![Vec::new(); g.layers], &cache, &input)
        .unwrap();
    let be = exec.backend();
    let (d8, d2) = (max_diff(be, &q8, &full), max_diff(be, &q2, &full));
    assert!(
        d8 < d2,
        "8 bits ({d8}) should be closer to f32 than 2 bits ({d2})"
    );
    assert!(max_diff(be, &fewer, &full) > 1e-3);
    assert_eq!(be.dims(&empty), be.dims(&full));
}

#[test]
fn importance_measures_every_shard_and_fidelity_against_the_full_model() {
    let model = tiny_bert(10).unwrap();
    let dir = TempDir::new("exec-importance");
    let file = shard_file(&model, &dir);
    let g = file.geometry().clone();
    let exec = executor(&file, u64::MAX, 1);
    let cache = ShardCache::load(&file, &FIDELITIES).unwrap();
    let batches = vec![tokens(), Input::Tokens(vec![vec![4, 5, 6]])];
    let full: Vec<Vec<f32>> = batches
        .iter()
        .map(|b| exec.backend().to_vec(&model.forward(b).unwrap()).unwrap())
        .collect();
    let be = exec.backend().clone();
    // Metric: minus the distance of the outputs to the dense model's (0 is the best).
    let metric = move |outs: &[<Be as Backend>::Tensor]| {
        let mut d = 0.0;
        for (o, f) in outs.iter().zip(&full) {
            d += be
                .to_vec(o)?
                .iter()
                .zip(f)
                .map(|(a, b)| f64::from((a - b).abs()))
                .sum::<f64>();
        }
        Ok(-d)
    };
    let calls = std::cell::Cell::new(0);
    let m = exec
        .measure_importance(&cache, &batches, &metric, &|_, _| {
            calls.set(calls.get() + 1)
        })
        .unwrap();
    assert_eq!(calls.get(), g.layers * (g.heads + FIDELITIES.len() - 1));
    assert!(m.full.abs() < 1e-3, "{}", m.full);
    assert_eq!((m.without.len(), m.without[0].len()), (g.layers, g.heads));
    assert!(m.without.iter().flatten().all(|&v| v < m.full - 1e-4));
    for q in &m.quantised {
        assert_eq!(q[Fidelity::F32.index()], m.full);
        assert!(q[Fidelity::Bits(2).index()] < q[Fidelity::Bits(8).index()]);
    }
    let t = m.table("tiny", "distance");
    assert!(
        t.value(ShardKey { layer: 0, shard: 0 }, Fidelity::F32)
            > t.value(ShardKey { layer: 0, shard: 0 }, Fidelity::Bits(2))
    );
}
