//! The device side over NATS: the task behind [`crate::client::DeviceClient::connect_nats`].
//! It takes the same commands as the TCP connection task, so [`crate::client::Device`] and
//! everything above it run unchanged.
//!
//! A request is published to the device's request subject with its message id and instance
//! header, and re-published (same id, de-duplicated by the stream) until JetStream
//! acknowledges it or its deadline passes: a broker restart in between loses nothing
//! accepted. Answers come from the device's durable consumer of the replies stream, so an
//! answer stored while the device was disconnected is delivered when it is back. An answer
//! for no pending request (a cancelled call, or a second answer) is dropped and counted.
//! Personalisation and the dashboard's reports go over direct TCP only: over NATS a
//! personalisation is answered `Invalid` and reports are dropped.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, consumer::pull};
use bytes::Bytes;
use futures_util::StreamExt;
use rand::rngs::StdRng;
use tokio::sync::mpsc;
use tracing::{debug, warn};

use super::INSTANCE_HEADER;
use super::config::NatsConfig;
use super::subjects::{Subjects, check_token};
use crate::client::ClientConfig;
use crate::client::ClientError;
use crate::client::connection::{Command, InferReply, Shared};
use crate::wire::{InferRequest, Message, RemoteError, Welcome, decode_frame, encode_frame};

/// A device's connection to the broker, after its handshake.
#[derive(Debug)]
pub(crate) struct NatsDevice {
    client: async_nats::Client,
    js: jetstream::Context,
    subjects: Subjects,
    model: String,
    device: String,
    instance: u64,
    answers: jetstream::consumer::Consumer<pull::Config>,
    max_frame: usize,
}

fn unreachable(attempts: u32, last: impl std::fmt::Display) -> ClientError {
    ClientError::Unreachable {
        attempts,
        last: last.to_string(),
    }
}

/// Connects as the device (user: its id unless `nats.user` says otherwise), asks a worker for
/// the `Welcome` (retrying with backoff up to `config.max_attempts` times: workers may start
/// after devices), and opens the device's answers.
///
/// # Errors
/// [`ClientError::Local`] for ids that are not subject tokens or a bad config;
/// [`ClientError::Unreachable`] when the broker or every worker stayed silent;
/// [`ClientError::Refused`] when the workers serve another model.
pub(crate) async fn connect_device(
    nats: &NatsConfig,
    config: &ClientConfig,
    instance: u64,
    rng: &mut StdRng,
) -> Result<(NatsDevice, Welcome), ClientError> {
    let local = |e: &dyn std::fmt::Display| ClientError::Local(e.to_string());
    check_token("device", &config.device_id).map_err(|e| local(&e))?;
    check_token("model", &config.model_id).map_err(|e| local(&e))?;
    let subjects = nats.subjects().map_err(|e| local(&e))?;
    let client = nats
        .connect(
            Some(&config.device_id),
            Some(subjects.inbox(&config.device_id)),
        )
        .await
        .map_err(|e| match e {
            super::NatsError::Config(m) => ClientError::Local(m),
            other => unreachable(1, other),
        })?;
    let hello = subjects.hello(&config.model_id, &config.device_id);
    let mut attempt = 0;
    let welcome = loop {
        attempt += 1;
        let asked = tokio::time::timeout(
            config.connect_timeout,
            client.request(hello.clone(), Bytes::new()),
        )
        .await;
        let last = match asked {
            Ok(Ok(reply)) => match decode_frame(&reply.payload) {
                Ok(Message::Welcome(w)) => break w,
                Ok(other) => {
                    return Err(ClientError::Protocol(format!(
                        "a worker answered the handshake with {}",
                        other.kind()
                    )));
                }
                Err(e) => return Err(ClientError::Protocol(format!("handshake: {e}"))),
            },
            Ok(Err(e)) => e.to_string(),
            Err(_) => format!(
                "no worker answered within {} ms",
                config.connect_timeout.as_millis()
            ),
        };
        if attempt >= config.max_attempts.max(1) {
            return Err(unreachable(attempt, last));
        }
        debug!(attempt, "nats handshake: {last}; retrying");
        tokio::time::sleep(config.backoff.delay(attempt - 1, rng)).await;
    };
    if welcome.model_id != config.model_id {
        return Err(ClientError::Refused(RemoteError::WrongModel {
            expected: welcome.model_id,
            got: config.model_id.clone(),
        }));
    }
    let js = jetstream::new(client.clone());
    let answers = js
        .get_consumer_from_stream(config.device_id.as_str(), subjects.reply_stream().as_str())
        .await
        .map_err(|e| unreachable(attempt, format!("the device's answers: {e}")))?;
    let max_frame = config.max_frame.min(welcome.max_frame as usize);
    Ok((
        NatsDevice {
            client,
            js,
            subjects,
            model: config.model_id.clone(),
            device: config.device_id.clone(),
            instance,
            answers,
            max_frame,
        },
        welcome,
    ))
}

