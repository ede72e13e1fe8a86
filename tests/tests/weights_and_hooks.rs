//! Checkpoint naming (timm and Hugging Face ViT names give the same model), typed errors for
//! wrong or missing tensors, and the TokenAdapter hook points.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use collab_backends::candle::CandleBackend;
use collab_core::model::weights::{Init, SeededRandom, WeightSource};
use collab_core::model::{
    EncoderConfig, Hidden, Input, ModelConfig, NormPlacement, Transformer, VitConfig,
};
use collab_core::token::TokenAdapter;
use collab_core::{Backend, Error, Result};
use safetensors::tensor::{Dtype, TensorView};

/// Named tensors: shape and values.
type Tensors = BTreeMap<String, (Vec<usize>, Vec<f32>)>;

fn tiny_vit() -> ModelConfig {
    ModelConfig::Vit(VitConfig {
        encoder: EncoderConfig {
            hidden: 8,
            layers: 2,
            heads: 2,
            intermediate: 16,
            layer_norm_eps: 1e-6,
            norm: NormPlacement::Pre,
        },
        image_size: 32,
        patch_size: 16,
        channels: 3,
        num_classes: 5,
    })
}

/// Seeded random values that remembers every tensor the model asked for.
#[derive(Debug, Default)]
struct Recording {
    seen: Mutex<Tensors>,
}

impl WeightSource for Recording {
    fn tensor(&self, name: &str, shape: &[usize], init: Init) -> Result<Vec<f32>> {
        // Non-trivial norms and biases, so that a mix-up of names changes the output.
        let init = match init {
            Init::Normal(_) | Init::Ones | Init::Zeros => Init::Normal(0.2),
        };
        let v = SeededRandom::new(3).tensor(name, shape, init)?;
        let mut seen = self.seen.lock().expect("lock");
        seen.insert(name.to_string(), (shape.to_vec(), v.clone()));
        Ok(v)
    }
    fn contains(&self, _name: &str) -> bool {
        true
    }
    fn describe(&self) -> String {
        "recording".into()
    }
}

