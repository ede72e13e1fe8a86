//! The codec on the wire: a real server and a device over loopback TCP, both building the
//! codec from its family named in a pipeline file (`[[codecs]]`), the device splitting
//! DeiT-Tiny at block 6 and sending `{{name}}-r8`. Every answer must be the unsplit model's
//! top-1, and the bytes on the wire the codec's own count.

use std::sync::Arc;

use collab_backends::candle::CandleBackend;
use collab_core::fixtures;
use collab_core::split::ActivationCodec;
use collab_net::client::{ClientConfig, Device, DeviceClient};
use collab_net::pipeline::PipelineConfig;
use collab_net::server::Server;
use collab_net::testing::{flat_strategy_context, unsplit_top1};
use collab_net::transport::{Tcp, TcpAcceptor, Transport};
use {{crate}}::UniformQuant;

fn pipeline(server: std::net::SocketAddr) -> String {
    format!(
        r#"
[model]
id = "deit_tiny_patch16_224"

[[codecs]]
kind = "{{name}}"

[server]
[server.batch]
kind = "shared"
budget = 4

[device]
server = "{server}"
deadline_ms = 60000
[device.split]
kind = "fixed"
split = 6
codec = "{{name}}-r8"
"#
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_sends_the_codec_and_the_server_decodes_it() {
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
    .expect("server");
    let (config, strategy) = pipeline.device_config().expect("device config");
    let strategy = strategy
        .build(&flat_strategy_context(&model, "deit_tiny_patch16_224").expect("context"))
        .expect("strategy");
    let transport: Arc<dyn Transport> = Arc::new(Tcp::new(addr));
    let client = DeviceClient::connect(transport, ClientConfig::default())
        .await
        .expect("connect");
    let device = Device::new(model.clone(), strategy, client, config);

    let bytes = UniformQuant::new(8).expect("codec").encoded_len(197, 192);
    for sample in fixtures::imagenet_sample().expect("images").iter().take(4) {
        let img = image::open(&sample.path).expect("decode").to_rgb8();
        let want = unsplit_top1(&model, &img).expect("unsplit answer");
        let c = device.classify(&img).await.expect("classified");
        assert_eq!(
            (c.split, c.codec.to_string()),
            (6, "{{name}}-r8".to_string())
        );
        assert_eq!(c.bytes, bytes, "the codec's bytes on the wire");
        assert_eq!(c.top[0].0, want, "the unsplit model's top-1");
    }
    let stats = server.shutdown().await;
    assert_eq!((stats.accepted, stats.done), (4, 4), "{stats:?}");
}