impl NatsDevice {
    /// Serves the handles' commands until `Close` or every handle is gone.
    pub(crate) async fn run(
        self,
        shared: Arc<Shared>,
        mut commands: mpsc::UnboundedReceiver<Command>,
    ) {
        let link = Arc::new(self);
        // Each pending call's reply and its publishing task (stopped when the call is cancelled).
        let mut pending: HashMap<u64, (InferReply, tokio::task::JoinHandle<()>)> = HashMap::new();
        let (failed, mut failures) = mpsc::unbounded_channel::<(u64, ClientError)>();
        let mut answers = match link.answers.messages().await {
            Ok(m) => m,
            Err(e) => {
                warn!("cannot read the device's answers: {e}");
                return;
            }
        };
        loop {
            tokio::select! {
                command = commands.recv() => match command {
                    None | Some(Command::Close) => break,
                    Some(Command::Infer { request, reply }) => {
                        let id = request.request_id;
                        let publishing = tokio::spawn(link.clone().publish(request, failed.clone()));
                        pending.insert(id, (reply, publishing));
                    }
                    Some(Command::Cancel(id)) => {
                        if let Some((_, publishing)) = pending.remove(&id) {
                            publishing.abort();
                        }
                    }
                    Some(Command::Ping { pad, reply }) => {
                        let link = link.clone();
                        tokio::spawn(async move {
                            let _ = reply.send(link.ping(pad).await);
                        });
                    }
                    Some(Command::Personalise { reply, .. }) => {
                        let _ = reply.send(Err(ClientError::Remote(RemoteError::Invalid(
                            "personalisation goes over direct TCP, not NATS".into(),
                        ))));
                    }
                    Some(Command::Report(_)) => {}
                },
                Some((id, error)) = failures.recv() => {
                    if let Some((reply, _)) = pending.remove(&id) {
                        let _ = reply.send(Err(error));
                    }
                }
                answer = answers.next() => match answer {
                    Some(Ok(message)) => {
                        match decode_frame(&message.payload) {
                            Ok(Message::InferResponse(r)) => match pending.remove(&r.request_id) {
                                Some((reply, _)) => {
                                    let _ = reply.send(r.outcome.map_err(ClientError::Remote));
                                }
                                None => {
                                    shared.unmatched.fetch_add(1, Ordering::Relaxed);
                                }
                            },
                            Ok(other) => warn!("unexpected {} among the answers", other.kind()),
                            Err(e) => warn!("an answer that does not decode: {e}"),
                        }
                        if let Err(e) = message.ack().await {
                            debug!("ack of an answer: {e}");
                        }
                    }
                    Some(Err(e)) => debug!("answers: {e}"),
                    None => {
                        warn!("the device's answers ended");
                        break;
                    }
                },
            }
        }
        for (_, (reply, publishing)) in pending.drain() {
            publishing.abort();
            let _ = reply.send(Err(unreachable(0, "the client was closed")));
        }
    }

    /// Publishes `request` until JetStream stores it or its deadline passes; a failure is
    /// sent to `failed`.
    async fn publish(
        self: Arc<Self>,
        request: InferRequest,
        failed: mpsc::UnboundedSender<(u64, ClientError)>,
    ) {
        let id = request.request_id;
        let budget = Duration::from_millis(u64::from(request.budget_ms));
        let until = Instant::now() + budget;
        let bytes = match encode_frame(&Message::InferRequest(request)) {
            Ok(b) if b.len() <= self.max_frame => Bytes::from(b),
            Ok(b) => {
                let _ = failed.send((
                    id,
                    ClientError::Local(format!(
                        "a request of {} bytes exceeds the frame limit of {} bytes",
                        b.len(),
                        self.max_frame
                    )),
                ));
                return;
            }
            Err(e) => {
                let _ = failed.send((id, ClientError::Local(e.to_string())));
                return;
            }
        };
        let subject = self.subjects.request(&self.model, &self.device);
        let msg_id = self.subjects.message_id(&self.device, self.instance, id);
        let mut attempts = 0u32;
        let mut delay = Duration::from_millis(20);
        loop {
            attempts += 1;
            let publish = jetstream::message::PublishMessage::build()
                .payload(bytes.clone())
                .message_id(&msg_id)
                .header(INSTANCE_HEADER, self.instance.to_string().as_str());
            let stored = match self.js.send_publish(subject.clone(), publish).await {
                Ok(ack) => ack.await.map(|_| ()).map_err(|e| e.to_string()),
                Err(e) => Err(e.to_string()),
            };
            let last = match stored {
                Ok(()) => return,
                Err(e) => e,
            };
            if Instant::now() + delay >= until {
                let _ = failed.send((id, unreachable(attempts, last)));
                return;
            }
            debug!(request = id, attempts, "publishing: {last}; retrying");
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(Duration::from_millis(500));
        }
    }

    /// A core request to the workers' probe subject padded with `pad` bytes: its round trip.
    async fn ping(&self, pad: usize) -> Result<Duration, ClientError> {
        let start = Instant::now();
        self.client
            .request(
                self.subjects.ping(&self.model, &self.device),
                Bytes::from(vec![0u8; pad]),
            )
            .await
            .map_err(|e| unreachable(1, format!("probe: {e}")))?;
        Ok(start.elapsed())
    }
}
