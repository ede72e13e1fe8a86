//! Shared pieces of the loopback tests: a tiny seeded ViT, a server on a free port, payloads
//! with their reference answers, and a raw framed connection for hostile clients.

#![allow(dead_code, unreachable_pub)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use collab_backends::candle::CandleBackend;
use collab_core::Backend;
use collab_core::model::{Input, Transformer};
use collab_core::split::{Activation, ActivationCodec};
use collab_net::client::{ClientConfig, DeviceClient, Outgoing};
use collab_net::server::{Server, ServerConfig, ServerHandle};
use collab_net::transport::{Tcp, TcpAcceptor, Transport};
use collab_net::wire::{FrameCodec, Hello, Message, PROTOCOL_VERSION};
use collab_policies::svd::{PlainCodec, Precision};
use futures_util::{SinkExt, StreamExt};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio::net::TcpStream;
use tokio_util::codec::Framed;

pub const MODEL_ID: &str = "tiny-vit";
pub const TOKEN: &str = "secret";
pub const SIDE: usize = collab_net::testing::TINY_SIDE;

/// A 3-block ViT on 32 x 32 images (17 tokens of 32 features, 10 classes), seeded weights.
pub fn tiny_model() -> Arc<Transformer<CandleBackend>> {
    Arc::new(collab_net::testing::tiny_vit(11).expect("tiny model"))
}

pub fn config() -> ServerConfig {
    ServerConfig {
        model_id: MODEL_ID.into(),
        auth_token: TOKEN.into(),
        ..ServerConfig::default()
    }
}

/// Starts a server on a free loopback port (or on `addr`).
pub async fn start(
    model: &Arc<Transformer<CandleBackend>>,
    config: ServerConfig,
    addr: Option<SocketAddr>,
) -> (ServerHandle, SocketAddr) {
    let bind = addr.unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 0)));
    let acceptor = TcpAcceptor::bind(bind).await.expect("bind");
    let addr = acceptor.local_addr().expect("addr");
    let handle = Server::start(model.clone(), config, acceptor).expect("server");
    (handle, addr)
}

/// Random 8-bit pixels of one image.
pub fn pixels(seed: u64) -> Vec<u8> {
    let mut rng = StdRng::seed_from_u64(seed);
    (0..3 * SIDE * SIDE).map(|_| rng.random()).collect()
}

/// The `f32`-encoded activation of image `seed` after blocks `0..split`, and the logits the
/// whole model gives for that image.
pub fn activation_payload(
    model: &Transformer<CandleBackend>,
    seed: u64,
    split: usize,
) -> (Vec<u8>, Vec<f32>) {
    let be = model.backend();
    let pre = collab_core::input::ImagePreprocess::imagenet(SIDE as u32);
    let values = pre.normalize(&pixels(seed)).expect("normalize");
    let x = be.from_vec(values, &[1, 3, SIDE, SIDE]).expect("tensor");
    let input = Input::Images(x);
    let logits = be
        .to_vec(&model.forward(&input).expect("forward"))
        .expect("logits");
    let h = model
        .run_blocks(model.embed(&input).expect("embed"), 0..split)
        .expect("blocks");
    let (_, n, d) = h.dims3(be).expect("dims");
    let act = Activation::new(n, d, be.to_vec(&h.x).expect("values")).expect("activation");
    let payload = PlainCodec {
        precision: Precision::F32,
    }
    .encode(&act)
    .expect("encode");
    (payload, logits)
}

/// The best class of `logits`.
pub fn argmax(logits: &[f32]) -> u32 {
    logits
        .iter()
        .enumerate()
        .max_by(|a, b| a.1.total_cmp(b.1))
        .map(|(i, _)| i as u32)
        .expect("logits")
}

/// A raw framed TCP connection, after a successful handshake.
pub async fn raw(addr: SocketAddr) -> Framed<TcpStream, FrameCodec> {
    match raw_as(addr, "raw", 7, TOKEN).await {
        (framed, Some(Message::Welcome(_))) => framed,
        (_, other) => panic!("expected Welcome, got {other:?}"),
    }
}

/// A raw framed TCP connection that said `Hello` as `device` (client `instance`, `token`),
/// with the server's first answer.
pub async fn raw_as(
    addr: SocketAddr,
    device: &str,
    instance: u64,
    token: &str,
) -> (Framed<TcpStream, FrameCodec>, Option<Message>) {
    let stream = TcpStream::connect(addr).await.expect("connect");
    let mut framed = Framed::new(stream, FrameCodec::default());
    framed
        .send(Message::Hello(Hello {
            instance,
            device_id: device.into(),
            model_id: MODEL_ID.into(),
            protocol_version: PROTOCOL_VERSION,
            auth_token: token.into(),
        }))
        .await
        .expect("hello");
    let first = next(&mut framed).await;
    (framed, first)
}

/// A TCP connection to `addr` from the loopback address `from` (`127.0.0.2`, ...): another
/// peer address on the same machine, as the server's per-address limits see it.
pub async fn connect_from(from: [u8; 4], addr: SocketAddr) -> std::io::Result<TcpStream> {
    let socket = tokio::net::TcpSocket::new_v4()?;
    socket.bind(SocketAddr::from((from, 0)))?;
    socket.connect(addr).await
}

/// The largest resident set this process has had, in MiB (0 where the platform does not say).
pub fn peak_rss_mib() -> u64 {
    collab_policies::shard::meter::peak_rss_bytes().map_or(0, |b| b >> 20)
}

/// A client config of `device` for the test server (its model and token).
pub fn client_config(device: &str) -> ClientConfig {
    ClientConfig {
        device_id: device.into(),
        model_id: MODEL_ID.into(),
        auth_token: TOKEN.into(),
        ..ClientConfig::default()
    }
}

/// A device client over loopback TCP to `addr`, as `device`.
pub async fn client(addr: SocketAddr, device: &str) -> DeviceClient {
    let transport: Arc<dyn Transport> = Arc::new(Tcp::new(addr));
    DeviceClient::connect(transport, client_config(device))
        .await
        .expect("connect")
}

/// An `f32` activation request entering at `split`, with 20 s of server budget.
pub fn request(payload: Vec<u8>, split: u32) -> Outgoing {
    Outgoing {
        split,
        codec: "f32".parse().expect("codec id"),
        payload,
        budget: Duration::from_secs(20),
        max_loss: 0.0,
        meta: None,
    }
}

/// The next message other than a ServerLoad push; `None` at a clean close, error or 5 s.
pub async fn next(framed: &mut Framed<TcpStream, FrameCodec>) -> Option<Message> {
    loop {
        match tokio::time::timeout(Duration::from_secs(5), framed.next()).await {
            Ok(Some(Ok(Message::ServerLoad(_)))) => continue,
            Ok(Some(Ok(m))) => return Some(m),
            _ => return None,
        }
    }
}
