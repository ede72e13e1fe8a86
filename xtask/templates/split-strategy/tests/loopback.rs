//! The strategy on a real device against a real server over loopback TCP: DeiT-Tiny, the
//! strategy named in a pipeline file, four ImageNet sample images. Every answer must be the
//! unsplit model's top-1, at the split and codec the strategy chose.

use std::sync::Arc;

use collab_backends::candle::CandleBackend;
use collab_core::fixtures;
use collab_net::client::{ClientConfig, Device, DeviceClient};
use collab_net::pipeline::PipelineConfig;
use collab_net::server::Server;
use collab_net::testing::{flat_strategy_context, unsplit_top1};
use collab_net::transport::{Tcp, TcpAcceptor, Transport};

fn pipeline(server: std::net::SocketAddr) -> String {
    format!(
        r#"
[model]
id = "deit_tiny_patch16_224"

[server]
[server.batch]
kind = "shared"
budget = 4

[device]
server = "{server}"
deadline_ms = 60000
[device.split]
kind = "{{name}}"
threshold_mbit = 1
low_split = 9
low_codec = "int8"
high_split = 3
high_codec = "f16"
"#
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_with_the_strategy_is_answered_by_a_real_server() {
    {{crate}}::register();
    let model = Arc::new(fixtures::deit_tiny(CandleBackend::cpu()).expect("DeiT-Tiny fixture"));
    let acceptor = TcpAcceptor::bind(std::net::SocketAddr::from(([127, 0, 0, 1], 0)))
        .await
        .expect("bind");
    let addr = acceptor.local_addr().expect("addr");
    let pipeline = PipelineConfig::from_toml(&pipeline(addr)).expect("the pipeline parses");
    let server = Server::start(
        model.clone(),
        pipeline.server_config().expect("server"),
        acceptor,
    )
    .expect("server");

    let (config, strategy) = pipeline.device_config().expect("device config");
    let strategy = strategy
        .build(&flat_strategy_context(&model, "deit_tiny_patch16_224").expect("context"))
        .expect("the strategy builds");
    let transport: Arc<dyn Transport> = Arc::new(Tcp::new(addr));
    let client = DeviceClient::connect(transport, ClientConfig::default())
        .await
        .expect("connect");
    let device = Device::new(model.clone(), strategy, client, config);

    for sample in fixtures::imagenet_sample().expect("images").iter().take(4) {
        let img = image::open(&sample.path).expect("decode").to_rgb8();
        let want = unsplit_top1(&model, &img).expect("unsplit answer");
        let c = device.classify(&img).await.expect("classified");
        // Loopback is faster than 1 Mbit/s: the strategy's fast-link choice.
        assert_eq!((c.split, c.codec.to_string()), (3, "f16".to_string()));
        assert_eq!(c.top[0].0, want, "the unsplit model's top-1");
    }
    let stats = server.shutdown().await;
    assert_eq!((stats.accepted, stats.done), (4, 4), "{stats:?}");
}
