//! Proof from outside the crates: a user's own batch policy (earliest deadline first), codec
//! (top-k sparsification), split strategy (a step on the measured bandwidth: loopback is
//! fast, so the devices take the early split with top-k) and per-pass token policy (merging
//! only when a long queue waits), written here against the public API only, registered with
//! `typetag`, named in one pipeline config file next to nothing of ours, and served over real
//! loopback TCP: a real server on DeiT-Tiny and two devices. Every request is answered exactly
//! once, with the unsplit model's top-1. The four are also held to the public conformance
//! suites, as a user would hold their own.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use collab_backends::candle::CandleBackend;
use collab_core::adaptive::{
    PassContext, PassTokenPolicy, TokenPlan, TokenPolicyConfig, TokenPolicyContext,
};
use collab_core::batch::{BatchPolicy, BatchPolicyConfig, QueueView};
use collab_core::split::{
    Activation, ActivationCodec, CodecId, Conditions, SplitChoice, SplitStrategy,
};
use collab_core::{Error, Result, fixtures};
use collab_net::client::{ClientConfig, ClientError, Device, DeviceClient, Outgoing};
use collab_net::pipeline::PipelineConfig;
use collab_net::server::Server;
use collab_net::testing::{flat_strategy_context, unsplit_top1};
use collab_net::transport::{Tcp, TcpAcceptor, Transport};
use collab_net::wire::RemoteError;
use collab_policies::codec::conformance::CodecSpec;
use collab_policies::codec::{CodecContext, CodecFactory, CodecRegistry};
use collab_policies::split::conformance::SplitSpec;
use collab_policies::split::{SplitStrategyConfig, StrategyContext};
use collab_policies::{batch_policy_conformance, codec_conformance, split_strategy_conformance};
use serde::{Deserialize, Serialize};

// ----- a batch policy: earliest deadline first ------------------------------------------------

/// Starts each pass at the queue whose oldest request is due first, and admits as many as
/// fit at every position.
#[derive(Debug)]
struct EarliestDeadlineFirst {
    budget: usize,
}

impl BatchPolicy for EarliestDeadlineFirst {
    fn name(&self) -> String {
        format!("edf(B={})", self.budget)
    }

    fn budget(&self) -> usize {
        self.budget
    }

    fn start(&mut self, queues: &QueueView<'_>, _now: f64) -> Option<usize> {
        queues
            .non_empty()
            .filter_map(|p| queues.front(p).map(|r| (p, r.deadline)))
            .min_by(|a, b| a.1.total_cmp(&b.1))
            .map(|(p, _)| p)
    }

    fn admit(&mut self, position: usize, running: usize, queues: &QueueView<'_>, _: f64) -> usize {
        queues
            .len(position)
            .min(self.budget.saturating_sub(running))
    }
}

/// How many times a server built the policy from its config.
static EDF_BUILDS: AtomicUsize = AtomicUsize::new(0);

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct EdfConfig {
    budget: usize,
}

#[typetag::serde(name = "edf")]
impl BatchPolicyConfig for EdfConfig {
    fn build(&self) -> Result<Box<dyn BatchPolicy>> {
        if self.budget == 0 {
            return Err(Error::Config("edf: budget must be at least 1".into()));
        }
        EDF_BUILDS.fetch_add(1, Ordering::Relaxed);
        Ok(Box::new(EarliestDeadlineFirst {
            budget: self.budget,
        }))
    }
}

batch_policy_conformance!(edf, |budget| EarliestDeadlineFirst { budget });

// ----- a codec: the k largest values of each token --------------------------------------------

/// Sends, per token, the `k` values of largest magnitude with their column: `TK`, tokens,
/// features and k as `u32`, then per token k pairs of a `u16` column and an `f32` value.
#[derive(Debug)]
struct TopK {
    k: usize,
}

/// The widest activation the decoder takes: bounds what it allocates.
const TOP_K_MAX_FEATURES: usize = 4096;
const TOP_K_HEADER: usize = 14;

impl TopK {
    fn kept(&self, features: usize) -> usize {
        self.k.clamp(1, features)
    }
}

impl ActivationCodec for TopK {
    fn name(&self) -> String {
        format!("top-k-r{}", self.k)
    }

    fn encoded_len(&self, tokens: usize, features: usize) -> usize {
        TOP_K_HEADER + tokens * self.kept(features) * 6
    }

