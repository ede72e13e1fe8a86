//! The backend per side of a network split, chosen at run time: a libtorch server and an
//! `arm-q8` device (8-bit weights on the blocks before the split) over real loopback TCP give
//! the same top-1 as candle on both sides, on real DeiT-Tiny and the sample images.
//!
//! Runs in the libtorch stage of the test command (features `tch` and `arm`).

#![cfg(all(feature = "tch", feature = "arm"))]

use std::sync::Arc;
use std::time::Duration;

use collab_backends::any::{AnyBackend, BackendTask};
use collab_core::{Backend, fixtures};
use collab_net::client::{ClientConfig, Device, DeviceClient, DeviceConfig};
use collab_net::server::{Server, ServerConfig, ServerHandle};
use collab_net::transport::{Tcp, TcpAcceptor, Transport};
use collab_policies::split::FixedSplit;

const SPLIT: usize = 6;
const IMAGES: usize = 8;

/// Starts a server on DeiT-Tiny on whichever backend it is run with.
struct StartServer(TcpAcceptor);

impl BackendTask for StartServer {
    type Output = ServerHandle;

    fn run<B: Backend>(self, backend: &B) -> ServerHandle {
        let model = Arc::new(fixtures::deit_tiny(backend.clone()).expect("DeiT-Tiny fixture"));
        Server::start(model, ServerConfig::default(), self.0).expect("server")
    }
}

/// Classifies the first images through a device on whichever backend it is run with,
/// splitting at [`SPLIT`] with `f32` activations; returns the top-1 classes.
struct Classify(std::net::SocketAddr, Vec<image::RgbImage>);

impl BackendTask for Classify {
    type Output = Vec<u32>;

    fn run<B: Backend>(self, backend: &B) -> Vec<u32> {
        let model = Arc::new(fixtures::deit_tiny(backend.clone()).expect("DeiT-Tiny fixture"));
        let strategy = FixedSplit::new(SPLIT, "f32".parse().expect("id"), 12).expect("split");
        let (addr, images) = (self.0, self.1);
        // The device is async; this task runs inside the test's runtime.
        tokio::task::block_in_place(|| {
            tokio::runtime::Handle::current().block_on(async move {
                let transport: Arc<dyn Transport> = Arc::new(Tcp::new(addr));
                let client = DeviceClient::connect(transport, ClientConfig::default())
                    .await
                    .expect("connect");
                let config = DeviceConfig {
                    deadline: Duration::from_secs(60),
                    ..DeviceConfig::default()
                };
                let device = Device::new(model, strategy, client, config);
                let mut top1 = Vec::new();
                for img in &images {
                    let c = device.classify(img).await.expect("classified");
                    assert_eq!(c.split, SPLIT);
                    top1.push(c.top[0].0);
                }
                top1
            })
        })
    }
}

async fn run_split(server: &str, device: &str, images: &[image::RgbImage]) -> Vec<u32> {
    let acceptor = TcpAcceptor::bind(std::net::SocketAddr::from(([127, 0, 0, 1], 0)))
        .await
        .expect("bind");
    let addr = acceptor.local_addr().expect("addr");
    let server_backend = AnyBackend::from_name(server).expect("server backend");
    let handle = server_backend.run(StartServer(acceptor));
    let device_backend = AnyBackend::from_name(device).expect("device backend");
    let top1 = device_backend.run(Classify(addr, images.to_vec()));
    let stats = handle.shutdown().await;
    assert_eq!((stats.accepted, stats.done), (IMAGES as u64, IMAGES as u64));
    top1
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tch_server_and_an_arm_q8_device_give_candles_top1_over_tcp() {
    let images: Vec<image::RgbImage> = fixtures::imagenet_sample()
        .expect("sample images")
        .iter()
        .take(IMAGES)
        .map(|s| image::open(&s.path).expect("decode").to_rgb8())
        .collect();
    let candle = run_split("candle-cpu", "candle-cpu", &images).await;
    let mixed = run_split("tch-cpu", "arm-q8", &images).await;
    assert_eq!(
        mixed, candle,
        "tch server + arm-q8 device against candle on both sides"
    );
}
