//! The server over in-process pipes, driven by a minimal hand-written framed client: the
//! handshake and its refusals, answers equal to the whole model's, refusals that keep the
//! session, overload, graceful shutdown and kill, stalls and limits, health and metrics.

mod http;
mod lifecycle;
mod protocol;

use std::sync::Arc;
use std::time::Duration;

use collab_backends::candle::CandleBackend;
use collab_core::Backend;
use collab_core::input::ImagePreprocess;
use collab_core::model::{Input, Transformer};
use collab_core::split::{Activation, ActivationCodec};
use collab_policies::svd::{PlainCodec, Precision};
use futures_util::{SinkExt, StreamExt};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio_util::codec::Framed;

use super::{Server, ServerConfig, ServerHandle};
use crate::transport::{BoxStream, InProcess, Transport, in_process};
use crate::wire::{
    FrameCodec, Hello, InferRequest, InferResponse, Message, PROTOCOL_VERSION, Prediction,
    RAW_RGB8, RemoteError, Welcome,
};

pub(super) const SIDE: usize = crate::testing::TINY_SIDE;
pub(super) const MODEL_ID: &str = "tiny-vit";
pub(super) const TOKEN: &str = "s3cret";

pub(super) type Conn = Framed<BoxStream, FrameCodec>;

/// A 3-block ViT on 32 x 32 images (17 tokens of 32 features, 10 classes), seeded weights.
pub(super) fn tiny_model(seed: u64) -> Arc<Transformer<CandleBackend>> {
    Arc::new(crate::testing::tiny_vit(seed).expect("tiny model"))
}

pub(super) fn config() -> ServerConfig {
    ServerConfig {
        model_id: MODEL_ID.into(),
        auth_token: TOKEN.into(),
        ..ServerConfig::default()
    }
}

/// A server on in-process pipes, with the transport to reach it.
pub(super) struct Fixture {
    pub(super) model: Arc<Transformer<CandleBackend>>,
    pub(super) transport: InProcess,
    pub(super) server: ServerHandle,
}

pub(super) fn start(config: ServerConfig) -> Fixture {
    let model = tiny_model(7);
    let (transport, acceptor) = in_process();
    let server = Server::start(model.clone(), config, acceptor).expect("server starts");
    Fixture {
        model,
        transport,
        server,
    }
}

pub(super) async fn connect(transport: &InProcess) -> Conn {
    let stream = transport.connect().await.expect("connect");
    Framed::new(stream, FrameCodec::default())
}

pub(super) fn hello(device: &str) -> Hello {
    Hello {
        instance: 7,
        device_id: device.into(),
        model_id: MODEL_ID.into(),
        protocol_version: PROTOCOL_VERSION,
        auth_token: TOKEN.into(),
    }
}

/// A connection after a successful handshake, with the Welcome.
pub(super) async fn session(transport: &InProcess, device: &str) -> (Conn, Welcome) {
    let mut conn = connect(transport).await;
    send(&mut conn, Message::Hello(hello(device))).await;
    match recv(&mut conn).await {
        Some(Message::Welcome(w)) => (conn, w),
        other => panic!("expected Welcome, got {other:?}"),
    }
}

pub(super) async fn send(conn: &mut Conn, message: Message) {
    conn.send(message).await.expect("send");
}

/// The next message other than a ServerLoad push; `None` at a close, an error, or 10 s.
pub(super) async fn recv(conn: &mut Conn) -> Option<Message> {
    loop {
        match tokio::time::timeout(Duration::from_secs(10), conn.next()).await {
            Ok(Some(Ok(Message::ServerLoad(_)))) => continue,
            Ok(Some(Ok(m))) => return Some(m),
            _ => return None,
        }
    }
}

/// The next InferResponse (panics on anything else).
pub(super) async fn response(conn: &mut Conn) -> InferResponse {
    match recv(conn).await {
        Some(Message::InferResponse(r)) => r,
        other => panic!("expected an InferResponse, got {other:?}"),
    }
}

pub(super) fn request(id: u64, split: u32, codec: &str, payload: Vec<u8>) -> Message {
    Message::InferRequest(InferRequest {
        request_id: id,
        split,
        codec: codec.parse().expect("codec id"),
        payload,
        budget_ms: 30_000,
        max_loss: 0.0,
        meta: None,
    })
}

/// Random 8-bit pixels of one image.
pub(super) fn pixels(seed: u64) -> Vec<u8> {
    let mut rng = StdRng::seed_from_u64(seed);
    (0..3 * SIDE * SIDE).map(|_| rng.random()).collect()
}

fn input(model: &Transformer<CandleBackend>, rgb: &[u8]) -> Input<CandleBackend> {
    let values = ImagePreprocess::imagenet(SIDE as u32)
        .normalize(rgb)
        .expect("normalize");
    let x = model
        .backend()
        .from_vec(values, &[1, 3, SIDE, SIDE])
        .expect("tensor");
    Input::Images(x)
}

/// The whole model's logits for `rgb`.
pub(super) fn reference(model: &Transformer<CandleBackend>, rgb: &[u8]) -> Vec<f32> {
    let out = model.forward(&input(model, rgb)).expect("forward");
    model.backend().to_vec(&out).expect("logits")
}

/// The `f32`-encoded activation of `rgb` after blocks `0..split`.
pub(super) fn activation(model: &Transformer<CandleBackend>, rgb: &[u8], split: usize) -> Vec<u8> {
    let be = model.backend();
    let h = model.embed(&input(model, rgb)).expect("embed");
    let h = model.run_blocks(h, 0..split).expect("blocks");
    let (_, n, d) = h.dims3(be).expect("dims");
    let act = Activation::new(n, d, be.to_vec(&h.x).expect("values")).expect("activation");
    PlainCodec {
        precision: Precision::F32,
    }
    .encode(&act)
    .expect("encode")
}

/// Checks a prediction against the reference logits: the top-5 classes in order, with
/// their logits to 1e-4.
pub(super) fn assert_matches(p: &Prediction, logits: &[f32]) {
    let mut want: Vec<(u32, f32)> = logits
        .iter()
        .enumerate()
        .map(|(i, &l)| (i as u32, l))
        .collect();
    want.sort_by(|a, b| b.1.total_cmp(&a.1));
    want.truncate(5);
    assert_eq!(p.top.len(), 5, "{p:?}");
    for (got, want) in p.top.iter().zip(&want) {
        assert_eq!(got.0, want.0, "classes differ: {p:?} vs {want:?}");
        assert!(
            (got.1 - want.1).abs() < 1e-4,
            "logits differ: {p:?} vs {want:?}"
        );
    }
    assert!(p.batch >= 1);
}

/// Whether the server side has closed: the stream ends (after any number of pushes).
pub(super) async fn closed(conn: &mut Conn) -> bool {
    recv(conn).await.is_none()
}

/// The RAW_RGB8 codec name, re-exported for the test modules.
pub(super) const RGB8: &str = RAW_RGB8;

/// A refusal's error, or a panic.
pub(super) fn refusal(r: &InferResponse) -> &RemoteError {
    match &r.outcome {
        Err(e) => e,
        Ok(p) => panic!("expected a refusal, got {p:?}"),
    }
}
