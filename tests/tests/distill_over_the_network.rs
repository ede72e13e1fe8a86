//! Personalised distillation over the real network (SPEC §6): a device uploads k-means
//! prototypes of its private samples' class probabilities over loopback TCP, the server's
//! `SelectiveDistillation` selects public samples and distils a copy of the base student, and
//! the device loads the returned checkpoint and serves with it locally.
//!
//! Every byte the device sends is recorded and decoded: the only payload is the upload, made of
//! prototypes each standing for at least the group size, none equal to a private sample's
//! vector, and no labels, images or features (no inference request at all).
//!
//! The models are tiny and seeded (what is tested is the protocol; `cargo xtask exp distill`
//! measures accuracy with DeiT-Tiny as the teacher), the data the real digits at 32 px.

use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use collab_backends::candle::CandleBackend;
use collab_core::distill::{Distiller, Personaliser, Upload, UploadKind};
use collab_core::fixtures;
use collab_core::model::weights::SeededRandom;
use collab_core::model::{EncoderConfig, ModelConfig, NormPlacement, Transformer, VitConfig};
use collab_net::client::{ClientConfig, ClientError, DeviceClient};
use collab_net::server::{Server, ServerConfig, ServerHandle};
use collab_net::transport::{BoxStream, Tcp, TcpAcceptor, Transport};
use collab_net::wire::{Message, RemoteError, decode_frame};
use collab_policies::distill::train::{
    FusionHead, class_token_features, distil, outputs, probabilities,
};
use collab_policies::distill::{PrototypeSelection, SelectiveDistillation, SimilaritySelection};
use collab_policies::token::tasks::{LabelledImages, digit_image};
use collab_policies::train::{TrainConfig, TrainableModel};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

const PUBLIC: usize = 160;
const PRIVATE: usize = 24;
const GROUP: usize = 3;

/// A transport whose streams copy every byte the device writes into `sent`.
#[derive(Debug)]
struct Recording {
    inner: Tcp,
    sent: Arc<Mutex<Vec<u8>>>,
}

struct Tee {
    inner: BoxStream,
    sent: Arc<Mutex<Vec<u8>>>,
}

impl AsyncRead for Tee {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for Tee {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = &polled {
            self.sent
                .lock()
                .expect("lock")
                .extend_from_slice(&buf[..*n]);
        }
        polled
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

type Connecting<'a> = Pin<Box<dyn std::future::Future<Output = io::Result<BoxStream>> + Send + 'a>>;

impl Transport for Recording {
    fn connect(&self) -> Connecting<'_> {
        Box::pin(async move {
            let inner = self.inner.connect().await?;
            let tee: BoxStream = Box::new(Tee {
                inner,
                sent: self.sent.clone(),
            });
            Ok(tee)
        })
    }

    fn describe(&self) -> String {
        format!("recording {}", self.inner.describe())
    }
}

/// The messages in a recorded byte stream, frame by frame.
fn frames(bytes: &[u8]) -> Vec<Message> {
    let mut out = vec![];
    let mut rest = bytes;
    while rest.len() >= 4 {
        let len = u32::from_be_bytes([rest[0], rest[1], rest[2], rest[3]]) as usize;
        if rest.len() < 4 + len {
            break;
        }
        out.push(decode_frame(&rest[..4 + len]).expect("a frame the device sent"));
        rest = &rest[4 + len..];
    }
    out
}

/// A personaliser that takes at least `.1` before delegating (a test aid: it keeps a slot
/// busy long enough to see the limit on concurrent personalisations).
#[derive(Debug)]
struct Slow(Arc<dyn Personaliser>, Duration);

impl Personaliser for Slow {
    fn name(&self) -> String {
        format!("slow {}", self.0.name())
    }

