//! Shard files: written and read back exactly, counted reads, and typed errors on damage.

use std::sync::Arc;

use collab_backends::candle::CandleBackend;
use collab_core::model::{Embedding, Transformer};
use collab_core::{Backend, Error};
use serde_json::Value;

use super::super::layout::test_models::{TempDir, tiny_bert, tiny_vit};
use super::super::layout::{ShardWeights, cut_layer};
use super::super::quant::{decode_shard, shard_fidelity};
use super::*;

fn write(model: &Transformer<CandleBackend>, dir: &TempDir, name: &str) -> (PathBuf, WriteReport) {
    let path = dir.path().join(format!("{name}.safetensors"));
    let report =
        write_shard_file(model, name, &path, &QuantOptions::default(), &|_, _| {}).expect("write");
    (path, report)
}

/// Every shard at f32 is the cut weights exactly and q8 close; residents are the model's;
/// sizes agree with the report; reads are counted exactly.
fn check_round_trip(model: &Transformer<CandleBackend>, name: &str, all_fidelities: bool) {
    let dir = TempDir::new(name);
    let (path, report) = write(model, &dir, name);
    let f = ShardFile::open(&path).expect("open");
    assert_eq!(f.model_config(), model.config());
    assert_eq!(f.name(), name);
    assert_eq!(f.path(), path);
    assert_eq!(
        report.file_bytes,
        std::fs::metadata(&path).expect("meta").len()
    );
    let g = f.geometry().clone();
    for (fid, bytes) in &report.bytes_per_fidelity {
        let sum: u64 = g.keys().map(|k| f.shard_len(k, *fid).expect("len")).sum();
        assert_eq!(sum, *bytes);
    }
    assert_eq!(f.bytes_read(), 0);
    let mut expected_read = 0;
    for layer in 0..g.layers {
        let (shards, resident) = cut_layer(model, layer).expect("cut");
        for (i, w) in shards.iter().enumerate() {
            let key = ShardKey { layer, shard: i };
            let blob = f.read_shard(key, Fidelity::F32).expect("read");
            expected_read += blob.len() as u64;
            assert_eq!(shard_fidelity(&blob).expect("header"), Fidelity::F32);
            assert_eq!(&decode_shard(&blob, &g).expect("decode"), w);
            let q8 = f.read_shard(key, Fidelity::Bits(8)).expect("read q8");
            expected_read += q8.len() as u64;
            let q8: ShardWeights = decode_shard(&q8, &g).expect("decode q8");
            assert!(w.relative_error(&q8) < 0.01, "{}", w.relative_error(&q8));
            if all_fidelities {
                for fid in FIDELITIES {
                    let b = f.read_shard(key, fid).expect("read");
                    expected_read += b.len() as u64;
                    assert!(decode_shard(&b, &g).is_ok());
                }
            }
        }
        assert_eq!(f.read_layer_resident(layer).expect("resident"), resident);
        expected_read += 6 * 4 * g.hidden as u64;
    }
    assert_eq!(f.bytes_read(), expected_read);
    let be = model.backend();
    let same = |entry: &str, t: &<CandleBackend as Backend>::Tensor| {
        let (v, shape) = f.read_f32(entry).expect("read");
        assert_eq!(v, be.to_vec(t).expect("to_vec"), "{entry}");
        assert_eq!(shape, be.dims(t));
    };
    match model.embedding() {
        Embedding::Text(e) => {
            same("embed.word", &e.word);
            same("embed.position", &e.position);
            same("embed.token_type0", &e.token_type0);
            same("embed.norm.bias", &e.norm.beta);
        }
        Embedding::Patches(p) => {
            same("embed.proj_w", &p.proj_w);
            same("embed.cls", &p.cls);
            same("embed.pos", &p.pos);
        }
    }
    let resident: u64 = expected_resident(model.config())
        .iter()
        .map(|(n, _)| f.tensor_len(n).expect("len"))
        .sum();
    assert_eq!(resident, report.resident_bytes);
    f.reset_bytes_read();
    assert_eq!(f.bytes_read(), 0);
}

#[test]
fn tiny_vit_file_round_trips() {
    check_round_trip(&tiny_vit(21).expect("tiny vit"), "tiny-vit", true);
}

#[test]
fn tiny_bert_file_round_trips() {
    check_round_trip(&tiny_bert(22).expect("tiny bert"), "tiny-bert", true);
}

#[test]
fn deit_tiny_file_round_trips() {
    let model = collab_core::fixtures::deit_tiny(CandleBackend::cpu()).expect("deit-tiny");
    check_round_trip(&model, "deit-tiny", false);
}

