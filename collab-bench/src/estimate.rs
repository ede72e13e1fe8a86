//! A per-block cost profile estimated from a roofline, for hardware that is not here.
//!
//! Each stage of an encoder (embedding, one block, head) is lowered by hand to the kernels an
//! eager framework launches for it (a pre-norm block: two norms, the QKV, output and two MLP
//! linears, the two attention products, softmax, GELU and two residual adds: 12 kernels). A
//! kernel costs a fixed launch time plus its roofline time, `max(flops / (peak × efficiency),
//! bytes / bandwidth)`, priced by [`Roofline`] (SPEC §7). The launch cost is what makes
//! batching pay on a GPU: DeiT-Tiny's block at batch 1 is ~0.2 GFLOP, well under a
//! microsecond of an H100's tensor cores, so its twelve launches dominate until the batch is
//! large.
//!
//! The result is a [`MeasuredProfile`] whose [`estimate`](MeasuredProfile::estimate) says how it
//! was made; reports print [`MeasuredProfile::provenance`]. Replace it with a profile measured
//! by `cargo xtask exp block-profile` on the real machine when one is at hand.

use collab_core::cost::{CostModel, MeasuredProfile, ProfilePoint, Workload};
use collab_core::graph::OpClass;
use collab_core::model::{EncoderConfig, ModelConfig};
use collab_core::{Error, Result};
use collab_policies::operator::{DeviceSpec, Roofline};
use serde::{Deserialize, Serialize};

/// The estimated profiles shipped in `profiles/` (written by `cargo xtask exp
/// estimate-profile`), by name.
const SHIPPED: [(&str, &str); 2] = [
    (
        "h100-deit_tiny_patch16_224",
        include_str!("../profiles/h100-deit_tiny_patch16_224.estimate.json"),
    ),
    (
        "h100-vit_base_patch16_224",
        include_str!("../profiles/h100-vit_base_patch16_224.estimate.json"),
    ),
];

/// A shipped estimated profile by name: `h100-deit_tiny_patch16_224` or
/// `h100-vit_base_patch16_224`. Its [`MeasuredProfile::estimate`] says it is one.
///
/// # Errors
/// [`Error::Config`] naming the shipped profiles for any other name.
pub fn shipped(name: &str) -> Result<MeasuredProfile> {
    let Some((_, json)) = SHIPPED.iter().find(|(n, _)| *n == name) else {
        return Err(Error::Config(format!(
            "no shipped profile `{name}` (shipped: {})",
            SHIPPED.map(|(n, _)| n).join(", ")
        )));
    };
    serde_json::from_str(json).map_err(|e| Error::Config(format!("shipped profile {name}: {e}")))
}

/// The hardware assumptions of an estimate.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RooflineEstimate {
    /// Peak compute and memory bandwidth (the price is not used).
    pub spec: DeviceSpec,
    /// The fraction of peak FLOP/s a kernel attains (0 < efficiency ≤ 1).
    pub efficiency: f64,
    /// Seconds each kernel costs before it computes (launch and synchronisation).
    pub launch_seconds: f64,
    /// Bytes per stored value (2 for fp16/bf16).
    pub bytes_per_value: u64,
}

impl RooflineEstimate {
    /// An NVIDIA H100 SXM at bf16: 989 TFLOP/s dense tensor peak and 3.35 TB/s (the datasheet),
    /// 50% of peak attained, 5 µs per kernel (eager PyTorch's launch overhead is commonly 4-10 µs;
    /// none of this was measured here).
    pub fn h100() -> Self {
        RooflineEstimate {
            spec: DeviceSpec {
                name: "h100-sxm".into(),
                peak_flops: 989e12,
                bandwidth: 3.35e12,
                price_per_second: 0.0,
            },
            efficiency: 0.5,
            launch_seconds: 5e-6,
            bytes_per_value: 2,
        }
    }

    /// The words [`MeasuredProfile::estimate`] carries for a profile made by this estimate.
    pub fn describe(&self) -> String {
        format!(
            "roofline of {}: {:.0} TFLOP/s x {:.2} attained, {:.2} TB/s, {:.1} us per kernel launch, {} bytes per value",
            self.spec.name,
            self.spec.peak_flops / 1e12,
            self.efficiency,
            self.spec.bandwidth / 1e12,
            self.launch_seconds * 1e6,
            self.bytes_per_value
        )
    }

