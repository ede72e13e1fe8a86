//! The policy on a real server: DeiT-Tiny served over loopback TCP with the policy named in a
//! pipeline file, two devices splitting at different blocks (4 and 8, `f16` activations) so
//! that requests entering at different blocks meet in its queues. Every request must be
//! answered once, with the unsplit model's top-1.

use std::sync::Arc;

use collab_backends::candle::CandleBackend;
use collab_core::Backend;
use collab_core::fixtures;
use collab_core::input::ImagePreprocess;
use collab_core::model::Input;
use collab_net::client::{ClientConfig, Device, DeviceClient};
use collab_net::pipeline::PipelineConfig;
use collab_net::server::Server;
use collab_net::testing::FlatCost;
use collab_net::transport::{Tcp, TcpAcceptor, Transport};
use collab_policies::split::{
    AccuracyTable, FixedSplitConfig, SelectorConfig, SplitStrategyConfig, StrategyContext,
};

fn pipeline(server: std::net::SocketAddr) -> String {
    format!(
        r#"
[model]
id = "deit_tiny_patch16_224"

[server]
capacity = 32
[server.batch]
kind = "{{name}}"
budget = 4

[device]
server = "{server}"
deadline_ms = 60000
"#
    )
}

/// What a device knows when it builds its strategy (a fixed split needs only the block count).
fn context() -> StrategyContext {
    StrategyContext {
        selector: SelectorConfig {
            layers: 12,
            tokens: 197,
            features: 192,
            raw_input_bytes: 3 * 224 * 224,
            response_bytes: 64,
            device_codec_scale: 1.0,
            allow_device_only: false,
        },
        device: Arc::new(FlatCost(0.01)),
        server: Arc::new(FlatCost(0.001)),
        table: AccuracyTable {
            model: "deit_tiny_patch16_224".into(),
            metric: "top1".into(),
            baseline: 0.0,
            tokens: 197,
            features: 192,
            layers: 12,
            entries: vec![],
        },
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_devices_splitting_at_different_blocks_are_answered_once() {
    {{crate}}::register();
    let model = Arc::new(fixtures::deit_tiny(CandleBackend::cpu()).expect("DeiT-Tiny fixture"));
    let acceptor = TcpAcceptor::bind(std::net::SocketAddr::from(([127, 0, 0, 1], 0)))
        .await
        .expect("bind");
    let addr = acceptor.local_addr().expect("addr");
    let pipeline = PipelineConfig::from_toml(&pipeline(addr)).expect("the pipeline parses");
    let server = Server::start(
        model.clone(),
        pipeline.server_config().expect("server config"),
        acceptor,
    )
    .expect("the server starts with the policy");

    let be = model.backend();
    let images: Vec<image::RgbImage> = fixtures::imagenet_sample()
        .expect("images")
        .iter()
        .take(4)
        .map(|s| image::open(&s.path).expect("decode").to_rgb8())
        .collect();
    let mut want = vec![];
    for img in &images {
        let x = be
            .from_vec(
                ImagePreprocess::imagenet(224).apply(img).expect("pixels"),
                &[1, 3, 224, 224],
            )
            .expect("tensor");
        let logits = be
            .to_vec(&model.forward(&Input::Images(x)).expect("forward"))
            .expect("logits");
        let top = logits
            .iter()
            .enumerate()
            .max_by(|a, b| a.1.total_cmp(b.1))
            .map(|(i, _)| i as u32);
        want.push(top);
    }

    let mut devices = vec![];
    for (name, split) in [("early", 4), ("late", 8)] {
        let (config, _) = pipeline.device_config().expect("device config");
        let strategy = FixedSplitConfig {
            split,
            codec: "f16".into(),
        }
        .build(&context())
        .expect("strategy");
        let transport: Arc<dyn Transport> = Arc::new(Tcp::new(addr));
        let client_config = ClientConfig {
            device_id: name.into(),
            ..ClientConfig::default()
        };
        let client = DeviceClient::connect(transport, client_config)
            .await
            .expect("connect");
        let device = Device::new(model.clone(), strategy, client, config);
        let (images, want) = (images.clone(), want.clone());
        devices.push(tokio::spawn(async move {
            for (img, want) in images.iter().zip(&want) {
                let c = device.classify(img).await.expect("classified");
                assert_eq!(c.split, split);
                assert_eq!(Some(c.top[0].0), *want, "the unsplit model's top-1");
            }
        }));
    }
    for d in devices {
        d.await.expect("device task");
    }
    let stats = server.shutdown().await;
    assert_eq!((stats.accepted, stats.done), (8, 8), "{stats:?}");
}
