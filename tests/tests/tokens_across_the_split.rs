//! A device-side token adapter crosses the split: a device merges tokens with ToMe in its
//! blocks, the merged tokens' sizes travel with the activation, and the server's blocks attend
//! and pool by them. Over real loopback TCP on DeiT-Tiny, each answer equals the same
//! computation in one process (ToMe in blocks `0..k`, plain blocks `k..L`). With a token plan
//! on the server as well, a pass mixes rows of unequal token counts and each still equals its
//! computation alone.

use std::sync::Arc;
use std::time::Duration;

use collab_backends::candle::CandleBackend;
use collab_core::adaptive::{ProfileTable, ProfileTableData};
use collab_core::batch::{BatchPolicy, BatchPolicyConfig, QueueView};
use collab_core::input::ImagePreprocess;
use collab_core::model::{Input, Transformer};
use collab_core::split::CodecId;
use collab_core::split::{Activation, ActivationCodec};
use collab_core::{Backend, fixtures};
use collab_net::client::{ClientConfig, ClientError, Device, DeviceClient, DeviceConfig, Outgoing};
use collab_net::pipeline::PipelineConfig;
use collab_net::server::{Server, ServerConfig};
use collab_net::transport::{Tcp, TcpAcceptor, Transport};
use collab_net::wire::{RemoteError, TokenMeta};
use collab_policies::split::FixedSplit;
use collab_policies::svd::{PlainCodec, Precision};
use collab_policies::token::live::FixedTokens;
use collab_policies::token::saved::SavedTokenProfile;
use collab_policies::token::schedule::MergeSchedule;
use collab_policies::token::tome::ToMe;
use serde::{Deserialize, Serialize};

const SPLIT: usize = 6;
const MERGE_PER_BLOCK: usize = 12;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn merged_tokens_and_their_sizes_cross_the_split() {
    let model = Arc::new(fixtures::deit_tiny(CandleBackend::cpu()).expect("DeiT-Tiny fixture"));
    let layers = model.num_blocks();
    let tome = Arc::new(ToMe::new(MergeSchedule::constant(MERGE_PER_BLOCK, layers)));
    let acceptor = TcpAcceptor::bind(std::net::SocketAddr::from(([127, 0, 0, 1], 0)))
        .await
        .expect("bind");
    let addr = acceptor.local_addr().expect("addr");
    let server = Server::start(model.clone(), ServerConfig::default(), acceptor).expect("server");
    let transport: Arc<dyn Transport> = Arc::new(Tcp::new(addr));
    let client = DeviceClient::connect(transport, ClientConfig::default())
        .await
        .expect("connect");
    let strategy = FixedSplit::new(SPLIT, "f32".parse().expect("id"), layers).expect("split");
    let config = DeviceConfig {
        deadline: Duration::from_secs(60),
        ..DeviceConfig::default()
    };
    let device =
        Device::new(model.clone(), strategy, client, config).with_token_adapter(tome.clone());
    let images: Vec<image::RgbImage> = fixtures::imagenet_sample()
        .expect("sample images")
        .iter()
        .take(4)
        .map(|s| image::open(&s.path).expect("decode").to_rgb8())
        .collect();
    for img in &images {
        let answer = device.classify(img).await.expect("classified");
        // 197 tokens, 12 merged away in each of the 6 device blocks: 125 cross, as f32.
        let tokens = 197 - SPLIT * MERGE_PER_BLOCK;
        assert_eq!(answer.bytes, 25 + 4 * tokens * 192, "{answer:?}");
        // ToMe in blocks 0..SPLIT on the device, none after.
        let none = ToMe::new(MergeSchedule::constant(0, layers));
        let want = merged_logits(&model, &tome, &none, SPLIT, img);
        let best = want
            .iter()
            .enumerate()
            .max_by(|a, b| a.1.total_cmp(b.1))
            .map(|(i, _)| i as u32);
        assert_eq!(Some(answer.top[0].0), best);
        for (class, logit) in &answer.top {
            let diff = (logit - want[*class as usize]).abs();
            assert!(
                diff < 1e-3,
                "class {class}: {logit} against {}",
                want[*class as usize]
            );
        }
    }
    let stats = server.shutdown().await;
    assert_eq!((stats.accepted, stats.done), (4, 4));
}

