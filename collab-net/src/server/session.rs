//! The read side of a connection: the handshake, then requests, pings and load pushes until
//! the device leaves, breaks the protocol, stalls mid-frame, or the server shuts down.
//!
//! Every violation ends in a typed `Goodbye` (or a plain close when the stream itself is
//! gone), never a panic: a frame that does not decode, a message out of order, a first
//! message other than `Hello`, no `Hello` within `hello_timeout`, a frame over
//! `hello_max_frame` before the `Hello` is accepted (over `max_frame` after), bytes of an
//! unfinished frame left without progress for `frame_timeout`, or a frame not whole within
//! `frame_timeout` plus its length at `min_transfer_rate` from its first byte (a peer
//! trickling bytes). Violations are counted in `/metrics` and logged under a rate limit.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use tokio::io::ReadHalf;
use tokio::sync::{mpsc, watch};
use tokio::time::MissedTickBehavior;
use tokio_util::codec::FramedRead;
use tracing::{debug, info, warn};

use super::connection::{ProgressRead, linger};
use super::limits::HandshakeSlot;
use super::state::{Identity, Phase, Reply, Shared, take_request};
use super::stats::bump;
use crate::transport::BoxStream;
use crate::wire::{
    FrameCodec, FrameError, Hello, InferRequest, InferResponse, Message, PROTOCOL_VERSION,
    PersonaliseRequest, PersonaliseResponse, Pong, RemoteError, Welcome,
};

/// The framed read half of a connection.
pub(crate) type Reader = FramedRead<ProgressRead<ReadHalf<BoxStream>>, FrameCodec>;

/// How a session ends.
#[derive(Debug)]
enum Close {
    /// Just close (the device left, the writer is gone, or the server was killed).
    Quiet,
    /// Say why, then close.
    Goodbye(RemoteError),
}

fn millis(d: Duration) -> u128 {
    d.as_millis()
}

/// Runs the read side until the session ends; sends the closing `Goodbye` if there is one.
pub(crate) async fn read_side(
    mut reader: Reader,
    control: mpsc::Sender<Message>,
    answers: Reply,
    shared: &Arc<Shared>,
    peer: &str,
    mut handshake: HandshakeSlot,
) {
    let mut session = Session {
        shared,
        peer,
        control,
        answers,
        phase: shared.subscribe(),
        device: Identity {
            device: String::new(),
            instance: 0,
        },
    };
    let close = match session.handshake(&mut reader).await {
        Ok(()) => {
            handshake.release();
            info!(peer, device = %session.device, "session opened");
            // On the board while it serves: the dashboard lists it, and an operator's
            // settings reach it (queued after the Welcome).
            let on_board = shared
                .board
                .register(&session.device.device, session.control.clone());
            let close = session.serve(&mut reader).await;
            drop(on_board);
            info!(peer, device = %session.device, "session closed");
            close
        }
        Err(close) => close,
    };
    handshake.release();
    if let Close::Goodbye(reason) = close
        && session.control.send(Message::Goodbye(reason)).await.is_ok()
    {
        drop(session);
        reader.read_buffer_mut().clear();
        linger(reader.get_mut()).await;
    }
}

struct Session<'a> {
    shared: &'a Arc<Shared>,
    peer: &'a str,
    control: mpsc::Sender<Message>,
    answers: Reply,
    phase: watch::Receiver<Phase>,
    /// Who the device is, once its `Hello` is accepted.
    device: Identity,
}

