//! Scale-out over NATS JetStream: many cloud workers behind one broker, devices on the other
//! side, no accepted request lost when a worker dies.
//!
//! Direct TCP ([`crate::server::Server`], [`crate::client::DeviceClient::connect`]) stays the
//! embedded default; a pipeline config with a `[nats]` section ([`NatsConfig`]) runs the
//! server as a [`NatsWorker`] and connects the device with
//! [`crate::client::DeviceClient::connect_nats`]. The broker is a real `nats-server` (2.9 or
//! later, JetStream on): load balancing, persistence, authentication and TLS are its.
//!
//! # Subjects and streams (prefix `collab`, see [`Subjects`])
//!
//! | what | subject | carried by |
//! | --- | --- | --- |
//! | requests | `collab.req.<model>.<device>` | stream `collab-req-<model>` (work queue, file store), one durable pull consumer `workers` shared by every worker |
//! | answers | `collab.reply.<device>` | stream `collab-replies` (work queue), one durable pull consumer per device, named by it |
//! | handshake | `collab.hello.<model>.<device>` | core request/reply, workers in queue group `workers` |
//! | link probes | `collab.ping.<model>.<device>` | core request/reply, same queue group |
//!
//! The device is the subject's last token, which the broker's permissions tie to the
//! device's credentials (see `deploy/nats/`): a device can publish only its own requests and
//! read only its own answers, so no payload field can reach another device's. Workers answer a
//! handshake or probe only on the asking device's own inboxes, whatever reply subject it set,
//! and drop a request whose message id is not the one its device and id give. Both streams
//! hold at most 1024 messages per device and 4 GiB, so one device cannot fill them.
//!
//! # One answer per request
//!
//! - A device publishes a request with `Nats-Msg-Id = <device>.<instance>.<request id>` and
//!   counts it accepted when JetStream acknowledges it (stored; with `replicas = 3`, on three
//!   brokers; a single broker syncs its file store every two minutes by default, so a machine
//!   crash, unlike a process crash, can lose its last seconds); re-publishing after
//!   a broker restart is de-duplicated by the stream within [`NatsConfig::duplicate_window`].
//! - A worker pulls at most its free budget ([`NatsConfig::max_held`] less what it holds),
//!   so batches stay dense and a busy or slow worker takes less. While it holds a request it
//!   tells the broker every third of [`NatsConfig::ack_wait`] that it is still working
//!   (`+WPI`); it publishes the answer to the replies stream with the request's message id and
//!   acknowledges the request only once the answer is stored. A worker that dies stops
//!   telling: the broker redelivers its requests to another worker after `ack_wait`.
//! - Two workers' answers to one request carry the same message id, so the replies stream
//!   keeps one; the device client also drops an answer for a request no longer pending.
//! - A request's deadline is on the broker's clock: the time JetStream stored it plus its
//!   `budget_ms` (so device and worker clocks need not agree). A request past it when a
//!   worker takes it is answered `DeadlineMissed`, not computed or retried; so is (`Failed`)
//!   one on its last delivery ([`NatsConfig::max_deliver`]) rather than left unanswered.
//! - A draining worker hands back (`-NAK`) what it pulled but can no longer take.
//! - Two live clients with the same device id share its answers consumer: each drops the
//!   other's answers as unmatched. Give every device process its own id.

//!
//! # Example
//!
//! A worker and a device in one program (in a deployment they are processes on different
//! machines, started from `deploy/worker.toml` and `deploy/device.toml`):
//!
//! ```no_run
//! use std::sync::Arc;
//! use std::time::Duration;
//!
//! use collab_backends::candle::CandleBackend;
//! use collab_core::model::{ModelConfig, Transformer};
//! use collab_net::client::{ClientConfig, DeviceClient, Outgoing};
//! use collab_net::nats::{NatsConfig, NatsWorker};
//! use collab_net::server::ServerConfig;
//!
//! # async fn run() -> anyhow::Result<()> {
//! let id = "deit_tiny_patch16_224";
//! let checkpoint = collab_core::fixtures::deit_tiny_checkpoint()?;
//! let model = Transformer::from_safetensors(
//!     CandleBackend::cpu(),
//!     ModelConfig::preset(id)?,
//!     &checkpoint,
//! )?;
//! // The worker: its user may use the JetStream API; TLS against the brokers' CA.
//! let worker_nats = NatsConfig::new("tls://nats-1:4222")
//!     .with_credentials("worker", std::env::var("WORKER_PASSWORD")?)
//!     .with_tls_ca("/etc/collab/ca.pem");
//! let config = ServerConfig { model_id: id.into(), ..ServerConfig::default() };
//! let worker = NatsWorker::start(Arc::new(model), config, &worker_nats).await?;
//!
//! // A device: its user is its id, limited to its own subjects.
//! let device_nats = NatsConfig::new("tls://nats-1:4222")
//!     .with_credentials("phone-0", std::env::var("PHONE_0_PASSWORD")?)
//!     .with_tls_ca("/etc/collab/ca.pem");
//! let config = ClientConfig {
//!     device_id: "phone-0".into(),
//!     model_id: id.into(),
//!     ..ClientConfig::default()
//! };
//! let client = DeviceClient::connect_nats(&device_nats, config).await?;
//! let image = vec![0u8; 224 * 224 * 3]; // a server-only request: the 224 px RGB crop
//! let answer = client
//!     .infer(
//!         Outgoing {
//!             split: 0,
//!             codec: collab_net::wire::raw_rgb8(),
//!             payload: image,
//!             budget: Duration::from_millis(300),
//!             max_loss: 0.0,
//!             meta: None,
//!         },
//!         Duration::from_secs(1),
//!     )
//!     .await?;
//! println!("top class {:?}", answer.top.first());
//! client.close().await;
//! worker.shutdown().await;
//! # Ok(())
//! # }
//! ```

mod broker;
mod config;
mod device;
mod emulated;
mod subjects;
mod worker;

pub use broker::{Access, Broker, Role, User, permissions};
pub use config::{NatsConfig, NatsError};
pub use emulated::{EmulatedGpu, EmulatedWorker};
pub use subjects::{MAX_TOKEN, Subjects, check_token};
pub use worker::NatsWorker;

pub(crate) use device::connect_device;

/// The header carrying the device client's instance (see `Hello::instance`).
pub const INSTANCE_HEADER: &str = "Collab-Instance";

/// Unix time now, milliseconds.
pub(crate) fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}