fn write(path: &Path, tensors: &Tensors) {
    let bytes: Vec<(String, Vec<usize>, Vec<u8>)> = tensors
        .iter()
        .map(|(n, (s, v))| {
            (
                n.clone(),
                s.clone(),
                v.iter().flat_map(|x| x.to_le_bytes()).collect(),
            )
        })
        .collect();
    let views: Vec<(String, TensorView<'_>)> = bytes
        .iter()
        .map(|(n, s, b)| {
            (
                n.clone(),
                TensorView::new(Dtype::F32, s.clone(), b).expect("view"),
            )
        })
        .collect();
    safetensors::serialize_to_file(views, None, path).expect("write safetensors");
}

/// timm name -> Hugging Face ViT name(s), written independently of the loader's map.
fn to_hf(timm: &Tensors) -> Tensors {
    let mut out = BTreeMap::new();
    for (name, (shape, v)) in timm {
        let fixed = match name.as_str() {
            "cls_token" => Some("vit.embeddings.cls_token"),
            "pos_embed" => Some("vit.embeddings.position_embeddings"),
            "patch_embed.proj.weight" => Some("vit.embeddings.patch_embeddings.projection.weight"),
            "patch_embed.proj.bias" => Some("vit.embeddings.patch_embeddings.projection.bias"),
            "norm.weight" => Some("vit.layernorm.weight"),
            "norm.bias" => Some("vit.layernorm.bias"),
            "head.weight" => Some("classifier.weight"),
            "head.bias" => Some("classifier.bias"),
            _ => None,
        };
        if let Some(f) = fixed {
            out.insert(f.to_string(), (shape.clone(), v.clone()));
            continue;
        }
        let rest = name.strip_prefix("blocks.").expect("block param");
        let (layer, param) = rest.split_once('.').expect("layer.param");
        let p = format!("vit.encoder.layer.{layer}");
        if let Some(kind) = param.strip_prefix("attn.qkv.") {
            let third = v.len() / 3;
            let mut s = shape.clone();
            s[0] /= 3;
            for (i, part) in ["query", "key", "value"].iter().enumerate() {
                out.insert(
                    format!("{p}.attention.attention.{part}.{kind}"),
                    (s.clone(), v[i * third..(i + 1) * third].to_vec()),
                );
            }
            continue;
        }
        let hf = match param {
            "norm1.weight" => "layernorm_before.weight",
            "norm1.bias" => "layernorm_before.bias",
            "norm2.weight" => "layernorm_after.weight",
            "norm2.bias" => "layernorm_after.bias",
            "attn.proj.weight" => "attention.output.dense.weight",
            "attn.proj.bias" => "attention.output.dense.bias",
            "mlp.fc1.weight" => "intermediate.dense.weight",
            "mlp.fc1.bias" => "intermediate.dense.bias",
            "mlp.fc2.weight" => "output.dense.weight",
            "mlp.fc2.bias" => "output.dense.bias",
            other => panic!("unexpected parameter {other}"),
        };
        out.insert(format!("{p}.{hf}"), (shape.clone(), v.clone()));
    }
    out
}

fn tmp(name: &str) -> PathBuf {
    std::env::temp_dir().join(format!("collab-{}-{name}.safetensors", std::process::id()))
}

#[test]
fn timm_and_hugging_face_vit_checkpoints_give_the_same_model() {
    let be = CandleBackend::cpu();
    let rec = Recording::default();
    let direct = Transformer::new(be.clone(), tiny_vit(), &rec).expect("build");
    let timm = rec.seen.lock().expect("lock").clone();
    let (pt, ph) = (tmp("timm"), tmp("hf"));
    write(&pt, &timm);
    write(&ph, &to_hf(&timm));
    let x = be
        .from_vec(
            (0..2 * 3 * 32 * 32)
                .map(|i| (i % 17) as f32 / 17.0)
                .collect(),
            &[2, 3, 32, 32],
        )
        .expect("x");
    let input = Input::Images(x);
    let want = be.to_vec(&direct.forward(&input).expect("fwd")).expect("v");
    for p in [&pt, &ph] {
        let m = Transformer::from_safetensors(be.clone(), tiny_vit(), p).expect("load");
        assert_eq!(
            be.to_vec(&m.forward(&input).expect("fwd")).expect("v"),
            want,
            "{}",
            p.display()
        );
    }
    std::fs::remove_file(pt).ok();
    std::fs::remove_file(ph).ok();
}

#[test]
fn a_vits_parameters_export_under_their_checkpoint_names_and_load_back() {
    let be = CandleBackend::cpu();
    let rec = Recording::default();
    let model = Transformer::new(be.clone(), tiny_vit(), &rec).expect("build");
    let loaded: Tensors = rec.seen.lock().expect("lock").clone();
    let exported: Tensors = model
        .named_parameters()
        .expect("export")
        .into_iter()
        .map(|t| (t.name, (t.shape, t.values)))
        .collect();
    assert_eq!(
        exported, loaded,
        "every parameter, by name, shape and value"
    );
    let path = tmp("export");
    model.save_safetensors(&path).expect("save");
    let back = Transformer::from_safetensors(be.clone(), tiny_vit(), &path).expect("load");
    let x = be
        .from_vec(
            (0..3 * 32 * 32).map(|i| (i % 13) as f32 / 13.0).collect(),
            &[1, 3, 32, 32],
        )
        .expect("x");
    let input = Input::Images(x);
    assert_eq!(
        be.to_vec(&back.forward(&input).expect("fwd")).expect("v"),
        be.to_vec(&model.forward(&input).expect("fwd")).expect("v")
    );
    std::fs::remove_file(path).ok();
}

#[test]
fn parameters_are_replaced_in_place_by_name_and_models_build_from_memory() {
    let be = CandleBackend::cpu();
    let mut model = Transformer::new(be.clone(), tiny_vit(), &SeededRandom::new(3)).expect("build");
    let before = model.named_parameters().expect("export");
    let mut visited = vec![];
    model
        .for_each_parameter_mut(|name, t| {
            visited.push(name.to_string());
            *t = be.affine(t, 2.0, 0.0)?;
            Ok(())
        })
        .expect("visit");
    let names: Vec<String> = before.iter().map(|t| t.name.clone()).collect();
    assert_eq!(visited, names, "every parameter once, in load order");
    let after = model.named_parameters().expect("export");
    for (a, b) in after.iter().zip(&before) {
        let doubled: Vec<f32> = b.values.iter().map(|v| v * 2.0).collect();
        assert_eq!(a.values, doubled, "{}", a.name);
    }
    let rebuilt = Transformer::new(
        be.clone(),
        tiny_vit(),
        &collab_core::model::NamedTensors::new(after),
    )
    .expect("from memory");
    let x = be
        .from_vec(
            (0..3 * 32 * 32).map(|i| (i % 11) as f32 / 11.0).collect(),
            &[1, 3, 32, 32],
        )
        .expect("x");
    let input = Input::Images(x);
    assert_eq!(
        be.to_vec(&rebuilt.forward(&input).expect("fwd"))
            .expect("v"),
        be.to_vec(&model.forward(&input).expect("fwd")).expect("v")
    );
    let e = model
        .for_each_parameter_mut(|name, _| {
            if name == "blocks.1.attn.proj.bias" {
                return Err(Error::InvalidInput("stop here".into()));
            }
            Ok(())
        })
        .expect_err("the visitor's error comes back");
    assert!(e.to_string().contains("stop here"), "{e}");
}

#[test]
fn wrong_or_missing_tensors_are_typed_errors_naming_them() {
    let be = CandleBackend::cpu();
    let rec = Recording::default();
    Transformer::new(be.clone(), tiny_vit(), &rec).expect("build");
    let mut timm = rec.seen.lock().expect("lock").clone();
    timm.insert(
        "blocks.1.mlp.fc1.weight".into(),
        (vec![16, 4], vec![0.0; 64]),
    );
    let p = tmp("bad-shape");
    write(&p, &timm);
    let e = Transformer::from_safetensors(be.clone(), tiny_vit(), &p).expect_err("bad shape");
    match &e {
        Error::TensorShape {
            name,
            expected,
            found,
            ..
        } => {
            assert_eq!(name, "blocks.1.mlp.fc1.weight");
            assert_eq!(
                (expected.as_slice(), found.as_slice()),
                (&[16, 8][..], &[16, 4][..])
            );
        }
        other => panic!("expected TensorShape, got {other}"),
    }
    timm.remove("blocks.1.mlp.fc1.weight");
    write(&p, &timm);
    let e = Transformer::from_safetensors(be, tiny_vit(), &p).expect_err("missing");
    assert!(
        matches!(&e, Error::MissingTensor { name, .. } if name == "blocks.1.mlp.fc1.weight"),
        "{e}"
    );
    assert!(
        e.to_string().contains("blocks.1.mlp.fc1.weight") && e.to_string().contains("[16, 8]"),
        "{e}"
    );
    std::fs::remove_file(p).ok();
}

/// Records where it is called and what it sees.
#[derive(Debug, Default)]
struct Probe {
    calls: Mutex<Vec<(usize, &'static str, Vec<usize>)>>,
}

impl TokenAdapter<CandleBackend> for Probe {
    fn name(&self) -> String {
        "probe".into()
    }
    fn gamma(&self, _layer: usize) -> i32 {
        0
    }
    fn before_attention(
        &self,
        be: &CandleBackend,
        layer: usize,
        h: Hidden<CandleBackend>,
    ) -> Result<Hidden<CandleBackend>> {
        self.calls
            .lock()
            .expect("lock")
            .push((layer, "before_attention", be.dims(&h.x)));
        Ok(h)
    }
    fn before_mlp(
        &self,
        be: &CandleBackend,
        layer: usize,
        h: Hidden<CandleBackend>,
        keys: &<CandleBackend as Backend>::Tensor,
    ) -> Result<Hidden<CandleBackend>> {
        self.calls
            .lock()
            .expect("lock")
            .push((layer, "before_mlp", be.dims(keys)));
        Ok(h)
    }
}

#[test]
fn token_adapter_hooks_run_once_per_block_with_the_keys() {
    let be = CandleBackend::cpu();
    let model = Transformer::new(be.clone(), tiny_vit(), &SeededRandom::new(1)).expect("build");
    let x = be.zeros(&[3, 3, 32, 32]).expect("x");
    let probe = Probe::default();
    let h = model.embed(&Input::Images(x)).expect("embed");
    model.run_blocks_with(h, 0..2, &probe).expect("run");
    let calls = probe.calls.lock().expect("lock").clone();
    assert_eq!(
        calls,
        vec![
            (0, "before_attention", vec![3, 5, 8]),
            (0, "before_mlp", vec![3, 2, 5, 4]),
            (1, "before_attention", vec![3, 5, 8]),
            (1, "before_mlp", vec![3, 2, 5, 4]),
        ]
    );
}
