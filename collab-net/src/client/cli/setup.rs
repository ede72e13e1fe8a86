//! What a device process loads before it connects: the model, its split strategy (built from
//! its config with the measured cost models and the accuracy table), the sample images and
//! the (shaped) transport.

use std::sync::Arc;

use anyhow::{Context, Result, bail};
use collab_core::Backend;
use collab_core::cost::{CostModel, MeasuredProfile, ProfileSpec, Scaled, profile_model};
use collab_core::fixtures::{self, LabelledImage};
use collab_core::model::{Input, ModelConfig, Transformer};
use collab_core::split::CodecId;
use collab_core::split::SplitStrategy;
use collab_policies::codec::{CodecContext, CodecRegistry};
use collab_policies::split::{AccuracyTable, SelectorConfig, SplitStrategyConfig, StrategyContext};
use collab_policies::svd::SplitBases;

use super::DeviceArgs;
use crate::transport::{Link, LinkControl, Shaped, Tcp, Transport};

/// Bytes of a response (top-5 classes with logits, framing) for the selector.
const RESPONSE_BYTES: usize = 64;

/// Everything loaded.
#[derive(Debug)]
pub(super) struct Setup<B: Backend> {
    pub(super) model: Arc<Transformer<B>>,
    pub(super) codecs: Arc<CodecRegistry>,
    pub(super) samples: Vec<LabelledImage>,
    /// TCP (shaped, TLS) to the server; none when the device goes through NATS.
    pub(super) transport: Option<Arc<dyn Transport>>,
    /// The link emulator's control (with `--mbit`, `--rtt-ms`, ...): operator settings
    /// change it.
    pub(super) link: Option<LinkControl>,
    pub(super) bases: Option<Arc<SplitBases>>,
}

impl<B: Backend> Setup<B> {
    /// Loads (and, without a device profile, measures) everything `args` names, the model on
    /// `backend`, and builds the split strategy from `strategy` with the codecs `codecs`.
    pub(super) fn load(
        args: &DeviceArgs,
        backend: B,
        strategy: Arc<dyn SplitStrategyConfig>,
        codecs: Arc<CodecRegistry>,
    ) -> Result<(Self, Box<dyn SplitStrategy>)> {
        if !(args.slowdown.is_finite() && args.slowdown >= 1.0) {
            bail!("--slowdown must be a number >= 1, got {}", args.slowdown);
        }
        let preset = args.preset.as_deref().unwrap_or(&args.model_id);
        let config = ModelConfig::preset(preset).with_context(|| {
            format!("preset `{preset}` (set --preset when --model-id is not one)")
        })?;
        let path = match &args.checkpoint {
            Some(p) => p.clone(),
            None => fixtures::deit_tiny_checkpoint()?,
        };
        let model = Transformer::from_safetensors(backend, config, &path)
            .with_context(|| format!("loading {}", path.display()))?;
        let model = Arc::new(model);
        let bases = match &args.bases {
            Some(p) => Some(Arc::new(SplitBases::load(p)?)),
            None => None,
        };
        let context = strategy_context(&model, args, &codecs, bases.as_deref())?;
        let strategy = strategy
            .build(&context)
            .with_context(|| format!("building the split strategy {strategy:?}"))?;
        let samples = fixtures::imagenet_sample()?;
        if samples.is_empty() {
            bail!("the ImageNet sample folder holds no images");
        }
        let (transport, link) = if args.nats.is_some() {
            (None, None)
        } else {
            let (t, l) = transport(args)?;
            (Some(t), l)
        };
        let setup = Self {
            model,
            codecs,
            samples,
            transport,
            link,
            bases,
        };
        Ok((setup, strategy))
    }
}

/// What the split strategy is built from on this device: the model's sizes, the measured (and
/// scaled) cost models, and the accuracy table.
///
/// Device-only is not a candidate: the demo measures what the server serves, and a device
/// that ran the whole model would send nothing. Table entries whose codec `codecs` cannot
/// build at the entry's split with `bases` (the calibrated ones without `--bases`; `wsvd`
/// always) are dropped.
fn strategy_context<B: Backend>(
    model: &Transformer<B>,
    args: &DeviceArgs,
    codecs: &CodecRegistry,
    bases: Option<&SplitBases>,
) -> Result<StrategyContext> {
    let ModelConfig::Vit(vit) = model.config() else {
        bail!("{} is not a vision model", args.model_id);
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
            model: args.model_id.clone(),
            metric: "top1".into(),
            baseline: 0.0,
            tokens: config.tokens,
            features: config.features,
            layers: config.layers,
            entries: vec![],
        },
    };
    table.entries.retain(|e| {
        let context = CodecContext {
            split: e.split,
            bases,
        };
        let rank = u32::try_from(e.rank).ok();
        CodecId::new(e.codec.clone(), rank).is_ok_and(|id| codecs.build(&id, &context).is_ok())
    });
    let measured = match &args.device_profile {
        Some(p) => MeasuredProfile::load(p)?,
        None => measure(model, &args.model_id)?,
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
    Ok(StrategyContext {
        selector: config,
        device,
        server,
        table,
    })
}

/// A quick profile of `model` at batch 1 and its own token count.
fn measure<B: Backend>(model: &Transformer<B>, model_id: &str) -> Result<MeasuredProfile> {
    let ModelConfig::Vit(vit) = model.config() else {
        bail!("{model_id} is not a vision model");
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
    Ok(profile_model(model, model_id, &spec, &input)?)
}

/// TCP to the server, behind the emulated link when one is asked for, with TLS on top when
/// `--tls-ca` is given.
/// The link emulator's control comes back with it (none for an unshaped link).
fn transport(args: &DeviceArgs) -> Result<(Arc<dyn Transport>, Option<LinkControl>)> {
    let server = args
        .server
        .context("no server address: give --server or a --config with [device].server")?;
    let tcp = Tcp::new(server);
    let link = Link {
        bandwidth: args.mbit.map_or(f64::INFINITY, |m| m * 1e6 / 8.0),
        rtt: args.rtt_ms / 1e3,
        jitter: args.jitter_ms / 1e3,
        loss: args.loss,
    };
    let (plain, control): (Arc<dyn Transport>, _) = if link == Link::IDEAL {
        (Arc::new(tcp), None)
    } else {
        let shaped = Shaped::new(tcp, link, seed(args));
        let control = shaped.control();
        (Arc::new(shaped), Some(control))
    };
    let transport: Arc<dyn Transport> = match &args.tls_ca {
        None => plain,
        Some(ca) => Arc::new(crate::tls::TlsTransport::new(
            plain,
            crate::tls::client_config(ca)?,
            &args.tls_name,
        )?),
    };
    Ok((transport, control))
}

/// The process's seed: `--seed` mixed with the device id (FNV-1a), so devices differ.
pub(super) fn seed(args: &DeviceArgs) -> u64 {
    args.device_id
        .bytes()
        .fold(0xcbf2_9ce4_8422_2325 ^ args.seed, |h, b| {
            (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
        })
}