    /// The profile of `model` (a ViT or BERT configuration named `name`) at each batch size in
    /// `batches` and token count in `tokens` (blocks), with the embedding and head at the
    /// model's own token count `native_tokens`.
    ///
    /// # Errors
    /// [`Error::Config`] for an empty grid, a zero batch or token count, or assumptions out of
    /// range (efficiency outside `(0, 1]`, a negative launch time, a bad spec).
    pub fn encoder_profile(
        &self,
        name: &str,
        model: &ModelConfig,
        native_tokens: usize,
        batches: &[usize],
        tokens: &[usize],
    ) -> Result<MeasuredProfile> {
        let sane = self.efficiency > 0.0
            && self.efficiency <= 1.0
            && self.launch_seconds >= 0.0
            && self.launch_seconds.is_finite()
            && self.bytes_per_value > 0;
        if !sane {
            return Err(Error::Config(format!(
                "estimate assumptions out of range: {}",
                self.describe()
            )));
        }
        if batches.is_empty() || tokens.is_empty() || batches.contains(&0) || tokens.contains(&0) {
            return Err(Error::Config(
                "an estimate needs positive batch sizes and token counts".into(),
            ));
        }
        let roofline = Roofline::new(DeviceSpec {
            peak_flops: self.spec.peak_flops * self.efficiency,
            ..self.spec.clone()
        })?;
        let enc = model.encoder();
        let price = |kernels: &[Kernel]| -> Result<f64> {
            kernels.iter().try_fold(0.0, |sum, k| {
                let work = Workload::Operator {
                    class: k.class,
                    flops: k.flops,
                    bytes: k.values * self.bytes_per_value,
                };
                Ok(sum + self.launch_seconds + roofline.seconds(&work)?)
            })
        };
        let mut points = vec![];
        for &batch in batches {
            let (b, n) = (batch as u64, native_tokens as u64);
            points.push(ProfilePoint {
                work: Workload::Embed {
                    batch,
                    tokens: native_tokens,
                },
                seconds: price(&embed_kernels(model, b, n))?,
            });
            points.push(ProfilePoint {
                work: Workload::Head {
                    batch,
                    tokens: native_tokens,
                },
                seconds: price(&head_kernels(model, b, n))?,
            });
            for &t in tokens {
                points.push(ProfilePoint {
                    work: Workload::Block {
                        layer: 0,
                        batch,
                        tokens: t,
                    },
                    seconds: price(&block_kernels(enc, b, t as u64))?,
                });
            }
        }
        Ok(MeasuredProfile {
            backend: self.spec.name.clone(),
            model: name.into(),
            layers: enc.layers,
            points,
            estimate: Some(self.describe()),
        })
    }
}

/// One kernel: its class, FLOPs and values read plus written.
#[derive(Clone, Copy, Debug)]
struct Kernel {
    class: OpClass,
    flops: u64,
    values: u64,
}

fn kernel(class: OpClass, flops: u64, values: u64) -> Kernel {
    Kernel {
        class,
        flops,
        values,
    }
}

/// A linear layer on `rows` rows: `inp` features to `out`.
fn linear(rows: u64, inp: u64, out: u64) -> Kernel {
    kernel(
        OpClass::Linear,
        2 * rows * inp * out,
        rows * inp + inp * out + out + rows * out,
    )
}

/// An elementwise kernel over `values` values, `flops_per` FLOPs each, reading `reads` inputs.
fn elementwise(values: u64, flops_per: u64, reads: u64) -> Kernel {
    kernel(
        OpClass::Elementwise,
        values * flops_per,
        values * (reads + 1),
    )
}

/// The kernels of one pre-norm encoder block on `b` inputs of `n` tokens.
fn block_kernels(enc: &EncoderConfig, b: u64, n: u64) -> Vec<Kernel> {
    let (d, h, m) = (enc.hidden as u64, enc.heads as u64, enc.intermediate as u64);
    let dh = d / h.max(1);
    let rows = b * n;
    let scores = b * h * n * n;
    vec![
        elementwise(rows * d, 5, 1), // norm 1
        linear(rows, d, 3 * d),      // QKV
        kernel(OpClass::Attention, 2 * scores * dh, 2 * rows * d + scores),
        kernel(OpClass::Softmax, 5 * scores, 2 * scores),
        kernel(OpClass::Attention, 2 * scores * dh, scores + 2 * rows * d),
        linear(rows, d, d),          // output projection
        elementwise(rows * d, 1, 2), // residual
        elementwise(rows * d, 5, 1), // norm 2
        linear(rows, d, m),          // MLP up
        elementwise(rows * m, 8, 1), // GELU
        linear(rows, m, d),          // MLP down
        elementwise(rows * d, 1, 2), // residual
    ]
}

/// The embedding's kernels: patch projection (as a linear), class token and positions for a
/// ViT; token, position and type lookups and a norm for BERT.
fn embed_kernels(model: &ModelConfig, b: u64, n: u64) -> Vec<Kernel> {
    let d = model.encoder().hidden as u64;
    match model {
        ModelConfig::Vit(v) => {
            let patch = (v.channels * v.patch_size * v.patch_size) as u64;
            let patches = v.num_patches() as u64;
            vec![
                linear(b * patches, patch, d),
                elementwise(b * n * d, 0, 1), // class token concatenated
                elementwise(b * n * d, 1, 2), // positions added
            ]
        }
        ModelConfig::Bert(_) => vec![
            elementwise(b * n * d, 0, 1), // token lookup
            elementwise(b * n * d, 2, 3), // position and type added
            elementwise(b * n * d, 5, 1), // norm
        ],
    }
}

