//! The parameters a device keeps resident: per-layer norms and output biases, the embedding
//! and the head, read from the shard file once.
//!
//! A BERT word table is not resident: the executor reads only the rows of the tokens a request
//! uses (and the position rows it needs), one `pread` per row, as an app on a phone would.
//! A ViT's patch embedding, class token and positions are small and stay resident.

use std::sync::Arc;

use collab_core::model::{
    BertConfig, ClassifierHead, Embedding, Head, Hidden, Input, LayerNorm, Linear, MeanPoolHead,
    ModelConfig, PatchEmbed, TextEmbed,
};
use collab_core::{Backend, Error, Result};

use super::super::file::ShardFile;
use super::super::meter::{Held, WeightMeter};
use super::layer::LayerTensors;

/// Everything but the shards.
#[derive(Debug)]
pub struct Resident<B: Backend> {
    /// Per-layer norms and biases.
    pub layers: Vec<LayerTensors<B>>,
    embed: ResidentEmbed<B>,
    head: Head<B>,
    _held: Held,
}

#[derive(Debug)]
enum ResidentEmbed<B: Backend> {
    Patches(Embedding<B>),
    /// Text: the word and position rows are read per request.
    Text {
        token_type0: B::Tensor,
        norm: LayerNorm<B>,
        cfg: BertConfig,
    },
}

fn tensor<B: Backend>(backend: &B, file: &ShardFile, name: &str) -> Result<(B::Tensor, u64)> {
    let (v, shape) = file.read_f32(name)?;
    let bytes = 4 * v.len() as u64;
    Ok((backend.from_vec(v, &shape)?, bytes))
}

fn norm<B: Backend>(
    backend: &B,
    file: &ShardFile,
    prefix: &str,
    eps: f32,
    bytes: &mut u64,
) -> Result<LayerNorm<B>> {
    let (gamma, a) = tensor(backend, file, &format!("{prefix}.weight"))?;
    let (beta, b) = tensor(backend, file, &format!("{prefix}.bias"))?;
    *bytes += a + b;
    Ok(LayerNorm { gamma, beta, eps })
}

impl<B: Backend> Resident<B> {
    /// Reads the resident parameters of `file`, counting their bytes with `meter`.
    ///
    /// # Errors
    /// File errors naming the missing or damaged entry.
    pub fn load(backend: &B, file: &ShardFile, meter: &Arc<WeightMeter>) -> Result<Self> {
        let cfg = file.model_config().clone();
        let eps = cfg.encoder().layer_norm_eps;
        let mut total = 0u64;
        let mut layers = Vec::with_capacity(file.geometry().layers);
        for l in 0..file.geometry().layers {
            let r = file.read_layer_resident(l)?;
            let bytes = 4 * [
                &r.norm1_gamma,
                &r.norm1_beta,
                &r.norm2_gamma,
                &r.norm2_beta,
                &r.proj_bias,
                &r.fc2_bias,
            ]
            .iter()
            .map(|v| v.len() as u64)
            .sum::<u64>();
            let d = r.proj_bias.len();
            let vec = |v: Vec<f32>| backend.from_vec(v, &[d]);
            layers.push(LayerTensors {
                norm1: LayerNorm {
                    gamma: vec(r.norm1_gamma)?,
                    beta: vec(r.norm1_beta)?,
                    eps: r.eps,
                },
                norm2: LayerNorm {
                    gamma: vec(r.norm2_gamma)?,
                    beta: vec(r.norm2_beta)?,
                    eps: r.eps,
                },
                proj_bias: vec(r.proj_bias)?,
                fc2_bias: vec(r.fc2_bias)?,
                held: meter.hold(bytes),
            });
        }
        let (embed, head) = match cfg {
            ModelConfig::Vit(v) => {
                let (proj_w, a) = tensor(backend, file, "embed.proj_w")?;
                let (proj_b, b) = tensor(backend, file, "embed.proj_b")?;
                let (cls, c) = tensor(backend, file, "embed.cls")?;
                let (pos, d) = tensor(backend, file, "embed.pos")?;
                let hn = norm(backend, file, "head.norm", eps, &mut total)?;
                let (w, e) = tensor(backend, file, "head.fc.weight")?;
                let (fb, f) = tensor(backend, file, "head.fc.bias")?;
                total += a + b + c + d + e + f;
                let embed = Embedding::Patches(PatchEmbed::new(proj_w, proj_b, cls, pos, v));
                let head = Head::Classifier(ClassifierHead {
                    norm: hn,
                    fc: Linear { w, b: Some(fb) },
                });
                (ResidentEmbed::Patches(embed), head)
            }
            ModelConfig::Bert(b) => {
                let (token_type0, a) = tensor(backend, file, "embed.token_type0")?;
                total += a;
                let norm = norm(backend, file, "embed.norm", eps, &mut total)?;
                let head = Head::MeanPool(MeanPoolHead {
                    normalize: b.normalize,
                });
                (
                    ResidentEmbed::Text {
                        token_type0,
                        norm,
                        cfg: b,
                    },
                    head,
                )
            }
        };
        Ok(Self {
            layers,
            embed,
            head,
            _held: meter.hold(total),
        })
    }

