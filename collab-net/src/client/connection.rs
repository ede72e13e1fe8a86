//! The connection task: the one owner of a client's framed stream.
//!
//! It holds every request not yet answered (`request_id` -> the request and the caller's reply
//! channel) and every probe in flight, routes answers to callers by id, stores pushed
//! [`ServerLoad`]s and answers the server's pings. When the connection is lost (EOF, an I/O
//! error, `Goodbye(ShuttingDown | Overloaded)`) it reconnects with backoff while requests are
//! pending and re-sends each of them with its same id, so the server can answer a retry of a
//! request it still holds instead of running it twice. With nothing pending it reconnects on
//! the next call. A refusal (`Goodbye(Unauthorized | WrongModel | UnsupportedVersion)`) fails
//! every pending and later call with [`ClientError::Refused`].
//!
//! A server shutting down answers a request it did not accept `ShuttingDown`: that request
//! stays pending, and so does every request made after it, unsent, until the server closes
//! the session with `Goodbye(ShuttingDown)`; then they are re-sent on the next connection
//! (the restarted server, or the next address of a [`crate::transport::Failover`]). A
//! graceful restart thus loses nothing, as a crash does not.
//!
//! A server that breaks the protocol (an undecodable frame, a message out of place) or closes
//! with another reason (`Goodbye(Protocol | FrameTooLarge | ...)`: something this client sent)
//! fails what is pending instead: re-sending it would meet the same answer. Connections lost
//! `max_attempts` times in a row with work pending and nothing answered also fail it, as
//! [`ClientError::Unreachable`], so a server that accepts and then drops every connection
//! cannot make a call retry forever.
//!
//! Writes happen on this task; one that stalls for [`WRITE_STALL`] counts as a lost
//! connection. Every pending call ends with exactly one message on its reply channel, or with
//! the channel dropped when the client is closed (the handle maps that to an error).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use rand::rngs::StdRng;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

use super::config::ClientConfig;
use super::error::ClientError;
use super::handshake::{Conn, connect_with_backoff, is_refusal};
use super::pending::Book;
use crate::transport::Transport;
use crate::wire::{
    DeviceSettings, FrameError, InferRequest, Message, PersonaliseRequest, Ping, Pong, Prediction,
    RemoteError, RequestReport, ServerLoad, Welcome,
};

/// A write that takes longer than this means the server stopped reading: the connection is
/// treated as lost.
const WRITE_STALL: Duration = Duration::from_secs(30);

/// The answer channel of one inference call.
pub(crate) type InferReply = oneshot::Sender<Result<Prediction, ClientError>>;
/// The answer channel of one ping: the time from writing it to its pong.
pub(super) type PingReply = oneshot::Sender<Result<Duration, ClientError>>;
/// The answer channel of one personalisation: the student's checkpoint bytes.
pub(super) type PersonaliseReply = oneshot::Sender<Result<Vec<u8>, ClientError>>;

/// What a handle asks of the connection task.
#[derive(Debug)]
pub(crate) enum Command {
    /// Send a request (its id already assigned) and answer on `reply`.
    Infer {
        request: InferRequest,
        reply: InferReply,
    },
    /// The caller gave up on this request: forget it (a late answer is dropped).
    Cancel(u64),
    /// Send a ping padded with `pad` bytes and answer with its round-trip time.
    Ping { pad: usize, reply: PingReply },
    /// Send a personalisation request (its id already assigned) and answer on `reply`.
    Personalise {
        request: PersonaliseRequest,
        reply: PersonaliseReply,
    },
    /// Send a report of a finished request if connected (dropped otherwise: telemetry).
    Report(RequestReport),
    /// Close the connection and end the task.
    Close,
}

/// State the task shares with the handles.
#[derive(Debug)]
pub(crate) struct Shared {
    pub(super) welcome: Mutex<Welcome>,
    pub(super) load: Mutex<Option<ServerLoad>>,
    /// The operator's settings received so far, merged (see [`crate::wire::operator`]).
    pub(super) settings: tokio::sync::watch::Sender<DeviceSettings>,
    pub(super) reconnects: AtomicU64,
    /// Answers that arrived for no pending request (a cancelled call, or a duplicate).
    pub(crate) unmatched: AtomicU64,
}

/// How a connection ended.
#[derive(Debug)]
enum Ended {
    /// The client was closed.
    Closed,
    /// The connection is gone; pending work (if any) should be re-sent on a new one.
    Lost(String),
    /// The server refused the device for good.
    Refused(RemoteError),
}

