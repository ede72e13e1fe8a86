//! The three ways of running the same load (see the module docs of `net_overhead`).

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use collab_backends::candle::CandleBackend;
use collab_core::batch::Outcome;
use collab_core::input::ImagePreprocess;
use collab_core::model::{Hidden, Input, Transformer};
use collab_core::split::{Activation, ActivationCodec};
use collab_core::{Backend, fixtures};
use collab_net::client::{ClientConfig, DeviceClient, Outgoing};
use collab_net::server::{Server, ServerConfig};
use collab_net::transport::{Tcp, TcpAcceptor, Transport, in_process};
use collab_policies::batch::{ModelExecutor, Payload, SharedModel, Worker};
use collab_policies::svd::{PlainCodec, Precision};

type B = CandleBackend;

/// How the load is served.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Mode {
    /// The batch worker on a thread, no network.
    Worker,
    /// Server and client over in-process pipes.
    Pipes,
    /// Server and client over loopback TCP.
    Tcp,
}

impl Mode {
    pub(super) const ALL: [Mode; 3] = [Mode::Worker, Mode::Pipes, Mode::Tcp];

    pub(super) fn name(self) -> &'static str {
        match self {
            Mode::Worker => "worker",
            Mode::Pipes => "pipes",
            Mode::Tcp => "tcp",
        }
    }
}

/// What one run measured.
#[derive(Clone, Copy, Debug)]
pub(super) struct Run {
    pub(super) rate: f64,
    pub(super) elapsed: Duration,
}

/// The load: one real activation at the split point, int8-encoded, sent `n` times with
/// `concurrency` outstanding.
#[derive(Debug)]
pub(super) struct Load {
    pub(super) model: Arc<Transformer<B>>,
    pub(super) split: usize,
    pub(super) payload: Vec<u8>,
    pub(super) concurrency: usize,
    pub(super) batch: usize,
}

impl Load {
    pub(super) fn new(
        model: Arc<Transformer<B>>,
        split: usize,
        _requests: usize,
        concurrency: usize,
        batch: usize,
    ) -> Result<Self> {
        if split == 0 || split > model.num_blocks() {
            bail!("--split must be in 1..={}", model.num_blocks());
        }
        let be = model.backend().clone();
        let sample = fixtures::imagenet_sample()?;
        let path = &sample.first().context("no sample images")?.path;
        let pixels = ImagePreprocess::imagenet(224).load(path)?;
        let x = be.from_vec(pixels, &[1, 3, 224, 224])?;
        let h = model.run_blocks(model.embed(&Input::Images(x))?, 0..split)?;
        let (_, n, d) = h.dims3(&be)?;
        let act = Activation::new(n, d, be.to_vec(&h.x)?)?;
        let payload = codec().encode(&act)?;
        Ok(Self {
            model,
            split,
            payload,
            concurrency: concurrency.max(1),
            batch: batch.max(1),
        })
    }

    pub(super) fn payload_len(&self) -> usize {
        self.payload.len()
    }

    /// Serves `n` requests in `mode`.
    pub(super) async fn run(&self, mode: Mode, n: usize) -> Result<Run> {
        match mode {
            Mode::Worker => {
                let (model, payload, split, c, batch) = (
                    self.model.clone(),
                    self.payload.clone(),
                    self.split,
                    self.concurrency,
                    self.batch,
                );
                tokio::task::spawn_blocking(move || {
                    worker_run(&model, &payload, split, n, c, batch)
                })
                .await?
            }
            Mode::Pipes => {
                let (transport, acceptor) = in_process();
                self.server_run(Arc::new(transport), acceptor, n).await
            }
            Mode::Tcp => {
                let acceptor = TcpAcceptor::bind(SocketAddr::from(([127, 0, 0, 1], 0))).await?;
                let addr = acceptor.local_addr()?;
                self.server_run(Arc::new(Tcp::new(addr)), acceptor, n).await
            }
        }
    }

    async fn server_run(
        &self,
        transport: Arc<dyn Transport>,
        listener: impl collab_net::transport::Listener,
        n: usize,
    ) -> Result<Run> {
        let config = ServerConfig {
            capacity: 4 * self.concurrency,
            policy: Arc::new(collab_policies::batch::SharedModelConfig::new(self.batch)),
            ..ServerConfig::default()
        };
        let handle = Server::start(self.model.clone(), config, listener)?;
        let client = DeviceClient::connect(transport, ClientConfig::default()).await?;
        let next = Arc::new(AtomicUsize::new(0));
        let start = Instant::now();
        let mut tasks = tokio::task::JoinSet::new();
        for _ in 0..self.concurrency {
            let (client, next, payload, split) = (
                client.clone(),
                next.clone(),
                self.payload.clone(),
                self.split as u32,
            );
            tasks.spawn(async move {
                while next.fetch_add(1, Ordering::Relaxed) < n {
                    let request = Outgoing {
                        split,
                        codec: "int8".parse()?,
                        payload: payload.clone(),
                        budget: Duration::from_secs(60),
                        max_loss: 1.0,
                        meta: None,
                    };
                    client.infer(request, Duration::from_secs(120)).await?;
                }
                anyhow::Ok(())
            });
        }
        while let Some(r) = tasks.join_next().await {
            r??;
        }
        let elapsed = start.elapsed();
        client.close().await;
        handle.shutdown().await;
        Ok(Run {
            rate: n as f64 / elapsed.as_secs_f64(),
            elapsed,
        })
    }
}

pub(super) fn codec() -> PlainCodec {
    PlainCodec {
        precision: Precision::Int8,
    }
}

/// The worker fed directly: decode, enqueue, step, top-5 (what the server does per request,
/// minus the network and the tasks).
fn worker_run(
    model: &Arc<Transformer<B>>,
    payload: &[u8],
    split: usize,
    n: usize,
    concurrency: usize,
    batch: usize,
) -> Result<Run> {
    let be = model.backend().clone();
    let mut worker = Worker::new(
        SharedModel::new(batch)?,
        ModelExecutor::new(model.clone()),
        |_, _| 0.0,
    );
    let codec = codec();
    let start = Instant::now();
    let (mut sent, mut done, mut outstanding) = (0usize, 0usize, 0usize);
    while done < n {
        while outstanding < concurrency && sent < n {
            let act = codec.decode(payload)?;
            let x = be.from_vec(act.values, &[1, act.tokens, act.features])?;
            let now = start.elapsed().as_secs_f64();
            let hidden = Hidden::new(x, 1);
            if let Err(r) =
                worker.enqueue(sent as u64, split, now, now + 60.0, Payload::Hidden(hidden))
            {
                bail!("worker refused a request: {:?}", r.outcome);
            }
            sent += 1;
            outstanding += 1;
        }
        let step = worker.step(start.elapsed().as_secs_f64());
        for r in step.responses {
            match r.outcome {
                Outcome::Done(logits) => {
                    std::hint::black_box(top5(&logits));
                }
                other => bail!("request {} ended {other:?}", r.id),
            }
            done += 1;
            outstanding -= 1;
        }
    }
    let elapsed = start.elapsed();
    Ok(Run {
        rate: n as f64 / elapsed.as_secs_f64(),
        elapsed,
    })
}

fn top5(logits: &[f32]) -> Vec<(u32, f32)> {
    let mut v: Vec<(u32, f32)> = logits
        .iter()
        .enumerate()
        .map(|(i, &l)| (i as u32, l))
        .collect();
    v.sort_by(|a, b| b.1.total_cmp(&a.1));
    v.truncate(5);
    v
}
