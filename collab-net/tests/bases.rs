//! The calibrated codecs over real loopback TCP: a device and a server that load the same
//! [`SplitBases`] serve `mpca` and `cpca`; a server without them, or with others, answers an
//! explicit `Invalid` and keeps serving; bases that do not fit the model stop the start.

mod common;

use collab_net::testing::tiny_selector;
use std::sync::Arc;
use std::time::Duration;

use collab_backends::candle::CandleBackend;
use collab_core::Backend;
use collab_core::input::ImagePreprocess;
use collab_core::model::{Input, Transformer};
use collab_core::split::{Activation, ActivationCodec};
use collab_net::client::{ClientError, Device, DeviceClient, DeviceConfig, Outgoing};
use collab_net::server::{Server, ServerError};
use collab_net::transport::TcpAcceptor;
use collab_net::wire::RemoteError;
use collab_policies::split::{AccuracyEntry, DeviceDefault, device_default};
use collab_policies::svd::{Family, PlainCodec, Precision, SplitBases, SplitBasis};
use common::*;

const FEATURES: usize = collab_net::testing::TINY_FEATURES;
const TOKENS: usize = collab_net::testing::TINY_TOKENS;

/// The activation of image `seed` after blocks `0..split`.
fn activation(model: &Transformer<CandleBackend>, seed: u64, split: usize) -> Activation {
    let (payload, _) = activation_payload(model, seed, split);
    PlainCodec {
        precision: Precision::F32,
    }
    .decode(&payload)
    .expect("f32 payload")
}

/// Bases fitted on images `first..first + 12` at splits 1 and 2.
fn bases(model: &Transformer<CandleBackend>, first: u64) -> SplitBases {
    let mut bases = SplitBases::new(MODEL_ID);
    for split in [1, 2] {
        let items: Vec<Activation> = (first..first + 12)
            .map(|seed| activation(model, seed, split))
            .collect();
        let basis = SplitBasis::fit(&items, &format!("block {split}")).expect("fit");
        bases.insert(split, basis).expect("insert");
    }
    bases
}

fn request(split: u32, codec: &str, payload: Vec<u8>) -> Outgoing {
    Outgoing {
        split,
        codec: codec.parse().expect("codec id"),
        payload,
        budget: Duration::from_secs(20),
        max_loss: 0.0,
        meta: None,
    }
}

/// A selector whose table offers full-rank `mpca` at split 2 for fewer bytes than `f32`, as
/// a device runs it.
fn selector() -> DeviceDefault {
    let entry = AccuracyEntry {
        split: 2,
        codec: "mpca".into(),
        rank: FEATURES,
        bytes: 100.0,
        rho: 0.99,
        loss: 0.0,
        agreement: 1.0,
        encode_s: 0.0,
        decode_s: 0.0,
    };
    device_default(Arc::new(
        tiny_selector(0.001, vec![entry]).expect("selector"),
    ))
}

fn image(seed: u64) -> image::RgbImage {
    let pixels = pixels(seed);
    image::RgbImage::from_raw(SIDE as u32, SIDE as u32, pixels).expect("image")
}