// ----- the server merges too: a token plan per pass -------------------------------------------

/// Starts a pass only once `n` requests wait, then admits every request at every position:
/// makes the mixed batch below certain rather than a matter of timing (a test aid).
#[derive(Debug)]
struct Gather {
    n: usize,
}

impl BatchPolicy for Gather {
    fn name(&self) -> String {
        format!("gather({})", self.n)
    }
    fn budget(&self) -> usize {
        64
    }
    fn start(&mut self, q: &QueueView<'_>, _now: f64) -> Option<usize> {
        if q.total() >= self.n {
            q.non_empty().next()
        } else {
            None
        }
    }
    fn admit(&mut self, position: usize, running: usize, q: &QueueView<'_>, _now: f64) -> usize {
        q.len(position).min(64 - running)
    }
}

#[derive(Debug, Serialize, Deserialize)]
struct GatherConfig {
    n: usize,
}

#[typetag::serde(name = "gather")]
impl BatchPolicyConfig for GatherConfig {
    fn build(&self) -> collab_core::Result<Box<dyn BatchPolicy>> {
        Ok(Box::new(Gather { n: self.n }))
    }
}

const SERVER_MERGE: i32 = -8;

/// The logits of `img` with `device` merging in blocks `0..split` and the server's plan
/// (8 per block) in `split..L`, in one process.
fn merged_logits(
    model: &Transformer<CandleBackend>,
    device: &ToMe,
    server: &ToMe,
    split: usize,
    img: &image::RgbImage,
) -> Vec<f32> {
    let be = model.backend();
    let pixels = ImagePreprocess::imagenet(224)
        .apply(img)
        .expect("preprocess");
    let x = be.from_vec(pixels, &[1, 3, 224, 224]).expect("tensor");
    let h = model.embed(&Input::Images(x)).expect("embed");
    let h = model.run_blocks_with(h, 0..split, device).expect("device");
    let h = model
        .run_blocks_with(h, split..model.num_blocks(), server)
        .expect("server");
    be.to_vec(&model.head(&h).expect("head")).expect("logits")
}

