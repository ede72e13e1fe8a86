//! [`Device`] on a tiny seeded ViT against a fake server that finishes the model for real:
//! the split it picks, what it sends, and that the answer is the whole model's.

use std::sync::Arc;
use std::time::Duration;

use collab_backends::candle::CandleBackend;
use collab_core::Backend;
use collab_core::input::ImagePreprocess;
use collab_core::model::{Input, Transformer};
use collab_core::split::ActivationCodec;
use collab_policies::codec::CodecRegistry;
use collab_policies::split::{DeviceDefault, device_default};
use collab_policies::svd::{PlainCodec, Precision};
use futures_util::{SinkExt, StreamExt};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio::sync::mpsc;

use super::super::head::run_head;
use super::*;
use crate::client::DeviceInput;
use crate::wire::validate::{Decoded, ModelFacts, check_and_decode};

const SIDE: usize = crate::testing::TINY_SIDE;
const TOKENS: usize = crate::testing::TINY_TOKENS;
const FEATURES: usize = crate::testing::TINY_FEATURES;
const LAYERS: usize = crate::testing::TINY_LAYERS;

type Model = Arc<Transformer<CandleBackend>>;

fn tiny_model() -> Model {
    Arc::new(crate::testing::tiny_vit(5).expect("tiny model"))
}

fn selector(device_stage_s: f64) -> DeviceDefault {
    let selector = crate::testing::tiny_selector(device_stage_s, vec![]).expect("selector");
    device_default(Arc::new(selector))
}

fn image(seed: u64) -> image::RgbImage {
    let mut rng = StdRng::seed_from_u64(seed);
    image::RgbImage::from_fn(40, 48, |_, _| {
        image::Rgb([rng.random(), rng.random(), rng.random()])
    })
}

fn logits(model: &Model, img: &image::RgbImage) -> Vec<f32> {
    let pre = ImagePreprocess::imagenet(SIDE as u32);
    let be = model.backend();
    let x = be.from_vec(pre.apply(img).expect("pre"), &[1, 3, SIDE, SIDE]);
    let out = model
        .forward(&Input::Images(x.expect("tensor")))
        .expect("forward");
    be.to_vec(&out).expect("logits")
}

/// Finishes a request as a server would: validate, decode, run the rest of the model.
fn finish(model: &Model, r: &InferRequest) -> Result<Prediction, RemoteError> {
    let facts = ModelFacts {
        model_id: "m".into(),
        layers: LAYERS,
        tokens: TOKENS,
        features: FEATURES,
        input: crate::wire::validate::InputFacts::Image { side: SIDE },
    };
    let be = model.backend();
    let failed = |e: collab_core::Error| RemoteError::Failed(e.to_string());
    let out = match check_and_decode(&facts, &CodecRegistry::builtin(), None, r.clone())? {
        Decoded::Pixels(p) => {
            let v = ImagePreprocess::imagenet(SIDE as u32)
                .normalize(&p)
                .map_err(failed)?;
            let x = be.from_vec(v, &[1, 3, SIDE, SIDE]).map_err(failed)?;
            model.forward(&Input::Images(x)).map_err(failed)?
        }
        Decoded::Hidden(host) => {
            let h = host.to_backend(be).map_err(failed)?;
            let h = model.run_blocks(h, r.split as usize..LAYERS);
            model.head(&h.map_err(failed)?).map_err(failed)?
        }
        Decoded::Tokens(_) => return Err(RemoteError::Invalid("tokens for a ViT".into())),
    };
    Ok(Prediction {
        top: top_k(&be.to_vec(&out).map_err(failed)?, 5),
        embedding: vec![],
        server_ms: 2.0,
        batch: 2,
    })
}

/// Serves requests with the model (pushing `load` before each answer) and pings; reports
/// each request on `seen`.
async fn model_server(
    mut conn: ServerConn,
    model: Model,
    load: Option<ServerLoad>,
    seen: mpsc::UnboundedSender<InferRequest>,
) {
    while let Some(Ok(m)) = conn.next().await {
        let reply = match m {
            Message::Ping(p) => Message::Pong(Pong { nonce: p.nonce }),
            Message::InferRequest(r) => {
                if let Some(l) = &load {
                    let _ = conn.send(Message::ServerLoad(l.clone())).await;
                }
                let outcome = finish(&model, &r);
                let _ = seen.send(r.clone());
                Message::InferResponse(InferResponse {
                    request_id: r.request_id,
                    outcome,
                })
            }
            _ => continue,
        };
        if conn.send(reply).await.is_err() {
            return;
        }
    }
}

/// A device with `device_stage_s` seconds per stage and `deadline`, and its server.
async fn device(
    model: &Model,
    device_stage_s: f64,
    deadline: Duration,
    load: Option<ServerLoad>,
) -> (Device<CandleBackend>, mpsc::UnboundedReceiver<InferRequest>) {
    let (client, conn, acceptor) = session().await;
    let (tx, rx) = mpsc::unbounded_channel();
    let served = model.clone();
    tokio::spawn(async move {
        let _keep = acceptor;
        model_server(conn, served, load, tx).await;
    });
    let config = DeviceConfig {
        deadline,
        probe_bytes: 1024,
        ..DeviceConfig::default()
    };
    (
        Device::new(model.clone(), selector(device_stage_s), client, config),
        rx,
    )
}

fn argmax(logits: &[f32]) -> u32 {
    top_k(logits, 1)[0].0
}