    fn personalise(&self, upload: &Upload) -> collab_core::Result<Vec<u8>> {
        std::thread::sleep(self.1);
        self.0.personalise(upload)
    }
}

fn student_config() -> ModelConfig {
    ModelConfig::Vit(VitConfig {
        encoder: EncoderConfig {
            hidden: 16,
            layers: 1,
            heads: 2,
            intermediate: 32,
            layer_norm_eps: 1e-6,
            norm: NormPlacement::Pre,
        },
        image_size: 32,
        patch_size: 8,
        channels: 3,
        num_classes: collab_net::testing::TINY_FEATURES,
    })
}

fn cfg(epochs: usize) -> TrainConfig {
    TrainConfig {
        epochs,
        batch: 16,
        lr: 5e-3,
        weight_decay: 0.0,
        seed: 4,
        progress: false,
    }
}

/// The cloud's and the device's parts.
struct World {
    private: LabelledImages,
    head: FusionHead,
    base: Transformer<CandleBackend>,
    service: Arc<dyn Personaliser>,
}

fn world(distiller: Box<dyn Distiller>) -> World {
    let digits = fixtures::digits().expect("digits fixture");
    let data = LabelledImages {
        name: "digits".into(),
        classes: 10,
        images: digits
            .iter()
            .take(PUBLIC + PRIVATE)
            .map(|d| digit_image(&d.pixels))
            .collect(),
        labels: digits
            .iter()
            .take(PUBLIC + PRIVATE)
            .map(|d| d.label)
            .collect(),
    }
    .downsampled(7)
    .expect("32 px");
    let public = data.subset(&(0..PUBLIC).collect::<Vec<_>>());
    let private = data.subset(&(PUBLIC..PUBLIC + PRIVATE).collect::<Vec<_>>());
    let teacher = collab_net::testing::tiny_vit(1).expect("teacher");
    let all: Vec<usize> = (0..PUBLIC).collect();
    let targets = class_token_features(&teacher, &public, &all, 32).expect("features");
    let head = FusionHead::fit(&targets, &public.labels, 10, &cfg(20)).expect("head");
    let probs = probabilities(&head, &targets).expect("probabilities");
    let trainable = TrainableModel::new(
        Transformer::new(
            CandleBackend::differentiable(),
            student_config(),
            &SeededRandom::new(2),
        )
        .expect("student"),
    )
    .expect("trainable");
    distil(&trainable, &public, &targets, &all, &cfg(2), "all").expect("all-distill");
    let base = trainable.snapshot(CandleBackend::cpu()).expect("snapshot");
    let service = SelectiveDistillation::new(
        distiller,
        trainable.model().clone(),
        public.clone(),
        targets,
        probs,
        cfg(3),
    )
    .expect("service");
    World {
        private,
        head,
        base,
        service: Arc::new(service),
    }
}

async fn serve(
    personaliser: Option<Arc<dyn Personaliser>>,
) -> (ServerHandle, std::net::SocketAddr) {
    let acceptor = TcpAcceptor::bind(std::net::SocketAddr::from(([127, 0, 0, 1], 0)))
        .await
        .expect("bind");
    let addr = acceptor.local_addr().expect("addr");
    let model = Arc::new(collab_net::testing::tiny_vit(9).expect("served model"));
    let config = ServerConfig {
        model_id: "tiny".into(),
        personaliser,
        ..ServerConfig::default()
    };
    (
        Server::start(model, config, acceptor).expect("server"),
        addr,
    )
}

async fn connect(transport: Arc<dyn Transport>) -> DeviceClient {
    let config = ClientConfig {
        model_id: "tiny".into(),
        ..ClientConfig::default()
    };
    DeviceClient::connect(transport, config)
        .await
        .expect("connect")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_prototypes_cross_the_wire_and_the_device_serves_the_student_it_gets_back() {
    let w = world(Box::new(PrototypeSelection {
        per_sample: 2,
        group_size: GROUP,
    }));
    let (server, addr) = serve(Some(w.service.clone())).await;
    let sent = Arc::new(Mutex::new(Vec::new()));
    let client = connect(Arc::new(Recording {
        inner: Tcp::new(addr),
        sent: sent.clone(),
    }))
    .await;

    // Device side: its student's features of its private images, through the fusion head.
    let idx: Vec<usize> = (0..PRIVATE).collect();
    let private_probs = probabilities(
        &w.head,
        &outputs(&w.base, &w.private, &idx, 32).expect("features"),
    )
    .expect("probabilities");
    let distiller = PrototypeSelection {
        per_sample: 2,
        group_size: GROUP,
    };
    let upload = distiller.upload(&private_probs, 5).expect("upload");
    let bytes = client
        .personalise(upload.clone(), Duration::from_secs(120))
        .await
        .expect("a personalised student");

    // The device serves with what came back: a student of the same shape, trained further.
    let student =
        Transformer::from_safetensors_bytes(CandleBackend::cpu(), student_config(), bytes)
            .expect("the checkpoint loads");
    let after = outputs(&student, &w.private, &idx, 32).expect("serve");
    let before = outputs(&w.base, &w.private, &idx, 32).expect("base");
    assert_eq!(after.len(), PRIVATE);
    assert!(
        after
            .iter()
            .flatten()
            .zip(before.iter().flatten())
            .any(|(a, b)| (a - b).abs() > 1e-4),
        "the returned student was distilled further"
    );
    for f in &after {
        w.head.predict(f).expect("a class for every private image");
    }

    // What crossed the wire.
    client.close().await;
    server.shutdown().await;
    let messages = frames(&sent.lock().expect("lock"));
    let kinds: Vec<&str> = messages.iter().map(Message::kind).collect();
    assert!(
        kinds
            .iter()
            .all(|k| ["Hello", "PersonaliseRequest", "Pong", "Goodbye"].contains(k)),
        "the device sent only its handshake and the upload: {kinds:?}"
    );
    let uploads: Vec<&Upload> = messages
        .iter()
        .filter_map(|m| match m {
            Message::PersonaliseRequest(r) => Some(&r.upload),
            _ => None,
        })
        .collect();
    assert_eq!(uploads.len(), 1, "{kinds:?}");
    let sent_upload = uploads[0];
    assert_eq!(sent_upload, &upload);
    assert_eq!(
        sent_upload.kind,
        UploadKind::Prototypes { group_size: GROUP }
    );
    assert_eq!(
        sent_upload.samples(),
        PRIVATE,
        "every private sample, in groups"
    );
    assert!(sent_upload.vectors.len() <= PRIVATE / GROUP);
    assert!(
        sent_upload.members.iter().all(|&m| m >= GROUP),
        "{:?}",
        sent_upload.members
    );
    for v in &sent_upload.vectors {
        assert!(
            private_probs
                .iter()
                .all(|p| p.iter().zip(v).any(|(a, b)| (a - b).abs() > 1e-6)),
            "a prototype equals a private sample's vector"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_uploads_busy_and_absent_personalisers_get_typed_refusals() {
    let w = world(Box::new(PrototypeSelection {
        per_sample: 2,
        group_size: GROUP,
    }));
    let upload_of = |d: &dyn Distiller| {
        let p = vec![vec![0.1f32; 10]; 9];
        d.upload(&p, 1).expect("upload")
    };
    let prototypes = upload_of(&PrototypeSelection {
        per_sample: 2,
        group_size: GROUP,
    });

    // A server without a personaliser.
    let (server, addr) = serve(None).await;
    let client = connect(Arc::new(Tcp::new(addr))).await;
    let e = client
        .personalise(prototypes.clone(), Duration::from_secs(30))
        .await
        .expect_err("no personaliser");
    assert!(
        matches!(&e, ClientError::Remote(RemoteError::Invalid(m)) if m.contains("does not personalise")),
        "{e}"
    );
    client.close().await;
    server.shutdown().await;

    let slow: Arc<dyn Personaliser> = Arc::new(Slow(w.service.clone(), Duration::from_millis(800)));
    let (server, addr) = serve(Some(slow)).await;
    let client = connect(Arc::new(Tcp::new(addr))).await;
    // Per-sample vectors for a prototype service: refused naming what it takes.
    let e = client
        .personalise(
            upload_of(&SimilaritySelection { per_sample: 2 }),
            Duration::from_secs(30),
        )
        .await
        .expect_err("wrong kind");
    assert!(
        matches!(&e, ClientError::Remote(RemoteError::Invalid(m)) if m.contains("prototypes")),
        "{e}"
    );
    // An upload that breaks its own invariants: refused before the personaliser sees it.
    let mut lying = prototypes.clone();
    lying.members = vec![1; lying.vectors.len()];
    let e = client
        .personalise(lying, Duration::from_secs(30))
        .await
        .expect_err("members below the group size");
    assert!(
        matches!(&e, ClientError::Remote(RemoteError::Invalid(m)) if m.contains("group size")),
        "{e}"
    );
    // Two at once with one slot: one is trained, the other told the server is busy.
    let (a, b) = tokio::join!(
        client.personalise(prototypes.clone(), Duration::from_secs(60)),
        client.personalise(prototypes.clone(), Duration::from_secs(60)),
    );
    let busy = [&a, &b]
        .iter()
        .filter(|r| matches!(r, Err(ClientError::Remote(RemoteError::Overloaded { .. }))))
        .count();
    assert_eq!(busy, 1, "{a:?} / {b:?}");
    assert!(a.is_ok() || b.is_ok(), "{a:?} / {b:?}");
    client.close().await;
    server.shutdown().await;
}