    fn encode(&self, x: &Activation) -> Result<Vec<u8>> {
        if x.features > TOP_K_MAX_FEATURES {
            return Err(Error::codec("top-k", "too many features"));
        }
        let kept = self.kept(x.features);
        let mut out = Vec::with_capacity(self.encoded_len(x.tokens, x.features));
        out.extend_from_slice(b"TK");
        for v in [x.tokens, x.features, kept] {
            let v = u32::try_from(v).map_err(|_| Error::codec("top-k", "size too large"))?;
            out.extend_from_slice(&v.to_le_bytes());
        }
        for row in x.values.chunks(x.features) {
            let mut order: Vec<usize> = (0..x.features).collect();
            order.sort_by(|&a, &b| row[b].abs().total_cmp(&row[a].abs()).then(a.cmp(&b)));
            let mut top = order[..kept].to_vec();
            top.sort_unstable();
            for j in top {
                out.extend_from_slice(&(j as u16).to_le_bytes());
                out.extend_from_slice(&row[j].to_le_bytes());
            }
        }
        Ok(out)
    }

    fn declared_shape(&self, bytes: &[u8]) -> Result<(usize, usize)> {
        top_k_header(bytes).map(|(tokens, features, _)| (tokens, features))
    }

    fn decode(&self, bytes: &[u8]) -> Result<Activation> {
        let bad = |m: &str| Error::codec("top-k", m.to_owned());
        let (tokens, features, kept) = top_k_header(bytes)?;
        let mut values = vec![0.0f32; tokens * features];
        for (i, entry) in bytes[TOP_K_HEADER..].chunks_exact(6).enumerate() {
            let j = usize::from(u16::from_le_bytes([entry[0], entry[1]]));
            if j >= features {
                return Err(bad("column out of range"));
            }
            values[(i / kept) * features + j] =
                f32::from_le_bytes([entry[2], entry[3], entry[4], entry[5]]);
        }
        Activation::new(tokens, features, values)
    }
}

