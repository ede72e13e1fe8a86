//! Small seeded models for the shard tests: every parameter random, biases and norms included,
//! so that cutting, storing and reading back cannot pass by accident on zeros and ones.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

use collab_backends::candle::CandleBackend;
use collab_core::Result;
use collab_core::model::weights::{Init, SeededRandom, WeightSource};
use collab_core::model::{
    BertConfig, EncoderConfig, ModelConfig, NormPlacement, Transformer, VitConfig,
};

/// Seeded random values for every parameter (biases and norm shifts too; norm scales near 1).
#[derive(Debug)]
struct AllRandom(SeededRandom);

impl WeightSource for AllRandom {
    fn tensor(&self, name: &str, shape: &[usize], init: Init) -> Result<Vec<f32>> {
        let v = self.0.tensor(name, shape, Init::Normal(0.05))?;
        Ok(match init {
            Init::Ones => v.into_iter().map(|x| 1.0 + x).collect(),
            _ => v,
        })
    }

    fn contains(&self, _name: &str) -> bool {
        true
    }

    fn describe(&self) -> String {
        "all-random test weights".into()
    }
}

fn encoder(layers: usize, heads: usize, norm: NormPlacement) -> EncoderConfig {
    EncoderConfig {
        hidden: 32,
        layers,
        heads,
        intermediate: 64,
        layer_norm_eps: 1e-6,
        norm,
    }
}

/// A 3-layer, 2-head ViT (d = 32, FFN 64) on 32 x 32 images.
pub(crate) fn tiny_vit(seed: u64) -> Result<Transformer<CandleBackend>> {
    tiny_vit_on(CandleBackend::cpu(), seed)
}

/// [`tiny_vit`] on any backend (same seed, same weights).
pub(crate) fn tiny_vit_on<B: collab_core::Backend>(
    backend: B,
    seed: u64,
) -> Result<Transformer<B>> {
    let cfg = ModelConfig::Vit(VitConfig {
        encoder: encoder(3, 2, NormPlacement::Pre),
        image_size: 32,
        patch_size: 8,
        channels: 3,
        num_classes: 10,
    });
    Transformer::new(backend, cfg, &AllRandom(SeededRandom::new(seed)))
}

/// A 2-layer, 4-head BERT (d = 32, FFN 64) with a 50-token vocabulary.
pub(crate) fn tiny_bert(seed: u64) -> Result<Transformer<CandleBackend>> {
    let cfg = ModelConfig::Bert(BertConfig {
        encoder: encoder(2, 4, NormPlacement::Post),
        vocab_size: 50,
        max_positions: 16,
        type_vocab_size: 2,
        normalize: true,
    });
    Transformer::new(
        CandleBackend::cpu(),
        cfg,
        &AllRandom(SeededRandom::new(seed)),
    )
}

/// A fresh folder under the system temp dir, removed when dropped.
#[derive(Debug)]
pub(crate) struct TempDir(PathBuf);

impl TempDir {
    /// Creates `<tmp>/collab-shard-<pid>-<n>-<tag>`.
    pub(crate) fn new(tag: &str) -> Self {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let dir =
            std::env::temp_dir().join(format!("collab-shard-{}-{n}-{tag}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir is writable");
        Self(dir)
    }

    /// The folder.
    pub(crate) fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