/// Why a write failed.
enum WriteError {
    /// The message cannot be sent (too large); the connection is fine.
    Rejected(String),
    /// The connection is gone.
    Lost(String),
}

async fn write(conn: &mut Conn, message: Message) -> Result<(), WriteError> {
    match tokio::time::timeout(WRITE_STALL, conn.send(message)).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e @ FrameError::TooLarge { .. })) => Err(WriteError::Rejected(e.to_string())),
        Ok(Err(e)) => Err(WriteError::Lost(format!("writing: {e}"))),
        Err(_) => Err(WriteError::Lost(format!(
            "a write stalled for {} s",
            WRITE_STALL.as_secs()
        ))),
    }
}

/// The task's state.
#[derive(Debug)]
pub(super) struct Connection {
    transport: Arc<dyn Transport>,
    config: ClientConfig,
    /// What every `Hello` of this client carries (see `Hello::instance`).
    instance: u64,
    shared: Arc<Shared>,
    rx: mpsc::UnboundedReceiver<Command>,
    rng: StdRng,
    book: Book,
    /// The server of this connection answered `ShuttingDown`: hold new requests until the
    /// next connection.
    draining: bool,
}

impl Connection {
    /// A task over an open session.
    pub(super) fn new(
        transport: Arc<dyn Transport>,
        config: ClientConfig,
        instance: u64,
        shared: Arc<Shared>,
        rx: mpsc::UnboundedReceiver<Command>,
        rng: StdRng,
    ) -> Self {
        Self {
            transport,
            config,
            instance,
            shared,
            rx,
            rng,
            book: Book::default(),
            draining: false,
        }
    }

    /// Runs until the client is closed (or every handle is dropped).
    pub(super) async fn run(mut self, first: Conn) {
        let mut conn = Some(first);
        // Connections lost in a row without a single answer: a server that accepts and then
        // drops every connection must not make the client retry forever.
        let mut fruitless = 0u32;
        loop {
            if let Some(c) = conn.take() {
                let (ended, answered) = self.serve(c).await;
                fruitless = if answered || self.book.is_empty() {
                    0
                } else {
                    fruitless + 1
                };
                match ended {
                    Ended::Closed => return,
                    Ended::Refused(e) => return self.refused(e).await,
                    Ended::Lost(why) => {
                        tracing::info!(device = %self.config.device_id, "connection lost: {why}");
                        if fruitless >= self.config.max_attempts.max(1) {
                            let attempts = fruitless;
                            fruitless = 0;
                            self.book.fail_all(&ClientError::Unreachable {
                                attempts,
                                last: why,
                            });
                        }
                    }
                }
            }
            if self.book.is_empty() {
                let cmd = self.rx.recv().await;
                if !self.book.queue(cmd) {
                    return;
                }
                continue;
            }
            match self.reconnect().await {
                None => return,
                Some(Ok(c)) => conn = Some(c),
                Some(Err(ClientError::Refused(e))) => return self.refused(e).await,
                Some(Err(e)) => self.book.fail_all(&e),
            }
        }
    }

    /// Reconnects with backoff while still taking commands; `None` if the client was closed.
    async fn reconnect(&mut self) -> Option<Result<Conn, ClientError>> {
        let Self {
            transport,
            config,
            instance,
            shared,
            rx,
            rng,
            book,
            ..
        } = self;
        let attempt = connect_with_backoff(&**transport, config, *instance, rng);
        tokio::pin!(attempt);
        let result = loop {
            tokio::select! {
                r = &mut attempt => break r,
                cmd = rx.recv() => if !book.queue(cmd) { return None },
            }
        };
        Some(result.map(|(conn, welcome)| {
            shared.reconnects.fetch_add(1, Ordering::Relaxed);
            if let Ok(mut w) = shared.welcome.lock() {
                *w = welcome;
            }
            tracing::info!(device = %config.device_id, "reconnected to {}", transport.describe());
            conn
        }))
    }

    /// Fails everything, now and later, with the refusal.
    async fn refused(mut self, e: RemoteError) {
        tracing::warn!(device = %self.config.device_id, "refused by the server: {e}");
        let err = ClientError::Refused(e);
        self.book.fail_all(&err);
        while let Some(cmd) = self.rx.recv().await {
            match cmd {
                Command::Close => return,
                Command::Infer { reply, .. } => {
                    let _ = reply.send(Err(err.clone()));
                }
                Command::Ping { reply, .. } => {
                    let _ = reply.send(Err(err.clone()));
                }
                Command::Personalise { reply, .. } => {
                    let _ = reply.send(Err(err.clone()));
                }
                Command::Cancel(_) | Command::Report(_) => {}
            }
        }
    }

