//! The policy on a real server: DeiT-Tiny served over loopback TCP with the policy named in a
//! pipeline file, two devices splitting at different blocks (4 and 8, `f16` activations) so
//! that requests entering at different blocks meet in its queues. Every request must be
//! answered once, with the unsplit model's top-1.

use std::sync::Arc;

use collab_backends::candle::CandleBackend;
use collab_core::fixtures;
use collab_net::client::{ClientConfig, Device, DeviceClient};
use collab_net::pipeline::PipelineConfig;
use collab_net::server::Server;
use collab_net::testing::{flat_strategy_context, unsplit_top1};
use collab_net::transport::{Tcp, TcpAcceptor, Transport};
use collab_policies::split::{FixedSplitConfig, SplitStrategyConfig};

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

    let images: Vec<image::RgbImage> = fixtures::imagenet_sample()
        .expect("images")
        .iter()
        .take(4)
        .map(|s| image::open(&s.path).expect("decode").to_rgb8())
        .collect();
    let want: Vec<u32> = images
        .iter()
        .map(|img| unsplit_top1(&model, img).expect("unsplit answer"))
        .collect();

    let mut devices = vec![];
    for (name, split) in [("early", 4), ("late", 8)] {
        let (config, _) = pipeline.device_config().expect("device config");
        let strategy = FixedSplitConfig {
            split,
            codec: "f16".into(),
        }
        .build(&flat_strategy_context(&model, "deit_tiny_patch16_224").expect("context"))
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
                assert_eq!(c.top[0].0, *want, "the unsplit model's top-1");
            }
        }));
    }
    for d in devices {
        d.await.expect("device task");
    }
    let stats = server.shutdown().await;
    assert_eq!((stats.accepted, stats.done), (8, 8), "{stats:?}");
}