/// The server runs `[server.tokens] kind = "fixed", gamma = -8`: every pass merges 8 tokens
/// per block. One pass holds 4 server-only requests (197 tokens at block 0) and 4 requests
/// that a device split at block 6 after merging 12 per block there (125 tokens on arrival,
/// against the others' 149): rows of unequal counts, padded and masked, each merging its own.
/// Every answer equals the same computation in one process.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_server_merges_each_pass_by_its_token_plan() {
    let model = Arc::new(fixtures::deit_tiny(CandleBackend::cpu()).expect("DeiT-Tiny fixture"));
    let layers = model.num_blocks();
    let device_tome = Arc::new(ToMe::new(MergeSchedule::constant(MERGE_PER_BLOCK, layers)));
    let server_tome = ToMe::new(MergeSchedule::constant(8, layers));
    let acceptor = TcpAcceptor::bind(std::net::SocketAddr::from(([127, 0, 0, 1], 0)))
        .await
        .expect("bind");
    let addr = acceptor.local_addr().expect("addr");
    let config = ServerConfig {
        policy: Arc::new(GatherConfig { n: 8 }),
        tokens: Some(Arc::new(FixedTokens {
            gamma: SERVER_MERGE,
            schedule: None,
        })),
        ..ServerConfig::default()
    };
    let server = Server::start(model.clone(), config, acceptor).expect("server");
    let device = |split: usize, adapter: Option<Arc<ToMe>>| {
        let model = model.clone();
        async move {
            let transport: Arc<dyn Transport> = Arc::new(Tcp::new(addr));
            let client = DeviceClient::connect(transport, ClientConfig::default())
                .await
                .expect("connect");
            let codec = if split == 0 {
                CodecId::raw()
            } else {
                "f32".parse().expect("id")
            };
            let strategy = FixedSplit::new(split, codec, layers).expect("split");
            let config = DeviceConfig {
                deadline: Duration::from_secs(120),
                ..DeviceConfig::default()
            };
            let d = Device::new(model, strategy, client, config);
            Arc::new(match adapter {
                Some(a) => d.with_token_adapter(a),
                None => d,
            })
        }
    };
    let devices = [
        (0, device(0, None).await),
        (SPLIT, device(SPLIT, Some(device_tome.clone())).await),
    ];
    let images: Vec<Arc<image::RgbImage>> = fixtures::imagenet_sample()
        .expect("sample images")
        .iter()
        .take(4)
        .map(|s| Arc::new(image::open(&s.path).expect("decode").to_rgb8()))
        .collect();
    let mut tasks = Vec::new();
    for (split, d) in &devices {
        for img in &images {
            let (d, img, split) = (d.clone(), img.clone(), *split);
            tasks.push(tokio::spawn(async move {
                (split, img.clone(), d.classify(&img).await)
            }));
        }
    }
    let identity = ToMe::new(MergeSchedule::constant(0, layers));
    for task in tasks {
        let (split, img, answer) = task.await.expect("task");
        let answer = answer.expect("classified");
        assert_eq!(answer.batch, 8, "one pass of all 8 requests: {answer:?}");
        let device = if split == 0 {
            &identity
        } else {
            device_tome.as_ref()
        };
        let want = merged_logits(&model, device, &server_tome, split, &img);
        for (class, logit) in &answer.top {
            let diff = (logit - want[*class as usize]).abs();
            assert!(
                diff < 1e-3,
                "split {split}, class {class}: {logit} against {}",
                want[*class as usize]
            );
        }
    }
    let metrics = server.metrics_text();
    assert!(
        metrics.contains("collab_passes_total{gamma=\"-8\"} 1"),
        "{metrics}"
    );
    // A request that declares its own protected tokens would change every row's merging:
    // under a token policy it is refused, alone.
    let activation = Activation::new(197, 192, vec![0.0; 197 * 192]).expect("activation");
    let outgoing = Outgoing {
        split: SPLIT as u32,
        codec: "f32".parse().expect("id"),
        payload: PlainCodec {
            precision: Precision::F32,
        }
        .encode(&activation)
        .expect("encode"),
        budget: Duration::from_secs(30),
        max_loss: 1.0,
        meta: Some(TokenMeta {
            protected: 2,
            mask: None,
            sizes: None,
        }),
    };
    match devices[0]
        .1
        .client()
        .infer(outgoing, Duration::from_secs(30))
        .await
    {
        Err(ClientError::Remote(RemoteError::Invalid(m))) => {
            assert!(m.contains("protected"), "{m}");
        }
        other => panic!("expected Invalid, got {other:?}"),
    }
    let stats = server.shutdown().await;
    assert_eq!(
        (stats.done, stats.invalid, stats.passes),
        (8, 1, 1),
        "{stats:?}"
    );
}

/// `collab_passes_total{gamma="g"}` from the metrics text (0 when absent).
fn passes_at(metrics: &str, gamma: i32) -> u64 {
    let key = format!("collab_passes_total{{gamma=\"{gamma}\"}} ");
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(&key))
        .map_or(0, |v| v.trim().parse().expect("a count"))
}

/// `kind = "otas"` on a live server: the load-based rule (the allocator's first 2 s, and its
/// rule for short queues) maps the measured arrival rate to a gamma through a profile. The
/// profile here is written by the test (a test aid, not a measurement): the plain model
/// serves 5 requests/s, gamma -16 serves 1000/s, so the rate table switches at 4.5/s. Three
/// requests 1.2 s apart run plain; a burst of 16 runs merged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn otas_on_a_live_server_merges_when_the_arrival_rate_rises() {
    merges_when_the_arrival_rate_rises("otas").await;
}

