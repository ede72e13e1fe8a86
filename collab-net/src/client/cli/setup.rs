//! What a device process loads before it connects: the model, the split selector, the sample
//! images and the (shaped) transport.

use std::str::FromStr;
use std::sync::Arc;

use anyhow::{Context, Result, bail};
use collab_backends::candle::CandleBackend;
use collab_core::Backend;
use collab_core::cost::{CostModel, MeasuredProfile, ProfileSpec, Scaled, profile_model};
use collab_core::fixtures::{self, LabelledImage};
use collab_core::model::{Input, ModelConfig, Transformer};
use collab_policies::split::{AccuracyTable, SelectorConfig, SplitSelector};
use collab_policies::svd::{Family, SplitBases};

use super::DeviceArgs;
use crate::transport::{Link, Shaped, Tcp, Transport};

/// The model preset a device process runs.
pub(super) const MODEL_ID: &str = "deit_tiny_patch16_224";

/// Bytes of a response (top-5 classes with logits, framing) for the selector.
const RESPONSE_BYTES: usize = 64;

/// Everything loaded.
#[derive(Debug)]
pub(super) struct Setup {
    pub(super) model: Arc<Transformer<CandleBackend>>,
    pub(super) selector: Arc<SplitSelector>,
    pub(super) samples: Vec<LabelledImage>,
    pub(super) transport: Arc<dyn Transport>,
    pub(super) bases: Option<Arc<SplitBases>>,
}

impl Setup {
    /// Loads (and, without a device profile, measures) everything `args` names.
    pub(super) fn load(args: &DeviceArgs) -> Result<Self> {
        if !(args.slowdown.is_finite() && args.slowdown >= 1.0) {
            bail!("--slowdown must be a number >= 1, got {}", args.slowdown);
        }
        let config = ModelConfig::preset(MODEL_ID)?;
        let path = match &args.checkpoint {
            Some(p) => p.clone(),
            None => fixtures::deit_tiny_checkpoint()?,
        };
        let model = Transformer::from_safetensors(CandleBackend::cpu(), config, &path)
            .with_context(|| format!("loading {}", path.display()))?;
        let model = Arc::new(model);
        let bases = match &args.bases {
            Some(p) => Some(Arc::new(SplitBases::load(p)?)),
            None => None,
        };
        let selector = Arc::new(selector(&model, args, bases.as_deref())?);
        let samples = fixtures::imagenet_sample()?;
        if samples.is_empty() {
            bail!("the ImageNet sample folder holds no images");
        }
        Ok(Self {
            model,
            selector,
            samples,
            transport: transport(args),
            bases,
        })
    }
}

/// The SPEC §1 selector for DeiT-Tiny on this device.
///
/// Device-only is not a candidate: the demo measures what the server serves, and a device
/// that ran the whole model would send nothing. Table entries whose codec needs a shared basis
/// that `bases` does not hold at the entry's split (all of them without `--bases`; `wsvd`
/// always) are dropped.
fn selector(
    model: &Transformer<CandleBackend>,
    args: &DeviceArgs,
    bases: Option<&SplitBases>,
) -> Result<SplitSelector> {
    let ModelConfig::Vit(vit) = model.config() else {
        bail!("{MODEL_ID} is not a vision model");
    };
    let config = SelectorConfig {
        layers: vit.encoder.layers,
        tokens: vit.num_tokens(),
        features: vit.encoder.hidden,
        raw_input_bytes: 3 * vit.image_size * vit.image_size,
        response_bytes: RESPONSE_BYTES,
        device_codec_scale: args.slowdown,
        allow_device_only: false,
    };
    let mut table = match &args.accuracy_table {
        Some(p) => AccuracyTable::load(p)?,
        None => AccuracyTable {
            model: MODEL_ID.into(),
            metric: "top1".into(),
            baseline: 0.0,
            tokens: config.tokens,
            features: config.features,
            layers: config.layers,
            entries: vec![],
        },
    };
    table.entries.retain(|e| {
        Family::from_str(&e.codec).is_ok_and(|f| SplitBases::lookup(bases, e.split, f).is_some())
    });
    let measured = match &args.device_profile {
        Some(p) => MeasuredProfile::load(p)?,
        None => measure(model)?,
    };
    let server: Arc<dyn CostModel> = match &args.server_profile {
        Some(p) => Arc::new(MeasuredProfile::load(p)?),
        None => Arc::new(measured.clone()),
    };
    let device = Arc::new(Scaled {
        inner: Arc::new(measured),
        factor: args.slowdown,
        label: format!("{} x{}", args.device_id, args.slowdown),
    });
    Ok(SplitSelector::new(device, server, table, config)?)
}

/// A quick profile of `model` at batch 1 and its own token count.
fn measure(model: &Transformer<CandleBackend>) -> Result<MeasuredProfile> {
    let ModelConfig::Vit(vit) = model.config() else {
        bail!("{MODEL_ID} is not a vision model");
    };
    let spec = ProfileSpec {
        batches: vec![1],
        tokens: vec![vit.num_tokens()],
        repeats: 3,
        per_layer: false,
    };
    let s = vit.image_size;
    let be = model.backend().clone();
    let input = move |b: usize| Ok(Input::Images(be.zeros(&[b, 3, s, s])?));
    Ok(profile_model(model, MODEL_ID, &spec, &input)?)
}

/// TCP to the server, behind the emulated link when one is asked for.
fn transport(args: &DeviceArgs) -> Arc<dyn Transport> {
    let tcp = Tcp::new(args.server);
    let link = Link {
        bandwidth: args.mbit.map_or(f64::INFINITY, |m| m * 1e6 / 8.0),
        rtt: args.rtt_ms / 1e3,
        jitter: args.jitter_ms / 1e3,
        loss: args.loss,
    };
    if link == Link::IDEAL {
        Arc::new(tcp)
    } else {
        Arc::new(Shaped::new(tcp, link, seed(args)))
    }
}

/// The process's seed: `--seed` mixed with the device id (FNV-1a), so devices differ.
pub(super) fn seed(args: &DeviceArgs) -> u64 {
    args.device_id
        .bytes()
        .fold(0xcbf2_9ce4_8422_2325 ^ args.seed, |h, b| {
            (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
        })
}