/// The head's kernels: the final norm and the classifier for a ViT; mean pooling (and the
/// normalisation) for BERT.
fn head_kernels(model: &ModelConfig, b: u64, n: u64) -> Vec<Kernel> {
    let d = model.encoder().hidden as u64;
    match model {
        ModelConfig::Vit(v) => vec![
            elementwise(b * n * d, 5, 1),
            linear(b, d, v.num_classes as u64),
        ],
        ModelConfig::Bert(_) => vec![
            kernel(OpClass::Elementwise, b * n * d, b * n * d + b * d),
            elementwise(b * d, 3, 1),
        ],
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn deit_tiny() -> ModelConfig {
        ModelConfig::preset("deit_tiny_patch16_224").unwrap()
    }

    #[test]
    fn a_small_batch_is_launch_bound_and_a_large_one_is_not() {
        let e = RooflineEstimate::h100();
        let p = e
            .encoder_profile("deit-tiny", &deit_tiny(), 197, &[1, 8, 256], &[197])
            .unwrap();
        let block = |b| p.blocks_seconds(0..1, b, 197).unwrap();
        let launches = 12.0 * e.launch_seconds;
        assert!(
            block(1) >= launches && block(1) < 1.1 * launches,
            "{}",
            block(1)
        );
        assert!(block(8) < 1.5 * block(1), "batch 8 costs nearly batch 1");
        assert!(block(256) > 4.0 * block(1), "batch 256 is compute bound");
        assert!(p.estimate.as_deref().unwrap().contains("h100"));
        assert!(p.provenance().starts_with("ESTIMATE"));
    }

    #[test]
    fn block_flops_match_the_hand_count() {
        // DeiT-Tiny at 197 tokens: linears 2·197·192·(3·192 + 192 + 2·768) and attention
        // 2·2·197²·192, about 0.204 GFLOP per image.
        let m = deit_tiny();
        let flops: u64 = block_kernels(m.encoder(), 1, 197)
            .iter()
            .filter(|k| k.class != OpClass::Elementwise && k.class != OpClass::Softmax)
            .map(|k| k.flops)
            .sum();
        assert_eq!(
            flops,
            2 * 197 * 192 * (3 * 192 + 192 + 2 * 768) + 4 * 197 * 197 * 192
        );
    }

    #[test]
    fn the_shipped_profiles_load_and_match_what_the_estimate_writes_today() {
        for (name, preset) in [
            ("h100-deit_tiny_patch16_224", "deit_tiny_patch16_224"),
            ("h100-vit_base_patch16_224", "vit_base_patch16_224"),
        ] {
            let p = shipped(name).unwrap();
            let again = RooflineEstimate::h100()
                .encoder_profile(
                    preset,
                    &ModelConfig::preset(preset).unwrap(),
                    197,
                    &[1, 2, 4, 8, 16, 32, 64],
                    &[197],
                )
                .unwrap();
            let hint = format!(
                "regenerate: cargo xtask exp estimate-profile --model {preset} --out collab-bench/profiles/{name}.estimate.json"
            );
            // JSON keeps the values to the last digit or two.
            assert_eq!(p.points.len(), again.points.len(), "{hint}");
            for (a, b) in p.points.iter().zip(&again.points) {
                assert_eq!(a.work, b.work, "{hint}");
                assert!(
                    (a.seconds / b.seconds - 1.0).abs() < 1e-12,
                    "{hint}: {a:?} vs {b:?}"
                );
            }
            assert_eq!(
                (&p.estimate, &p.model),
                (&again.estimate, &again.model),
                "{hint}"
            );
        }
        assert!(shipped("a100").is_err());
    }

    #[test]
    fn bad_assumptions_and_grids_are_config_errors() {
        let m = deit_tiny();
        let mut e = RooflineEstimate::h100();
        assert!(e.encoder_profile("m", &m, 197, &[], &[197]).is_err());
        assert!(e.encoder_profile("m", &m, 197, &[0], &[197]).is_err());
        e.efficiency = 0.0;
        assert!(e.encoder_profile("m", &m, 197, &[1], &[197]).is_err());
    }

    #[test]
    fn the_profile_round_trips_through_json_with_its_label() {
        let p = RooflineEstimate::h100()
            .encoder_profile("deit-tiny", &deit_tiny(), 197, &[1, 2], &[197])
            .unwrap();
        let back: MeasuredProfile =
            serde_json::from_str(&serde_json::to_string(&p).unwrap()).unwrap();
        assert_eq!(back.estimate, p.estimate);
        assert_eq!(back.points.len(), p.points.len());
    }
}