/// `kind = "prodigy"` (PRODIGY's reduction scheduler, SPEC §5) on the same profile and load:
/// the smallest reduction whose throughput at the requests waiting exceeds 0.9 x the rate.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prodigy_on_a_live_server_merges_when_the_arrival_rate_rises() {
    merges_when_the_arrival_rate_rises("prodigy").await;
}

/// A live server whose `[server.tokens]` is `kind` over a two-gamma profile: three requests
/// 1.2 s apart run plain, a burst of 16 runs at least one pass merged.
async fn merges_when_the_arrival_rate_rises(kind: &str) {
    let dir = std::env::temp_dir().join(format!("collab-{kind}-live-{}", std::process::id()));
    let path = dir.join("token-profile.json");
    let table = ProfileTable::new(ProfileTableData {
        gammas: vec![-16, 0],
        batch_sizes: vec![1],
        accuracy: vec![vec![Some(0.70), Some(0.82)]],
        per_sample_time: vec![vec![Some(vec![0.001]), Some(vec![0.2])]],
    })
    .expect("table");
    SavedTokenProfile {
        table,
        schedules: Default::default(),
        schedule_scores: Default::default(),
        test_examples: vec![1],
    }
    .save(&path)
    .expect("save");
    let model = Arc::new(fixtures::deit_tiny(CandleBackend::cpu()).expect("DeiT-Tiny fixture"));
    let layers = model.num_blocks();
    let pipeline = PipelineConfig::from_toml(&format!(
        "[model]\nid = \"deit_tiny_patch16_224\"\n[server]\n[server.tokens]\nkind = \"{kind}\"\nprofile = {:?}\n",
        path.display().to_string()
    ))
    .expect("pipeline");
    let acceptor = TcpAcceptor::bind(std::net::SocketAddr::from(([127, 0, 0, 1], 0)))
        .await
        .expect("bind");
    let addr = acceptor.local_addr().expect("addr");
    let server_config = pipeline.server_config().expect("server config");
    let server = Server::start(model.clone(), server_config, acceptor).expect("server");
    let transport: Arc<dyn Transport> = Arc::new(Tcp::new(addr));
    let client = DeviceClient::connect(transport, ClientConfig::default())
        .await
        .expect("connect");
    let strategy = FixedSplit::new(0, CodecId::raw(), layers).expect("split");
    let config = DeviceConfig {
        deadline: Duration::from_secs(120),
        ..DeviceConfig::default()
    };
    let device = Arc::new(Device::new(model.clone(), strategy, client, config));
    let img = Arc::new(
        image::open(&fixtures::imagenet_sample().expect("sample")[0].path)
            .expect("decode")
            .to_rgb8(),
    );
    // Slow arrivals: at most 2 in any 2 s window, 1/s.
    tokio::time::sleep(Duration::from_millis(600)).await;
    for _ in 0..3 {
        device.classify(&img).await.expect("classified");
        tokio::time::sleep(Duration::from_millis(1200)).await;
    }
    let calm = server.metrics_text();
    assert_eq!(
        (passes_at(&calm, 0), passes_at(&calm, -16)),
        (3, 0),
        "{calm}"
    );
    // A burst: 16 at once, over 8/s within the window.
    let burst: Vec<_> = (0..16)
        .map(|_| {
            let (device, img) = (device.clone(), img.clone());
            tokio::spawn(async move { device.classify(&img).await })
        })
        .collect();
    for task in burst {
        task.await.expect("task").expect("classified");
    }
    let busy = server.metrics_text();
    assert!(passes_at(&busy, -16) >= 1, "{busy}");
    let stats = server.shutdown().await;
    assert_eq!((stats.accepted, stats.done), (19, 19));
    std::fs::remove_dir_all(&dir).expect("clean up");
}