fn whole_model_class(model: &Transformer<CandleBackend>, img: &image::RgbImage) -> u32 {
    let be = model.backend();
    let pre = ImagePreprocess::imagenet(SIDE as u32);
    let x = be
        .from_vec(pre.apply(img).expect("pre"), &[1, 3, SIDE, SIDE])
        .expect("tensor");
    let logits = be
        .to_vec(&model.forward(&Input::Images(x)).expect("forward"))
        .expect("logits");
    argmax(&logits)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_and_a_server_sharing_bases_serve_the_calibrated_codecs() {
    let model = tiny_model();
    let shared = Arc::new(bases(&model, 1000));
    let config = collab_net::server::ServerConfig {
        bases: Some(shared.clone()),
        ..config()
    };
    let (server, addr) = start(&model, config, None).await;

    // The device's selector picks the table's `mpca` entry; the device encodes it with the
    // bases and the server decodes it with its own copy.
    let device_config = DeviceConfig {
        deadline: Duration::from_secs(5),
        probe_bytes: 1024,
        bases: Some(shared.clone()),
        ..DeviceConfig::default()
    };
    let device = Device::new(
        model.clone(),
        selector(),
        client(addr, "phone").await,
        device_config,
    );
    for seed in 0..3 {
        let img = image(seed);
        let c = device.classify(&img).await.expect("classified");
        assert_eq!(
            (c.split, c.codec.to_string().as_str()),
            (2, "mpca-r32"),
            "{c:?}"
        );
        assert_eq!(c.top[0].0, whole_model_class(&model, &img), "seed {seed}");
    }

    // Low-rank payloads of several calibrated codecs are decoded too, at both splits.
    let c = client(addr, "raw").await;
    for (split, family, rank) in [
        (1, Family::CentredPca(Precision::F32), FEATURES),
        (2, Family::CentredPca(Precision::Int8), 8),
        (1, Family::MaskedPca, 6),
        (2, Family::TransformPca, 8),
        (1, Family::HybridSvd(Precision::F32), 4),
    ] {
        let codec = family
            .build_with(rank, shared.shared(split, family).expect("held"))
            .expect("codec");
        let (_, logits) = activation_payload(&model, 77, split);
        let payload = codec
            .encode(&activation(&model, 77, split))
            .expect("encode");
        let p = c
            .infer(
                request(split as u32, &format!("{family}-r{rank}"), payload),
                Duration::from_secs(30),
            )
            .await
            .unwrap_or_else(|e| panic!("{family} at split {split}: {e}"));
        if rank == FEATURES {
            // Full-rank cpca is lossless up to rounding: the whole model's answer.
            let (class, logit) = p.top[0];
            assert_eq!(class, argmax(&logits));
            assert!((logit - logits[class as usize]).abs() < 1e-3);
        }
    }
    let stats = server.shutdown().await;
    assert_eq!(stats.done, 8, "{stats:?}");
}

/// The `Invalid` message of a refused request.
async fn refused(c: &DeviceClient, split: u32, codec: &str, payload: Vec<u8>) -> String {
    match c
        .infer(request(split, codec, payload), Duration::from_secs(30))
        .await
    {
        Err(ClientError::Remote(RemoteError::Invalid(m))) => m,
        other => panic!("expected Invalid, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_the_devices_bases_a_server_refuses_and_keeps_serving() {
    let model = tiny_model();
    let device_bases = bases(&model, 1000);
    let cpca = Family::CentredPca(Precision::F32);
    let codec = cpca
        .build_with(8, device_bases.shared(1, cpca).expect("held"))
        .expect("codec");
    let payload = codec.encode(&activation(&model, 5, 1)).expect("encode");

    let (server, addr) = start(&model, config(), None).await;
    let c = client(addr, "phone").await;
    let m = refused(&c, 1, "cpca-r8", payload.clone()).await;
    assert!(m.contains("no bases are loaded"), "{m}");
    let (f32_payload, logits) = activation_payload(&model, 5, 1);
    let p = c
        .infer(
            request(1, "f32", f32_payload.clone()),
            Duration::from_secs(30),
        )
        .await
        .expect("f32 still served");
    assert_eq!(p.top[0].0, argmax(&logits));
    let stats = server.shutdown().await;
    assert_eq!((stats.done, stats.invalid), (1, 1), "{stats:?}");

    // Bases fitted on other images: the payload's fingerprint is not the server's.
    let config = collab_net::server::ServerConfig {
        bases: Some(Arc::new(bases(&model, 2000))),
        ..config()
    };
    let (server, addr) = start(&model, config, None).await;
    let c = client(addr, "phone").await;
    let m = refused(&c, 1, "cpca-r8", payload).await;
    assert!(m.contains("basis"), "{m}");
    c.infer(request(1, "f32", f32_payload), Duration::from_secs(30))
        .await
        .expect("f32 still served");
    let stats = server.shutdown().await;
    assert_eq!((stats.done, stats.invalid), (1, 1), "{stats:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bases_that_do_not_fit_the_model_stop_the_start() {
    let model = tiny_model();
    let start_with = |bases: SplitBases| {
        let model = model.clone();
        async move {
            let acceptor = TcpAcceptor::bind(std::net::SocketAddr::from(([127, 0, 0, 1], 0)))
                .await
                .expect("bind");
            let config = collab_net::server::ServerConfig {
                bases: Some(Arc::new(bases)),
                ..config()
            };
            match Server::start(model, config, acceptor) {
                Err(ServerError::Config(m)) => m,
                other => panic!("expected a config error, got {other:?}"),
            }
        }
    };
    // A split point where the device runs the whole model.
    let mut last = SplitBases::new(MODEL_ID);
    let items: Vec<Activation> = (0..6).map(|s| activation(&model, s, 3)).collect();
    last.insert(3, SplitBasis::fit(&items, "block 3").expect("fit"))
        .expect("insert");
    let m = start_with(last).await;
    assert!(m.contains("split 3"), "{m}");
    // Another feature width.
    let mut wide = SplitBases::new("other");
    let items: Vec<Activation> = (0..6)
        .map(|s| {
            let values = (0..TOKENS * 48)
                .map(|i| ((i as u64 * 31 + s) % 13) as f32)
                .collect();
            Activation::new(TOKENS, 48, values).expect("activation")
        })
        .collect();
    wide.insert(1, SplitBasis::fit(&items, "block 1").expect("fit"))
        .expect("insert");
    let m = start_with(wide).await;
    assert!(m.contains("48 features"), "{m}");
}
