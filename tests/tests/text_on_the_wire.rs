//! A sentence encoder on the wire: MiniLM served over real loopback TCP, split at several
//! blocks (and server-only, where the token ids cross), reproduces the unsplit model's STS-B
//! Spearman on 200 pairs within 0.002. Requests of different lengths run in one batch on the
//! server (padded and masked), with eight in flight at a time.

use std::sync::Arc;
use std::time::Duration;

use collab_backends::candle::CandleBackend;
use collab_core::model::{Input, Transformer};
use collab_core::stats::{cosine, spearman};
use collab_core::{Backend, fixtures};
use collab_net::client::{ClientConfig, Device, DeviceClient, DeviceConfig, DeviceInput};
use collab_net::server::{Server, ServerConfig};
use collab_net::transport::{Tcp, TcpAcceptor, Transport};
use collab_policies::split::FixedSplit;

const MODEL_ID: &str = "all_minilm_l6_v2";
const PAIRS: usize = 200;
const IN_FLIGHT: usize = 8;

/// Each sentence's embedding through a device splitting at `split` with `codec`.
async fn embed_split(
    model: &Arc<Transformer<CandleBackend>>,
    addr: std::net::SocketAddr,
    split: usize,
    codec: &str,
    sentences: &[Vec<u32>],
) -> Vec<Vec<f32>> {
    let transport: Arc<dyn Transport> = Arc::new(Tcp::new(addr));
    let client_config = ClientConfig {
        device_id: format!("split-{split}-{codec}"),
        model_id: MODEL_ID.into(),
        ..ClientConfig::default()
    };
    let client = DeviceClient::connect(transport, client_config)
        .await
        .expect("connect");
    let strategy =
        FixedSplit::new(split, codec.parse().expect("id"), model.num_blocks()).expect("split");
    let config = DeviceConfig {
        deadline: Duration::from_secs(120),
        ..DeviceConfig::default()
    };
    let device = Arc::new(Device::new(model.clone(), strategy, client, config));
    let mut out = vec![Vec::new(); sentences.len()];
    for (c, chunk) in sentences.chunks(IN_FLIGHT).enumerate() {
        let tasks: Vec<_> = chunk
            .iter()
            .map(|ids| {
                let (device, ids) = (device.clone(), ids.clone());
                tokio::spawn(async move { device.infer(DeviceInput::Tokens(ids)).await })
            })
            .collect();
        for (i, task) in tasks.into_iter().enumerate() {
            let answer = task.await.expect("task").expect("answered");
            assert_eq!(answer.split, split);
            assert!(answer.top.is_empty());
            out[c * IN_FLIGHT + i] = answer.embedding;
        }
    }
    out
}

fn pair_spearman(embeddings: &[Vec<f32>], gold: &[f64]) -> f64 {
    let cos: Vec<f64> = embeddings.chunks(2).map(|p| cosine(&p[0], &p[1])).collect();
    spearman(&cos, gold)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn minilm_split_over_tcp_keeps_the_unsplit_sts_b_spearman() {
    let (model, tokenizer) =
        fixtures::minilm(CandleBackend::cpu()).expect("MiniLM (run `cargo xtask fetch-models`)");
    let model = Arc::new(model);
    let pairs = fixtures::stsb_dev().expect("STS-B");
    let pairs = &pairs[..PAIRS];
    let gold: Vec<f64> = pairs.iter().map(|p| p.score).collect();
    let sentences: Vec<Vec<u32>> = pairs
        .iter()
        .flat_map(|p| [tokenizer.encode(&p.a), tokenizer.encode(&p.b)])
        .collect::<collab_core::Result<_>>()
        .expect("tokenised");

    let be = model.backend();
    let unsplit: Vec<Vec<f32>> = sentences
        .iter()
        .map(|ids| {
            let out = model
                .forward(&Input::Tokens(vec![ids.clone()]))
                .expect("forward");
            be.to_vec(&out).expect("embedding")
        })
        .collect();
    let reference = pair_spearman(&unsplit, &gold);

    let acceptor = TcpAcceptor::bind(std::net::SocketAddr::from(([127, 0, 0, 1], 0)))
        .await
        .expect("bind");
    let addr = acceptor.local_addr().expect("addr");
    let config = ServerConfig {
        model_id: MODEL_ID.into(),
        capacity: 4 * IN_FLIGHT,
        ..ServerConfig::default()
    };
    let server = Server::start(model.clone(), config, acceptor).expect("server");
    let mut runs = 0;
    for (split, codec) in [(0, "f32"), (2, "f32"), (4, "f32"), (5, "int8")] {
        let embeddings = embed_split(&model, addr, split, codec, &sentences).await;
        let rho = pair_spearman(&embeddings, &gold);
        println!("split {split} {codec}: spearman {rho:.4} (unsplit {reference:.4})");
        if codec == "f32" {
            assert!(
                (rho - reference).abs() <= 0.002,
                "split {split}: spearman {rho:.4} against the unsplit {reference:.4}"
            );
        }
        runs += 1;
    }
    let stats = server.shutdown().await;
    let requests = (runs * sentences.len()) as u64;
    println!("server: {stats:?}");
    assert_eq!(
        (stats.accepted, stats.done),
        (requests, requests),
        "{stats:?}"
    );
}