/// A top-k payload's tokens, features and kept values per token, checked against its length.
fn top_k_header(bytes: &[u8]) -> Result<(usize, usize, usize)> {
    let bad = |m: &str| Error::codec("top-k", m.to_owned());
    if bytes.len() < TOP_K_HEADER || &bytes[..2] != b"TK" {
        return Err(bad("not a top-k payload"));
    }
    let word = |i: usize| {
        u32::from_le_bytes([bytes[i], bytes[i + 1], bytes[i + 2], bytes[i + 3]]) as usize
    };
    let (tokens, features, kept) = (word(2), word(6), word(10));
    if tokens == 0 || features == 0 || features > TOP_K_MAX_FEATURES || kept == 0 || kept > features
    {
        return Err(bad("sizes out of range"));
    }
    // Every size is bounded by the bytes present before anything is allocated.
    let body = tokens.checked_mul(kept).and_then(|n| n.checked_mul(6));
    if body != Some(bytes.len() - TOP_K_HEADER) {
        return Err(bad("length does not match the sizes"));
    }
    Ok((tokens, features, kept))
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct TopKCodecs {}

#[typetag::serde(name = "top-k")]
impl CodecFactory for TopKCodecs {
    fn families(&self) -> Vec<String> {
        vec!["top-k".into()]
    }

    fn build(&self, id: &CodecId, _: &CodecContext<'_>) -> Result<Box<dyn ActivationCodec>> {
        let k = id
            .rank()
            .filter(|&k| k > 0)
            .ok_or_else(|| Error::Config(format!("codec `{id}` needs a rank: top-k-r<k>")))?;
        Ok(Box::new(TopK { k: k as usize }))
    }
}

codec_conformance!(
    top_k_all,
    || TopK { k: 64 },
    CodecSpec {
        max_relative_error: Some(1e-6),
        ..CodecSpec::default()
    }
);
codec_conformance!(top_k_few, || TopK { k: 2 });

// ----- a split strategy: one split below a bandwidth, another above ----------------------

/// Below `threshold` bytes/s of uplink, `low` (an early split and a small codec); at or above
/// it, `high`.
#[derive(Debug)]
struct BandwidthStep {
    threshold: f64,
    low: (usize, CodecId),
    high: (usize, CodecId),
}

impl SplitStrategy for BandwidthStep {
    fn name(&self) -> String {
        format!(
            "bandwidth-step({} B/s: {} {} / {} {})",
            self.threshold, self.low.0, self.low.1, self.high.0, self.high.1
        )
    }

    fn choose(&self, c: &Conditions) -> Result<SplitChoice> {
        if c.bandwidth.is_nan() {
            return Err(Error::InvalidInput("bandwidth is NaN".into()));
        }
        let (split, codec) = if c.bandwidth < self.threshold {
            &self.low
        } else {
            &self.high
        };
        Ok(SplitChoice {
            split: *split,
            codec: codec.clone(),
            rho: 0.0,
            bytes: 0,
            latency: 0.0,
            loss: 0.0,
        })
    }
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct BandwidthStepConfig {
    threshold_mbit: f64,
    low_split: usize,
    low_codec: String,
    high_split: usize,
    high_codec: String,
}

#[typetag::serde(name = "bandwidth-step")]
impl SplitStrategyConfig for BandwidthStepConfig {
    fn build(&self, context: &StrategyContext) -> Result<Box<dyn SplitStrategy>> {
        let layers = context.selector.layers;
        for split in [self.low_split, self.high_split] {
            if split == 0 || split >= layers {
                return Err(Error::Config(format!(
                    "bandwidth-step: split {split} must be in 1..{layers}"
                )));
            }
        }
        Ok(Box::new(BandwidthStep {
            threshold: self.threshold_mbit * 1e6 / 8.0,
            low: (self.low_split, self.low_codec.parse()?),
            high: (self.high_split, self.high_codec.parse()?),
        }))
    }
}

split_strategy_conformance!(
    bandwidth_step,
    || BandwidthStep {
        threshold: 1e6,
        low: (2, "top-k-r8".parse().expect("id")),
        high: (9, "int8".parse().expect("id")),
    },
    SplitSpec {
        registry: CodecRegistry::builtin()
            .with(TopKCodecs {})
            .expect("registry"),
        ..SplitSpec::new(12)
    }
);

// ----- a token policy: merge only when a long queue waits -------------------------------------

/// Plans merging 4 tokens per block (within what the tokens allow) when at least
/// `min_waiting` requests wait, none otherwise.
#[derive(Debug)]
struct MergeWhenBusy {
    min_waiting: usize,
    merges: Vec<usize>,
    /// Whether its plans count in [`TOKEN_PLANS`] (only the one a server built from the file).
    counted: bool,
}

/// 4 tokens merged per block, or fewer where the running count would not allow it.
fn four_per_block(c: &TokenPolicyContext) -> Vec<usize> {
    let mut n = c.tokens;
    (0..c.layers)
        .map(|_| {
            let r = 4.min(n.saturating_sub(c.protected) / 2);
            n -= r;
            r
        })
        .collect()
}

/// How many plans the server asked the user's token policy for.
static TOKEN_PLANS: AtomicUsize = AtomicUsize::new(0);

impl PassTokenPolicy for MergeWhenBusy {
    fn name(&self) -> String {
        format!("merge-when-busy({})", self.min_waiting)
    }

    fn plan(&mut self, pass: &PassContext<'_>) -> TokenPlan {
        if self.counted {
            TOKEN_PLANS.fetch_add(1, Ordering::Relaxed);
        }
        if pass.waiting.len() >= self.min_waiting {
            TokenPlan {
                gamma: -4,
                merges: self.merges.clone(),
            }
        } else {
            TokenPlan::none()
        }
    }
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct MergeWhenBusyConfig {
    min_waiting: usize,
}

#[typetag::serde(name = "merge-when-busy")]
impl TokenPolicyConfig for MergeWhenBusyConfig {
    fn build(&self, c: &TokenPolicyContext) -> Result<Box<dyn PassTokenPolicy>> {
        Ok(Box::new(MergeWhenBusy {
            min_waiting: self.min_waiting,
            merges: four_per_block(c),
            counted: true,
        }))
    }
}

#[test]
fn merge_when_busy_passes_the_token_policy_suite() {
    for (tokens, layers) in [(197, 12), (9, 12), (2, 3)] {
        let context = TokenPolicyContext {
            layers,
            tokens,
            protected: 1,
            batch_budget: 8,
        };
        let mut policy = MergeWhenBusy {
            min_waiting: 10,
            merges: four_per_block(&context),
            counted: false,
        };
        collab_policies::token::conformance::check_pass_policy(&mut policy, &context, 200, 7)
            .expect("conformance");
    }
}

// ----- the four in one pipeline, over real sockets -------------------------------------------

/// The pipeline file: nothing but the user's three parts and the addresses.
fn pipeline(server: std::net::SocketAddr) -> String {
    format!(
        r#"
[model]
id = "deit_tiny_patch16_224"

[[codecs]]
kind = "top-k"

[server]
capacity = 32
[server.batch]
kind = "edf"
budget = 4
[server.tokens]
kind = "merge-when-busy"
min_waiting = 1000

[device]
server = "{server}"
deadline_ms = 60000
[device.split]
kind = "bandwidth-step"
threshold_mbit = 1
low_split = 9
low_codec = "int8"
high_split = 2
high_codec = "top-k-r192"
"#
    )
}

async fn client(addr: std::net::SocketAddr, device: &str) -> DeviceClient {
    let transport: Arc<dyn Transport> = Arc::new(Tcp::new(addr));
    let config = ClientConfig {
        device_id: device.into(),
        ..ClientConfig::default()
    };
    DeviceClient::connect(transport, config)
        .await
        .expect("connect")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_users_policy_codec_and_strategy_serve_from_one_config_file() {
    let model = Arc::new(fixtures::deit_tiny(CandleBackend::cpu()).expect("DeiT-Tiny fixture"));
    let acceptor = TcpAcceptor::bind(std::net::SocketAddr::from(([127, 0, 0, 1], 0)))
        .await
        .expect("bind");
    let addr = acceptor.local_addr().expect("addr");
    let pipeline = PipelineConfig::from_toml(&pipeline(addr)).expect("the pipeline parses");

    let (builds, plans) = (
        EDF_BUILDS.load(Ordering::Relaxed),
        TOKEN_PLANS.load(Ordering::Relaxed),
    );
    let server_config = pipeline.server_config().expect("server config");
    let server = Server::start(model.clone(), server_config, acceptor).expect("server");
    assert!(
        EDF_BUILDS.load(Ordering::Relaxed) > builds,
        "the server built the user's policy from the file"
    );

    let images: Vec<image::RgbImage> = fixtures::imagenet_sample()
        .expect("sample images")
        .iter()
        .take(6)
        .map(|s| image::open(&s.path).expect("decode").to_rgb8())
        .collect();
    let expected: Vec<u32> = images
        .iter()
        .map(|img| unsplit_top1(&model, img).expect("unsplit answer"))
        .collect();

    let mut devices = Vec::new();
    for name in ["phone", "board"] {
        let (config, strategy) = pipeline.device_config().expect("device config");
        let context = flat_strategy_context(&model, "deit_tiny_patch16_224").expect("context");
        let strategy = strategy.build(&context).expect("strategy");
        assert!(
            strategy.name().starts_with("bandwidth-step"),
            "{}",
            strategy.name()
        );
        let device = Device::new(model.clone(), strategy, client(addr, name).await, config);
        let (images, expected) = (images.clone(), expected.clone());
        devices.push(tokio::spawn(async move {
            let mut answers = Vec::new();
            for (img, want) in images.iter().zip(&expected) {
                let c = device.classify(img).await.expect("classified");
                assert_eq!((c.split, c.codec.to_string()), (2, "top-k-r192".into()));
                assert_eq!(
                    c.bytes,
                    14 + 197 * 192 * 6,
                    "the user's codec was on the wire"
                );
                answers.push((c.top[0].0, *want));
            }
            answers
        }));
    }
    for device in devices {
        for (got, want) in device.await.expect("device task") {
            assert_eq!(got, want, "the unsplit model's top-1");
        }
    }

    // An id no factory builds is refused by name, and the session goes on.
    let c = client(addr, "stranger").await;
    let outgoing = Outgoing {
        split: 2,
        codec: "zip-r3".parse().expect("id"),
        payload: vec![1, 2, 3],
        budget: Duration::from_secs(10),
        max_loss: 0.0,
        meta: None,
    };
    match c.infer(outgoing, Duration::from_secs(30)).await {
        Err(ClientError::Remote(RemoteError::Invalid(m))) => {
            assert!(
                m.contains("unknown codec `zip-r3`") && m.contains("top-k"),
                "{m}"
            );
        }
        other => panic!("expected Invalid, got {other:?}"),
    }

    assert!(
        TOKEN_PLANS.load(Ordering::Relaxed) > plans,
        "the server asked the user's token policy for its plans"
    );
    let stats = server.shutdown().await;
    assert_eq!(
        (stats.accepted, stats.done, stats.invalid, stats.retries),
        (12, 12, 1, 0),
        "every request answered exactly once: {stats:?}"
    );
}