    /// Serves one connection: re-sends what is pending, then routes commands and messages
    /// until it ends. Also says whether anything was answered on it.
    async fn serve(&mut self, mut conn: Conn) -> (Ended, bool) {
        let mut answered = false;
        self.draining = false;
        let resend: Vec<InferRequest> = self
            .book
            .requests
            .values()
            .map(|(r, _)| r.clone())
            .collect();
        for request in resend {
            if let Some(ended) = self.send_request(&mut conn, request).await {
                return (ended, answered);
            }
        }
        let personalise: Vec<PersonaliseRequest> = self
            .book
            .personalise
            .values()
            .map(|(r, _)| r.clone())
            .collect();
        for request in personalise {
            if let Some(ended) = self.send_personalise(&mut conn, request).await {
                return (ended, answered);
            }
        }
        let nonces: Vec<(u64, usize)> = self.book.pings.iter().map(|(n, p)| (*n, p.pad)).collect();
        for (nonce, pad) in nonces {
            if let Some(ended) = self.send_ping(&mut conn, nonce, pad).await {
                return (ended, answered);
            }
        }
        loop {
            let ended = tokio::select! {
                cmd = self.rx.recv() => self.on_command(&mut conn, cmd).await,
                msg = conn.next() => self.on_message(&mut conn, msg, &mut answered).await,
            };
            if let Some(ended) = ended {
                if matches!(ended, Ended::Closed) {
                    let _ = conn.close().await;
                }
                return (ended, answered);
            }
        }
    }

    async fn send_request(&mut self, conn: &mut Conn, request: InferRequest) -> Option<Ended> {
        let id = request.request_id;
        match write(conn, Message::InferRequest(request)).await {
            Ok(()) => None,
            Err(WriteError::Rejected(m)) => {
                if let Some((_, reply)) = self.book.requests.remove(&id) {
                    let _ = reply.send(Err(ClientError::Local(format!(
                        "request {id} cannot be sent: {m}"
                    ))));
                }
                None
            }
            Err(WriteError::Lost(m)) => Some(Ended::Lost(m)),
        }
    }

    async fn send_personalise(
        &mut self,
        conn: &mut Conn,
        request: PersonaliseRequest,
    ) -> Option<Ended> {
        let id = request.request_id;
        match write(conn, Message::PersonaliseRequest(request)).await {
            Ok(()) => None,
            Err(WriteError::Rejected(m)) => {
                if let Some((_, reply)) = self.book.personalise.remove(&id) {
                    let _ = reply.send(Err(ClientError::Local(format!(
                        "personalisation {id} cannot be sent: {m}"
                    ))));
                }
                None
            }
            Err(WriteError::Lost(m)) => Some(Ended::Lost(m)),
        }
    }

    async fn send_ping(&mut self, conn: &mut Conn, nonce: u64, pad: usize) -> Option<Ended> {
        if let Some(p) = self.book.pings.get_mut(&nonce) {
            p.sent = Some(Instant::now());
        }
        let ping = Message::Ping(Ping {
            nonce,
            pad: vec![0; pad],
        });
        match write(conn, ping).await {
            Ok(()) => None,
            Err(WriteError::Rejected(m)) => {
                if let Some(p) = self.book.pings.remove(&nonce) {
                    let _ = p.reply.send(Err(ClientError::Local(format!(
                        "a {pad}-byte probe cannot be sent: {m}"
                    ))));
                }
                None
            }
            Err(WriteError::Lost(m)) => Some(Ended::Lost(m)),
        }
    }

    async fn on_command(&mut self, conn: &mut Conn, cmd: Option<Command>) -> Option<Ended> {
        match cmd {
            None | Some(Command::Close) => Some(Ended::Closed),
            Some(Command::Cancel(id)) => {
                self.book.requests.remove(&id);
                self.book.personalise.remove(&id);
                None
            }
            Some(Command::Infer { request, reply }) => {
                self.book
                    .requests
                    .insert(request.request_id, (request.clone(), reply));
                if self.draining {
                    return None; // sent on the next connection
                }
                self.send_request(conn, request).await
            }
            Some(Command::Ping { pad, reply }) => {
                let nonce = self.book.add_ping(pad, reply);
                self.send_ping(conn, nonce, pad).await
            }
            Some(Command::Report(report)) => match write(conn, Message::Report(report)).await {
                Err(WriteError::Lost(m)) => Some(Ended::Lost(m)),
                Ok(()) | Err(WriteError::Rejected(_)) => None,
            },
            Some(Command::Personalise { request, reply }) => {
                self.book
                    .personalise
                    .insert(request.request_id, (request.clone(), reply));
                if self.draining {
                    return None; // sent on the next connection
                }
                self.send_personalise(conn, request).await
            }
        }
    }