impl Session<'_> {
    /// Waits for a valid `Hello` and answers `Welcome`; or the reason to close.
    async fn handshake(&mut self, reader: &mut Reader) -> Result<(), Close> {
        let limit = self.shared.config.hello_timeout;
        let first = tokio::select! {
            biased;
            _ = self.phase.wait_for(|p| *p == Phase::Killed) => return Err(Close::Quiet),
            first = tokio::time::timeout(limit, reader.next()) => first,
        };
        let refuse = |reason: RemoteError| {
            bump(&self.shared.counters.handshakes_refused);
            self.shared.metrics.handshakes_refused.inc();
            if self.shared.log.allow() {
                info!(peer = self.peer, %reason, "handshake refused");
            }
            Err(Close::Goodbye(reason))
        };
        let hello: Hello = match first {
            Err(_) => {
                return refuse(RemoteError::Protocol(format!(
                    "no Hello within {} ms",
                    millis(limit)
                )));
            }
            Ok(None) => return Err(Close::Quiet),
            Ok(Some(Err(e))) => return Err(self.frame_error(&e)),
            Ok(Some(Ok(Message::Hello(hello)))) => hello,
            Ok(Some(Ok(other))) => {
                return refuse(RemoteError::Protocol(format!(
                    "the first message must be Hello, got {}",
                    other.kind()
                )));
            }
        };
        let config = &self.shared.config;
        if hello.protocol_version != PROTOCOL_VERSION {
            return refuse(RemoteError::UnsupportedVersion {
                got: hello.protocol_version,
                supported: PROTOCOL_VERSION,
            });
        }
        // The token first: a device without it learns nothing about the model.
        let authorized = match &config.device_tokens {
            Some(tokens) => tokens.check(&hello.device_id, &hello.auth_token),
            None => config.auth_token.matches(&hello.auth_token),
        };
        if !authorized {
            return refuse(RemoteError::Unauthorized);
        }
        if hello.model_id != config.model_id {
            return refuse(RemoteError::WrongModel {
                expected: config.model_id.clone(),
                got: hello.model_id,
            });
        }
        if self.shared.phase() != Phase::Running {
            return refuse(RemoteError::ShuttingDown);
        }
        let facts = &self.shared.facts;
        let n = |v: usize| u32::try_from(v).unwrap_or(u32::MAX);
        let welcome = Welcome {
            model_id: config.model_id.clone(),
            layers: n(facts.layers),
            tokens: n(facts.tokens),
            features: n(facts.features),
            max_frame: n(config.max_frame),
        };
        self.device = Identity {
            device: hello.device_id,
            instance: hello.instance,
        };
        // Authenticated: frames up to the full limit from now on.
        reader.decoder_mut().set_max_frame(config.max_frame);
        self.say(Message::Welcome(welcome)).await
    }

    /// Queues `message` for the writer; `Quiet` if the writer is gone.
    async fn say(&self, message: Message) -> Result<(), Close> {
        self.control.send(message).await.map_err(|_| Close::Quiet)
    }

    /// What to do about a frame that did not decode.
    fn frame_error(&self, e: &FrameError) -> Close {
        match e.to_remote() {
            None => {
                debug!(peer = self.peer, "stream ended: {e}");
                Close::Quiet
            }
            Some(reason) => {
                self.violation(&format!("bad frame: {e}"));
                Close::Goodbye(reason)
            }
        }
    }

    /// Counts a protocol violation and logs it (under the rate limit).
    fn violation(&self, what: &str) {
        bump(&self.shared.counters.protocol_errors);
        self.shared.metrics.protocol_errors.inc();
        if self.shared.log.allow() {
            warn!(peer = self.peer, device = %self.device, "{what}");
        }
    }

    /// When the frame whose first bytes are `buffered` must be whole, if it began at `start`:
    /// `frame_timeout` plus its declared length at `min_transfer_rate`.
    fn frame_deadline(&self, start: Instant, buffered: &[u8]) -> Instant {
        let config = &self.shared.config;
        let declared = buffered
            .first_chunk::<4>()
            .map_or(0, |b| u32::from_be_bytes(*b) as usize);
        let transfer = declared as f64 / config.min_transfer_rate as f64;
        start + config.frame_timeout + Duration::from_secs_f64(transfer.min(3600.0))
    }

    /// The session after the handshake.
    async fn serve(&mut self, reader: &mut Reader) -> Close {
        let config = &self.shared.config;
        let stall_limit = config.frame_timeout;
        let mut tick = tokio::time::interval(config.load_interval);
        tick.set_missed_tick_behavior(MissedTickBehavior::Skip);
        let buffered = !reader.read_buffer().is_empty();
        reader.get_mut().frame_done(buffered);
        loop {
            // With nothing buffered, look again after `stall_limit`: bytes of a new frame may
            // arrive (and stop) while the read below is pending.
            let check_at = if reader.read_buffer().is_empty() {
                Instant::now() + stall_limit
            } else {
                let start = reader.get_ref().frame_start().unwrap_or_else(Instant::now);
                let whole_by = self.frame_deadline(start, reader.read_buffer());
                (reader.get_ref().last_progress() + stall_limit).min(whole_by)
            };
            tokio::select! {
                biased;
                changed = self.phase.changed() => {
                    if changed.is_err() {
                        return Close::Quiet;
                    }
                    match *self.phase.borrow_and_update() {
                        Phase::Killed => return Close::Quiet,
                        Phase::Closing | Phase::Stopped => {
                            return Close::Goodbye(RemoteError::ShuttingDown);
                        }
                        Phase::Running | Phase::Draining => {}
                    }
                }
                () = self.control.closed() => return Close::Quiet,
                frame = reader.next() => match frame {
                    None => {
                        debug!(peer = self.peer, "device closed the stream");
                        return Close::Quiet;
                    }
                    Some(Err(e)) => return self.frame_error(&e),
                    Some(Ok(message)) => {
                        let buffered = !reader.read_buffer().is_empty();
                        reader.get_mut().frame_done(buffered);
                        if let Err(close) = self.on_message(message).await {
                            return close;
                        }
                    }
                },
                () = tokio::time::sleep_until(check_at.into()) => {
                    let buffered = reader.read_buffer().len();
                    let idle = reader.get_ref().last_progress().elapsed();
                    if buffered > 0 && idle >= stall_limit {
                        self.violation(&format!("stalled mid-frame ({buffered} bytes buffered)"));
                        return Close::Goodbye(RemoteError::Protocol(format!(
                            "stalled mid-frame: {buffered} bytes of an unfinished frame and no \
                             progress for {} ms",
                            millis(idle)
                        )));
                    }
                    if let Some(start) = reader.get_ref().frame_start()
                        && buffered > 0
                        && Instant::now() >= self.frame_deadline(start, reader.read_buffer())
                    {
                        self.violation(&format!("frame too slow ({buffered} bytes buffered)"));
                        return Close::Goodbye(RemoteError::Protocol(format!(
                            "frame too slow: {buffered} bytes in {} ms, slower than {} bytes/s",
                            millis(start.elapsed()),
                            config.min_transfer_rate
                        )));
                    }
                }
                _ = tick.tick() => {
                    // Dropped when the writer is behind: the next push carries newer numbers.
                    let _ = self.control.try_send(Message::ServerLoad(self.shared.load()));
                }
            }
        }
    }

    async fn on_message(&mut self, message: Message) -> Result<(), Close> {
        match message {
            Message::InferRequest(request) => self.request(request).await,
            Message::Ping(ping) => self.say(Message::Pong(Pong { nonce: ping.nonce })).await,
            Message::PersonaliseRequest(request) => self.personalise(request).await,
            Message::Report(report) => {
                // Telemetry, answered with nothing: a bad one is counted and dropped.
                match report.check(self.shared.facts.layers) {
                    Ok(()) => self.shared.board.record(&self.device.device, &report),
                    Err(e) => self.violation(&format!("bad report: {e}")),
                }
                Ok(())
            }
            Message::Goodbye(reason) => {
                info!(peer = self.peer, device = %self.device, %reason, "device said goodbye");
                Err(Close::Quiet)
            }
            other => {
                self.violation(&format!("unexpected {}", other.kind()));
                Err(Close::Goodbye(RemoteError::Protocol(format!(
                    "unexpected {} from a device in session",
                    other.kind()
                ))))
            }
        }
    }

    /// Checks one personalisation request and runs it on a blocking thread; its answer goes
    /// out on this session when it ends (a session closed by then drops it, and the device
    /// re-sends on its next connection). Refusals are answered at once.
    async fn personalise(&mut self, request: PersonaliseRequest) -> Result<(), Close> {
        let id = request.request_id;
        let shared = self.shared;
        let refuse = |e: RemoteError| {
            Message::PersonaliseResponse(PersonaliseResponse {
                request_id: id,
                outcome: Err(e),
            })
        };
        let Some(personaliser) = shared.config.personaliser.clone() else {
            return self
                .say(refuse(RemoteError::Invalid(
                    "this server does not personalise students".into(),
                )))
                .await;
        };
        if let Err(e) = request.upload.check() {
            return self.say(refuse(RemoteError::Invalid(e.to_string()))).await;
        }
        let Ok(slot) = shared.personalising.clone().try_acquire_owned() else {
            let capacity = shared.config.max_personalising;
            return self
                .say(refuse(RemoteError::Overloaded {
                    in_flight: u32::try_from(capacity).unwrap_or(u32::MAX),
                    capacity: u32::try_from(capacity).unwrap_or(u32::MAX),
                }))
                .await;
        };
        info!(device = %self.device, request = id, personaliser = %personaliser.name(), "personalising");
        let control = self.control.clone();
        let max_frame = shared.config.max_frame;
        let device = self.device.to_string();
        tokio::spawn(async move {
            let upload = request.upload;
            let ran = tokio::task::spawn_blocking(move || {
                catch_unwind(AssertUnwindSafe(|| personaliser.personalise(&upload)))
            })
            .await;
            drop(slot);
            let outcome = match ran {
                Ok(Ok(Ok(bytes))) if bytes.len() + 64 > max_frame => {
                    Err(RemoteError::Failed(format!(
                        "the student's checkpoint of {} bytes exceeds the frame limit of \
                         {max_frame} bytes",
                        bytes.len()
                    )))
                }
                Ok(Ok(Ok(bytes))) => Ok(bytes),
                Ok(Ok(Err(collab_core::Error::InvalidInput(m)))) => Err(RemoteError::Invalid(m)),
                Ok(Ok(Err(e))) => Err(RemoteError::Failed(e.to_string())),
                Ok(Err(_)) | Err(_) => Err(RemoteError::Failed("the personaliser panicked".into())),
            };
            info!(%device, request = id, ok = outcome.is_ok(), "personalised");
            let _ = control
                .send(Message::PersonaliseResponse(PersonaliseResponse {
                    request_id: id,
                    outcome,
                }))
                .await;
        });
        Ok(())
    }

    /// Validates, admits and queues one request; refusals are answered at once.
    async fn request(&mut self, request: InferRequest) -> Result<(), Close> {
        let received = Instant::now();
        let id = request.request_id;
        let Err(error) = take_request(self.shared, &self.device, request, &self.answers, received)
        else {
            return Ok(());
        };
        self.say(Message::InferResponse(InferResponse {
            request_id: id,
            outcome: Err(error),
        }))
        .await
    }
}
