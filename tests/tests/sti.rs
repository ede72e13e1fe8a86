//! STI on the real checkpoints (SPEC §3): shard files written from MiniLM and DeiT-Tiny, read
//! back with real IO, and sub-models streamed through the executor.

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is the failed assertion

use std::sync::Arc;

use collab_backends::candle::CandleBackend;
use collab_core::Backend;
use collab_core::fixtures;
use collab_core::model::{Input, Transformer};
use collab_policies::shard::exec::{ExecConfig, Executor, ShardCache, uniform};
use collab_policies::shard::file::{ShardFile, write_shard_file};
use collab_policies::shard::importance::ImportanceTable;
use collab_policies::shard::plan::{ComputeCosts, PlanInput, plan};
use collab_policies::shard::quant::QuantOptions;
use collab_policies::shard::{FIDELITIES, Fidelity, ShardKey};
use collab_tests::{deit_tiny, first_images, minilm};

type Be = CandleBackend;

/// A shard file of `model` in a fresh temp folder (removed by the caller).
fn write(model: &Transformer<Be>, tag: &str) -> (std::path::PathBuf, Arc<ShardFile>) {
    let dir = std::env::temp_dir().join(format!("collab-sti-{tag}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("model.safetensors");
    write_shard_file(model, tag, &path, &QuantOptions::default(), &|_, _| {}).unwrap();
    (dir, Arc::new(ShardFile::open(&path).unwrap()))
}

fn cosines(
    be: &Be,
    a: &<Be as Backend>::Tensor,
    b: &<Be as Backend>::Tensor,
    d: usize,
) -> Vec<f64> {
    let (a, b) = (be.to_vec(a).unwrap(), be.to_vec(b).unwrap());
    a.chunks(d)
        .zip(b.chunks(d))
        .map(|(x, y)| {
            let dot: f64 = x.iter().zip(y).map(|(p, q)| f64::from(p * q)).sum();
            let n = |v: &[f32]| v.iter().map(|p| f64::from(p * p)).sum::<f64>().sqrt();
            dot / (n(x) * n(y))
        })
        .collect()
}

#[test]
fn minilm_streams_from_its_shard_file_at_every_fidelity() {
    let be = CandleBackend::cpu();
    let (model, tok) = minilm(be.clone()).expect("MiniLM (run `cargo xtask fetch-models`)");
    let (dir, file) = write(&model, "minilm");
    let pairs = fixtures::stsb_dev().unwrap();
    let ids: Vec<Vec<u32>> = pairs[..4]
        .iter()
        .flat_map(|p| [tok.encode(&p.a).unwrap(), tok.encode(&p.b).unwrap()])
        .collect();
    let input = Input::Tokens(ids.clone());
    let dense = model.forward(&input).unwrap();
    let g = file.geometry().clone();
    let cfg = ExecConfig {
        io_bytes_per_s: None,
        buffer_bytes: u64::MAX,
        chunk: 1,
    };
    let mut exec = Executor::open(be.clone(), Arc::clone(&file), cfg).unwrap();
    let cache = ShardCache::load(&file, &FIDELITIES).unwrap();
    // Every shard at f32 is the dense model; lower widths drift away in order.
    let mut worst = Vec::new();
    for f in FIDELITIES {
        let out = exec
            .run_cached(&uniform(g.layers, g.heads, f), &cache, &input)
            .unwrap();
        worst.push(
            cosines(&be, &out, &dense, g.hidden)
                .into_iter()
                .fold(1.0, f64::min),
        );
    }
    assert!(worst[6] > 0.99999, "f32 {worst:?}");
    assert!(
        worst[5] > 0.999 && worst[4] > 0.995 && worst[2] > 0.95,
        "q8, q6, q4 {worst:?}"
    );
    assert!(worst[0] < worst[2] && worst[2] < worst[5], "{worst:?}");
    // The embedding's word rows are read per request: the whole word table never is.
    let full = uniform(g.layers, g.heads, Fidelity::F32);
    let (_, report) = exec
        .run(&full, &Input::Tokens(vec![ids[0].clone()]))
        .unwrap();
    let shards = g.keys().count() as u64
        * file
            .shard_len(ShardKey { layer: 0, shard: 0 }, Fidelity::F32)
            .unwrap();
    assert!(
        report.io_bytes > shards && report.io_bytes < shards + 200_000,
        "{report:?}"
    );
    // A planned sub-model under a memory budget: streamed = computed in memory, bit for bit,
    // and the weights alive never exceed the budget.
    let mut importance = ImportanceTable::zeros("minilm", "synthetic", 1.0, g.layers, g.heads);
    for key in g.keys() {
        for f in FIDELITIES {
            let v = (1.0 + key.shard as f64) * (1.0 - 1.0 / f64::from(f.bits()));
            importance.set(key, f, v).unwrap();
        }
    }
    let mut shard_bytes = [0; 7];
    for f in FIDELITIES {
        shard_bytes[f.index()] = file.shard_len(ShardKey { layer: 0, shard: 0 }, f).unwrap();
    }
    let costs = ComputeCosts {
        embed_s: 0.002,
        head_s: 0.001,
        per_layer_s: 0.001,
        per_shard_s: [0.0004; 7],
        working_bytes: 2 * g.shard_f32_bytes() + 200_000,
    };
    let resident = exec.meter().current();
    let budget = 3_000_000;
    let input_plan = PlanInput {
        geometry: &g,
        importance: &importance,
        shard_bytes,
        resident_bytes: resident,
        compute: costs.clone(),
        io_bytes_per_s: 50e6,
        target_s: 0.1,
        memory_budget: budget,
        preload_budget: 300_000,
    };
    let p = plan(&input_plan).unwrap();
    assert!(p.shard_count() > 0);
    let preload = p.preloaded();
    assert_eq!(preload.len(), p.preload.len());
    exec.set_preload(&preload).unwrap();
    let preload_bytes = exec.preload_bytes();
    exec.set_config(ExecConfig {
        io_bytes_per_s: Some(200e6),
        buffer_bytes: budget - resident - preload_bytes - costs.working_bytes,
        chunk: 1,
    });
    let one = Input::Tokens(vec![ids[1].clone()]);
    let (streamed, report) = exec.run(&p.layers, &one).unwrap();
    let cached = exec.run_cached(&p.layers, &cache, &one).unwrap();
    assert_eq!(be.to_vec(&streamed).unwrap(), be.to_vec(&cached).unwrap());
    assert!(
        report.peak_weight_bytes <= budget,
        "{} > {budget}",
        report.peak_weight_bytes
    );
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn deit_tiny_at_8_bits_agrees_with_f32_on_the_sample_images() {
    let be = CandleBackend::cpu();
    let model = deit_tiny(be.clone()).unwrap();
    let (dir, file) = write(&model, "deit");
    let g = file.geometry().clone();
    assert_eq!((g.layers, g.heads, g.ffn_slice()), (12, 3, 256));
    let cfg = ExecConfig {
        io_bytes_per_s: None,
        buffer_bytes: u64::MAX,
        chunk: 3,
    };
    let exec = Executor::open(be.clone(), Arc::clone(&file), cfg).unwrap();
    let cache = ShardCache::load(&file, &[Fidelity::Bits(8), Fidelity::F32]).unwrap();
    let (input, _) = first_images(&be, 4).unwrap();
    let dense = be
        .index_to_vec(&be.argmax_last(&model.forward(&input).unwrap()).unwrap())
        .unwrap();
    for f in [Fidelity::F32, Fidelity::Bits(8)] {
        let out = exec
            .run_cached(&uniform(g.layers, g.heads, f), &cache, &input)
            .unwrap();
        let top1 = be.index_to_vec(&be.argmax_last(&out).unwrap()).unwrap();
        assert_eq!(top1, dense, "{f}");
    }
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn sst2_dev_reads_872_labelled_sentences_of_both_classes() {
    let s = fixtures::sst2_dev().unwrap();
    assert_eq!(s.len(), 872);
    let positive = s.iter().filter(|x| x.label == 1).count();
    assert!(positive > 300 && positive < 572, "{positive}");
    assert!(
        s.iter()
            .all(|x| !x.text.is_empty() && !x.text.ends_with('\t'))
    );
    assert_eq!(fixtures::stsb_dev().unwrap().len(), 1500);
}
