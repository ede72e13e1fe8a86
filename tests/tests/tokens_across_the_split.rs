//! A device-side token adapter crosses the split: a device merges tokens with ToMe in its
//! blocks, the merged tokens' sizes travel with the activation, and the server's blocks attend
//! and pool by them. Over real loopback TCP on DeiT-Tiny, each answer equals the same
//! computation in one process (ToMe in blocks `0..k`, plain blocks `k..L`).

use std::sync::Arc;
use std::time::Duration;

use collab_backends::candle::CandleBackend;
use collab_core::input::ImagePreprocess;
use collab_core::model::{Input, Transformer};
use collab_core::{Backend, fixtures};
use collab_net::client::{ClientConfig, Device, DeviceClient, DeviceConfig};
use collab_net::server::{Server, ServerConfig};
use collab_net::transport::{Tcp, TcpAcceptor, Transport};
use collab_policies::split::FixedSplit;
use collab_policies::token::schedule::MergeSchedule;
use collab_policies::token::tome::ToMe;

const SPLIT: usize = 6;
const MERGE_PER_BLOCK: usize = 12;

/// The logits of `img` with ToMe in blocks `0..SPLIT` and none after, in one process.
fn local_logits(
    model: &Transformer<CandleBackend>,
    tome: &ToMe,
    img: &image::RgbImage,
) -> Vec<f32> {
    let be = model.backend();
    let pixels = ImagePreprocess::imagenet(224)
        .apply(img)
        .expect("preprocess");
    let x = be.from_vec(pixels, &[1, 3, 224, 224]).expect("tensor");
    let h = model.embed(&Input::Images(x)).expect("embed");
    let h = model
        .run_blocks_with(h, 0..SPLIT, tome)
        .expect("device blocks");
    let h = model
        .run_blocks(h, SPLIT..model.num_blocks())
        .expect("server blocks");
    be.to_vec(&model.head(&h).expect("head")).expect("logits")
}

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
        let want = local_logits(&model, &tome, img);
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