    async fn on_message(
        &mut self,
        conn: &mut Conn,
        msg: Option<Result<Message, FrameError>>,
        answered: &mut bool,
    ) -> Option<Ended> {
        let message = match msg {
            None => return Some(Ended::Lost("the server closed the connection".into())),
            Some(Err(e @ (FrameError::Io(_) | FrameError::Truncated { .. }))) => {
                return Some(Ended::Lost(e.to_string()));
            }
            Some(Err(e)) => {
                if let Some(reason) = e.to_remote() {
                    let _ = write(conn, Message::Goodbye(reason)).await;
                }
                return Some(self.violation(format!("undecodable frame: {e}")));
            }
            Some(Ok(m)) => m,
        };
        match message {
            Message::InferResponse(r) if r.outcome == Err(RemoteError::ShuttingDown) => {
                // Not accepted by a server going away: kept, and re-sent after reconnecting.
                if !self.draining {
                    tracing::info!(device = %self.config.device_id, "the server is shutting down; holding requests until it is back");
                }
                self.draining = true;
            }
            Message::InferResponse(r) => match self.book.requests.remove(&r.request_id) {
                Some((_, reply)) => {
                    *answered = true;
                    let _ = reply.send(r.outcome.map_err(ClientError::Remote));
                }
                None => {
                    self.shared.unmatched.fetch_add(1, Ordering::Relaxed);
                    tracing::debug!(id = r.request_id, "answer to no pending request");
                }
            },
            Message::PersonaliseResponse(r) => match self.book.personalise.remove(&r.request_id) {
                Some((_, reply)) => {
                    *answered = true;
                    let _ = reply.send(r.outcome.map_err(ClientError::Remote));
                }
                None => {
                    self.shared.unmatched.fetch_add(1, Ordering::Relaxed);
                    tracing::debug!(id = r.request_id, "personalisation answer to no request");
                }
            },
            Message::ServerLoad(load) => {
                if let Ok(mut l) = self.shared.load.lock() {
                    *l = Some(load);
                }
            }
            Message::Settings(settings) => match settings.check() {
                Ok(()) => {
                    tracing::info!(device = %self.config.device_id, ?settings, "operator settings");
                    self.shared
                        .settings
                        .send_modify(|s| *s = s.merged(settings));
                }
                // An operator's mistake is not the session's: dropped, the session goes on.
                Err(e) => tracing::warn!(device = %self.config.device_id, "settings refused: {e}"),
            },
            Message::Pong(p) => {
                if let Some(ping) = self.book.pings.remove(&p.nonce) {
                    *answered = true;
                    let rtt = ping.sent.map(|t| t.elapsed()).unwrap_or_default();
                    let _ = ping.reply.send(Ok(rtt));
                }
            }
            Message::Ping(p) => {
                if let Err(WriteError::Lost(m)) =
                    write(conn, Message::Pong(Pong { nonce: p.nonce })).await
                {
                    return Some(Ended::Lost(m));
                }
            }
            Message::Goodbye(e) if is_refusal(&e) => return Some(Ended::Refused(e)),
            Message::Goodbye(e @ (RemoteError::ShuttingDown | RemoteError::Overloaded { .. })) => {
                return Some(Ended::Lost(format!("server said goodbye: {e}")));
            }
            Message::Goodbye(e) => {
                // The server closes because of something this client sent: re-sending the same
                // requests would repeat it, so they fail with the server's reason.
                self.book.fail_all(&ClientError::Remote(e.clone()));
                return Some(Ended::Lost(format!("server said goodbye: {e}")));
            }
            other @ (Message::Hello(_)
            | Message::Welcome(_)
            | Message::InferRequest(_)
            | Message::Report(_)
            | Message::PersonaliseRequest(_)) => {
                let m = format!("unexpected {} from the server", other.kind());
                let _ = write(conn, Message::Goodbye(RemoteError::Protocol(m.clone()))).await;
                return Some(self.violation(m));
            }
        }
        None
    }

    /// The server broke the protocol: everything pending fails (re-sending would meet the same
    /// server) and the connection is dropped; the next call reconnects.
    fn violation(&mut self, m: String) -> Ended {
        tracing::warn!(device = %self.config.device_id, "protocol violation: {m}");
        self.book.fail_all(&ClientError::Protocol(m.clone()));
        Ended::Lost(m)
    }
}