#[test]
fn rows_of_the_word_table_are_read_one_by_one_and_counted() {
    let model = tiny_bert(23).expect("tiny bert");
    let dir = TempDir::new("rows");
    let (path, _) = write(&model, &dir, "rows");
    let f = Arc::new(ShardFile::open(&path).expect("open"));
    let Embedding::Text(e) = model.embedding() else {
        panic!("a text model")
    };
    let word = model.backend().to_vec(&e.word).expect("word");
    let d = 32;
    let rows = [3u32, 0, 49, 3];
    let got = f.read_rows("embed.word", &rows).expect("rows");
    let want: Vec<f32> = rows
        .iter()
        .flat_map(|&r| word[r as usize * d..(r as usize + 1) * d].iter().copied())
        .collect();
    assert_eq!(got, want);
    assert_eq!(f.bytes_read(), (rows.len() * d * 4) as u64);
    assert!(matches!(
        f.read_rows("embed.word", &[50]),
        Err(Error::InvalidInput(_))
    ));
    assert!(matches!(
        f.read_rows("embed.token_type0", &[0]),
        Err(Error::InvalidInput(_))
    ));
    assert!(matches!(
        f.read_rows("embed.nothing", &[0]),
        Err(Error::BadFile { .. })
    ));
    let key = ShardKey { layer: 2, shard: 0 };
    assert!(matches!(
        f.read_shard(key, Fidelity::F32),
        Err(Error::InvalidInput(_))
    ));
    assert!(f.has("layer.1.shard.3.q2") && !f.has("layer.1.shard.4.q2"));
    // two threads share the file and every byte is counted once
    f.reset_bytes_read();
    let len = f
        .shard_len(ShardKey { layer: 1, shard: 1 }, Fidelity::Bits(3))
        .expect("len");
    let threads: Vec<_> = (0..2)
        .map(|_| {
            let f = Arc::clone(&f);
            std::thread::spawn(move || {
                for _ in 0..10 {
                    f.read_shard(ShardKey { layer: 1, shard: 1 }, Fidelity::Bits(3))
                        .expect("read");
                }
            })
        })
        .collect();
    for t in threads {
        t.join().expect("reader");
    }
    assert_eq!(f.bytes_read(), 20 * len);
}

/// Rewrites the header of the shard file at `src` into `dst` through `edit`, keeping its data.
fn rewrite(src: &Path, dst: &Path, edit: impl FnOnce(&mut serde_json::Map<String, Value>)) {
    let bytes = std::fs::read(src).expect("read");
    let n = u64::from_le_bytes(bytes[..8].try_into().expect("8 bytes")) as usize;
    let mut header: serde_json::Map<String, Value> =
        serde_json::from_slice(&bytes[8..8 + n]).expect("json");
    edit(&mut header);
    let mut h = serde_json::to_vec(&header).expect("json");
    h.resize(h.len().next_multiple_of(8), b' ');
    let mut out = (h.len() as u64).to_le_bytes().to_vec();
    out.extend(h);
    out.extend(&bytes[8 + n..]);
    std::fs::write(dst, out).expect("write");
}

fn bad_file_message(path: &Path) -> String {
    match ShardFile::open(path) {
        Err(Error::BadFile { path: p, message }) => {
            assert_eq!(p, path);
            message
        }
        other => panic!("expected a bad-file error, got {other:?}"),
    }
}

#[test]
fn damaged_files_are_typed_errors_naming_what_is_wrong() {
    let model = tiny_vit(24).expect("tiny vit");
    let dir = TempDir::new("damaged");
    let (path, _) = write(&model, &dir, "ok");
    let bytes = std::fs::read(&path).expect("read");
    let broken = dir.path().join("broken.safetensors");
    for cut in [0, 5, 20, bytes.len() / 2, bytes.len() - 1] {
        std::fs::write(&broken, &bytes[..cut]).expect("write");
        let _ = bad_file_message(&broken);
    }
    std::fs::write(&broken, b"this is not a safetensors file at all").expect("write");
    assert!(bad_file_message(&broken).contains("safetensors"));
    assert!(matches!(
        ShardFile::open(&dir.path().join("absent.safetensors")),
        Err(Error::Io { .. })
    ));
    let case = |edit: &dyn Fn(&mut serde_json::Map<String, Value>)| {
        rewrite(&path, &broken, edit);
        bad_file_message(&broken)
    };
    let meta = |key: &'static str, value: Value| {
        move |h: &mut serde_json::Map<String, Value>| {
            h["__metadata__"][key] = value.clone();
        }
    };
    assert!(
        case(&|h| {
            h.remove("__metadata__");
        })
        .contains("metadata")
    );
    assert!(case(&meta(META_VERSION, "2".into())).contains("version 2"));
    assert!(case(&meta(META_MODEL, "{\"family\": \"gpt\"}".into())).contains(META_MODEL));
    assert!(
        case(&meta(
            META_QUANT,
            "{\"group\": 12, \"outlier_frac\": 0.0}".into()
        ))
        .contains(META_QUANT)
    );
    assert!(
        case(&|h| {
            h.remove("layer.2.shard.1.q5");
        })
        .contains("`layer.2.shard.1.q5`")
    );
    assert!(
        case(&|h| {
            h.remove("embed.cls");
        })
        .contains("`embed.cls`")
    );
    assert!(
        case(&|h| {
            h["layer.0.shard.0.f32"]["data_offsets"] = serde_json::json!([0, 1u64 << 40]);
        })
        .contains("`layer.0.shard.0.f32`")
    );
    assert!(
        case(&|h| {
            h["layer.0.norm1.bias"]["dtype"] = "F16".into();
        })
        .contains("F16")
    );
    assert!(
        case(&|h| {
            h["layer.1.fc2.bias"]["shape"] = serde_json::json!([16, 2]);
        })
        .contains("`layer.1.fc2.bias`")
    );
}

#[test]
fn shard_file_is_send_and_sync() {
    fn check<T: Send + Sync>() {}
    check::<ShardFile>();
}