#[tokio::test]
async fn a_fast_device_runs_most_blocks_and_gets_the_whole_models_answer() {
    let model = tiny_model();
    let (device, mut seen) = device(&model, 0.001, Duration::from_secs(5), None).await;
    for seed in 0..3 {
        let img = image(seed);
        let c = device.classify(&img).await.expect("classified");
        // Most blocks on the device: L - 1 (device-only is off), uncompressed (no table).
        assert_eq!((c.split, c.codec.to_string().as_str()), (LAYERS - 1, "f32"));
        let f32_len = PlainCodec {
            precision: Precision::F32,
        }
        .encoded_len(TOKENS, FEATURES);
        assert_eq!(c.bytes, f32_len);
        assert_eq!(c.top[0].0, argmax(&logits(&model, &img)), "seed {seed}");
        assert_eq!((c.server_ms, c.batch), (2.0, 2));
        assert!(c.total_ms >= c.device_ms && c.device_ms > 0.0, "{c:?}");
        let r = seen.recv().await.expect("request");
        assert_eq!(
            (r.split as usize, r.codec.to_string().as_str()),
            (LAYERS - 1, "f32")
        );
        assert!(
            (4000..=5000).contains(&r.budget_ms),
            "budget {}",
            r.budget_ms
        );
        assert_eq!(r.max_loss, 0.02);
    }
}

#[tokio::test]
async fn a_slow_device_sends_the_cropped_image() {
    let model = tiny_model();
    let (device, mut seen) = device(&model, 10.0, Duration::from_secs(1), None).await;
    let img = image(7);
    let c = device.classify(&img).await.expect("classified");
    assert_eq!(
        (c.split, c.codec.to_string().as_str(), c.bytes),
        (0, "raw", 3 * SIDE * SIDE)
    );
    assert_eq!(c.top[0].0, argmax(&logits(&model, &img)));
    let r = seen.recv().await.expect("request");
    assert_eq!(
        (r.split, r.codec.to_string().as_str()),
        (0, crate::wire::RAW_RGB8)
    );
}

#[tokio::test]
async fn the_servers_load_moves_the_split() {
    let model = tiny_model();
    // 1000 requests queued at the start, 1 ms per position: 4 s of passes over batches of 2.
    let heavy = ServerLoad {
        queues: vec![1000, 0, 0, 0],
        position_ms: vec![1.0; 4],
        in_flight: 1000,
        capacity: 2000,
    };
    let (device, _seen) = device(&model, 0.01, Duration::from_millis(500), Some(heavy)).await;
    let first = device.classify(&image(1)).await.expect("first");
    assert_eq!(first.split, LAYERS - 1);
    assert!(device.client().server_load().is_some());
    // Nothing meets the deadline any more: the device falls back to the fastest choice,
    // which for this slow device is to send the image.
    let second = device.classify(&image(2)).await.expect("second");
    assert_eq!(
        (second.split, second.codec.to_string().as_str()),
        (0, "raw")
    );
}

#[tokio::test]
async fn no_time_left_is_a_deadline_miss_without_sending() {
    let model = tiny_model();
    let (device, mut seen) = device(&model, 0.001, Duration::from_micros(1), None).await;
    let r = device.classify(&image(3)).await;
    assert_eq!(
        r,
        Err(ClientError::Remote(RemoteError::DeadlineMissed {
            budget_ms: 0
        }))
    );
    assert!(seen.try_recv().is_err(), "nothing was sent");
}

#[test]
fn the_head_part_does_what_each_plan_says() {
    let model = tiny_model();
    let be = model.backend();
    let img = image(11);
    let reference = logits(&model, &img);

    let codecs = CodecRegistry::builtin();
    let local = run_head(
        &model,
        &DeviceInput::Image(img.clone()),
        &Plan::DeviceOnly,
        &codecs,
        None,
        None,
    )
    .expect("device-only");
    assert_eq!(local.top, top_k(&reference, 5));
    assert!(local.payload.is_empty());

    let raw = run_head(
        &model,
        &DeviceInput::Image(img.clone()),
        &Plan::ServerOnly,
        &codecs,
        None,
        None,
    )
    .expect("server-only");
    let crop = ImagePreprocess::imagenet(SIDE as u32)
        .crop_rgb(&img)
        .expect("crop");
    assert_eq!(raw.payload, crop.into_raw());

    let pre = ImagePreprocess::imagenet(SIDE as u32);
    let x = be
        .from_vec(pre.apply(&img).expect("pre"), &[1, 3, SIDE, SIDE])
        .expect("x");
    let h = model.run_blocks(model.embed(&Input::Images(x)).expect("embed"), 0..2);
    let want = be.to_vec(&h.expect("blocks").x).expect("values");
    let context = collab_policies::codec::CodecContext {
        split: 2,
        bases: None,
    };
    for name in ["f32", "int8", "svd-int8-r4"] {
        let codec: collab_core::split::CodecId = name.parse().expect("id");
        let plan = Plan::Split {
            split: 2,
            codec: codec.clone(),
        };
        let out = run_head(
            &model,
            &DeviceInput::Image(img.clone()),
            &plan,
            &codecs,
            None,
            None,
        )
        .expect("split");
        let decoder = codecs.build(&codec, &context).expect("codec");
        let act = decoder.decode(&out.payload).expect("decodes");
        assert_eq!((act.tokens, act.features), (TOKENS, FEATURES));
        if name == "f32" {
            assert_eq!(act.values, want);
        }
    }
    assert!(matches!(
        run_head(
            &model,
            &DeviceInput::Image(image::RgbImage::new(0, 0)),
            &Plan::ServerOnly,
            &codecs,
            None,
            None
        ),
        Err(ClientError::Local(_))
    ));
}