    /// Embeds `input`. For text, reads the rows of the tokens used and of the positions needed
    /// from `file` (their bytes are counted while the embedding is computed).
    ///
    /// # Errors
    /// [`Error::InvalidInput`] for input the model does not take; file and backend errors.
    pub fn embed(
        &self,
        backend: &B,
        file: &ShardFile,
        input: &Input<B>,
        meter: &Arc<WeightMeter>,
    ) -> Result<Hidden<B>> {
        match (&self.embed, input) {
            (ResidentEmbed::Patches(e), _) => e.forward(backend, input),
            (
                ResidentEmbed::Text {
                    token_type0,
                    norm,
                    cfg,
                },
                Input::Tokens(seqs),
            ) => {
                let mut rows: Vec<u32> = seqs.iter().flatten().copied().collect();
                rows.sort_unstable();
                rows.dedup();
                if let Some(&bad) = rows.iter().find(|&&t| t as usize >= cfg.vocab_size) {
                    return Err(Error::InvalidInput(format!(
                        "token id {bad} outside the vocabulary of {}",
                        cfg.vocab_size
                    )));
                }
                // Padding uses row 0 of the (remapped) table, which always exists below.
                if rows.is_empty() {
                    return Err(Error::InvalidInput("empty token batch".into()));
                }
                let n = seqs.iter().map(Vec::len).max().unwrap_or(0);
                if n > cfg.max_positions {
                    return Err(Error::InvalidInput(format!(
                        "sequence of {n} tokens exceeds the model's {} positions",
                        cfg.max_positions
                    )));
                }
                let d = cfg.encoder.hidden;
                let word = file.read_rows("embed.word", &rows)?;
                let positions: Vec<u32> = (0..n as u32).collect();
                let pos = file.read_rows("embed.position", &positions)?;
                let _held = meter.hold(4 * (word.len() + pos.len()) as u64);
                let remapped: Vec<Vec<u32>> = seqs
                    .iter()
                    .map(|s| {
                        s.iter()
                            .map(|t| rows.binary_search(t).unwrap_or(0) as u32)
                            .collect()
                    })
                    .collect();
                let mut small = cfg.clone();
                small.vocab_size = rows.len();
                small.max_positions = n;
                let embed = TextEmbed::new(
                    backend.from_vec(word, &[rows.len(), d])?,
                    backend.from_vec(pos, &[n, d])?,
                    token_type0.clone(),
                    norm.clone(),
                    small,
                );
                embed.forward(backend, &remapped)
            }
            (ResidentEmbed::Text { .. }, Input::Images(_)) => Err(Error::InvalidInput(
                "this text model takes token ids, not images".into(),
            )),
        }
    }

    /// The head on the last layer's output.
    ///
    /// # Errors
    /// Backend errors.
    pub fn head(&self, backend: &B, hidden: &Hidden<B>) -> Result<B::Tensor> {
        self.head.forward(backend, hidden)
    }
}
