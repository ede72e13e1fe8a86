//! The messages device and cloud exchange, one per frame (see [`super::frame`]).
//!
//! A session is: the device sends [`Hello`]; the server answers [`Welcome`] or a
//! [`Message::Goodbye`] naming why it refuses (wrong model, wrong token, unknown version) and
//! closes. Then the device sends [`InferRequest`]s, pipelined, and gets exactly one
//! [`InferResponse`] per request, in completion order (matched by `request_id`). The server
//! pushes [`ServerLoad`] now and then, and answers every [`Ping`] with a [`Pong`].

use collab_core::distill::Upload;
use collab_core::split::CodecId;
use serde::{Deserialize, Serialize};

use super::operator::{DeviceSettings, RequestReport};

/// The protocol version this build speaks; every frame carries it. Version 2: a request's
/// codec is a [`CodecId`] (family and rank), not a name. Version 3: a [`Hello`] carries the
/// device's `instance`, which binds its held requests to it. Version 4: [`PersonaliseRequest`]
/// and [`PersonaliseResponse`] (a student distilled for the device, SPEC §6). Version 5:
/// [`Message::Settings`] (an operator's new limits for a device) and [`Message::Report`] (a
/// device's finished request, for the dashboard).
pub const PROTOCOL_VERSION: u16 = 5;

/// The codec family of a server-only request's payload: the resized, centre-cropped image as
/// interleaved 8-bit RGB (`3 * side * side` bytes). Activations name a family of the codec
/// registry both sides build from (`f32`, `int8`, `tpca`, a user's own, ...); our payloads
/// also carry their own shape and rank.
pub const RAW_RGB8: &str = "rgb8";

/// The codec family of a server-only request to a text model: the token ids, each a
/// little-endian `u32` (the tokenizer's output, `[CLS]` and `[SEP]` included).
pub const RAW_TOKENS: &str = "tokens";

/// The codec id of a server-only request to an image model: [`RAW_RGB8`], no rank.
pub fn raw_rgb8() -> CodecId {
    CodecId::plain(RAW_RGB8).unwrap_or_else(|_| CodecId::raw())
}

/// The codec id of a server-only request to a text model: [`RAW_TOKENS`], no rank.
pub fn raw_tokens() -> CodecId {
    CodecId::plain(RAW_TOKENS).unwrap_or_else(|_| CodecId::raw())
}

/// One frame's message.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Message {
    /// Device -> server, first frame of a session.
    Hello(Hello),
    /// Server -> device: the session is open.
    Welcome(Welcome),
    /// Device -> server: run the rest of the model on this payload.
    InferRequest(InferRequest),
    /// Server -> device: the one answer to a request.
    InferResponse(InferResponse),
    /// Server -> device: the server's queues and block times, for split selection.
    ServerLoad(ServerLoad),
    /// Either way: asks for a [`Message::Pong`] (RTT and bandwidth probes).
    Ping(Ping),
    /// Device -> server: distil a student for me from this upload.
    PersonaliseRequest(PersonaliseRequest),
    /// Server -> device: the one answer to a personalisation.
    PersonaliseResponse(PersonaliseResponse),
    /// The answer to a ping.
    Pong(Pong),
    /// Server -> device: an operator's new settings (see [`super::operator`]).
    Settings(DeviceSettings),
    /// Device -> server: one finished request, as the device saw it.
    Report(RequestReport),
    /// Either way: the sender closes the connection, and why.
    Goodbye(RemoteError),
}

impl Message {
    /// A short name of the message kind, for logs and errors.
    pub fn kind(&self) -> &'static str {
        match self {
            Message::Hello(_) => "Hello",
            Message::Welcome(_) => "Welcome",
            Message::InferRequest(_) => "InferRequest",
            Message::InferResponse(_) => "InferResponse",
            Message::ServerLoad(_) => "ServerLoad",
            Message::Ping(_) => "Ping",
            Message::PersonaliseRequest(_) => "PersonaliseRequest",
            Message::PersonaliseResponse(_) => "PersonaliseResponse",
            Message::Pong(_) => "Pong",
            Message::Settings(_) => "Settings",
            Message::Report(_) => "Report",
            Message::Goodbye(_) => "Goodbye",
        }
    }
}

/// Opens a session.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hello {
    /// Who the device is (labels metrics and logs; with per-device tokens, whose token
    /// `auth_token` must be).
    pub device_id: String,
    /// A random number the device draws once (per client) and sends in every `Hello`: the
    /// server holds its requests under `(device_id, instance)`, so a retry after a reconnect
    /// reaches them and another client claiming the same `device_id` cannot.
    pub instance: u64,
    /// The model the device runs its part of (e.g. `deit_tiny_patch16_224`).
    pub model_id: String,
    /// The protocol version the device speaks.
    pub protocol_version: u16,
    /// The device's secret: the server's shared token, or this device's own.
    pub auth_token: String,
}

/// Accepts a session, with what the device needs to know about the server's model.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Welcome {
    /// The model the server runs.
    pub model_id: String,
    /// Its number of blocks `L` (valid split points are `0..=L`).
    pub layers: u32,
    /// Tokens per request entering the blocks.
    pub tokens: u32,
    /// Hidden features.
    pub features: u32,
    /// The largest frame the server reads, bytes.
    pub max_frame: u32,
}

/// One inference request.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct InferRequest {
    /// The device's id for it, unique per device; a retry after a reconnect reuses it, and the
    /// server answers the retry instead of running the request twice while it is still held.
    pub request_id: u64,
    /// Split point `k`: the device ran the embedding and blocks `0..k`; `0` is server-only.
    pub split: u32,
    /// How the payload is encoded: [`raw_rgb8`] at split 0, else the codec the device's split
    /// strategy chose (the server builds its decoder from its codec registry).
    pub codec: CodecId,
    /// The encoded input or activation.
    #[serde(with = "serde_bytes")]
    pub payload: Vec<u8>,
    /// Milliseconds the server has, from receiving the request, to answer it.
    pub budget_ms: u32,
    /// The largest accuracy loss the caller accepts (what the device's split choice used).
    pub max_loss: f32,
    /// What the hidden states carry besides their values, when it is not the default (no
    /// padding, every token of size 1, the model's own protected tokens): after a device-side
    /// token adapter merged tokens, their sizes; for padded text, the mask. `None` at split 0.
    pub meta: Option<TokenMeta>,
}

/// The per-token facts of an activation beyond its values (see `collab_core::model::Hidden`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TokenMeta {
    /// Leading tokens that token adapters must keep (the class token).
    pub protected: u32,
    /// Per token, 1 for a real token and 0 for padding; `None`: every token is real.
    #[serde(with = "serde_bytes")]
    pub mask: Option<Vec<u8>>,
    /// Per token, how many input tokens it stands for after merging; `None`: all 1.
    pub sizes: Option<Vec<f32>>,
}

/// The answer to one request.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct InferResponse {
    /// The request's id.
    pub request_id: u64,
    /// Its result or the typed reason there is none.
    pub outcome: Result<Prediction, RemoteError>,
}

/// A result: a classifier's best classes, or an encoder's embedding.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Prediction {
    /// The best classes with their logits, best first (a classifier; empty for an encoder).
    pub top: Vec<(u32, f32)>,
    /// The pooled embedding (a sentence encoder such as MiniLM; empty for a classifier).
    pub embedding: Vec<f32>,
    /// Milliseconds the request spent in the server (queue and compute).
    pub server_ms: f32,
    /// Size of the batch its head ran in.
    pub batch: u32,
}

/// A device asks for a student of its own (SPEC §6): what it uploads is a [`Upload`] (class
/// probabilities of its private samples, per sample or as prototypes, or only a count),
/// never raw data or labels. The server checks it ([`Upload::check`]) before its
/// personaliser sees it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PersonaliseRequest {
    /// Chosen by the device; echoed in the response.
    pub request_id: u64,
    /// What the device uploads.
    pub upload: Upload,
}

/// The answer to a [`PersonaliseRequest`]: the student's safetensors checkpoint, or why not.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PersonaliseResponse {
    /// The request's id.
    pub request_id: u64,
    /// The checkpoint's bytes, or the typed reason there is none.
    #[serde(with = "checkpoint_bytes")]
    pub outcome: Result<Vec<u8>, RemoteError>,
}

/// A checkpoint's bytes as one byte string on the wire (not a sequence of numbers).
mod checkpoint_bytes {
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    use super::RemoteError;

    #[derive(Serialize)]
    enum Out<'a> {
        Ok(#[serde(with = "serde_bytes")] &'a [u8]),
        Err(&'a RemoteError),
    }

    #[derive(Deserialize)]
    enum In {
        Ok(#[serde(with = "serde_bytes")] Vec<u8>),
        Err(RemoteError),
    }

    pub(super) fn serialize<S: Serializer>(
        v: &Result<Vec<u8>, RemoteError>,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        match v {
            Ok(b) => Out::Ok(b),
            Err(e) => Out::Err(e),
        }
        .serialize(s)
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<Result<Vec<u8>, RemoteError>, D::Error> {
        Ok(match In::deserialize(d)? {
            In::Ok(b) => Ok(b),
            In::Err(e) => Err(e),
        })
    }
}

/// The server's state, pushed to devices for split selection.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ServerLoad {
    /// Requests queued per entry position `0..=L`.
    pub queues: Vec<u32>,
    /// Recent milliseconds per position (block `p`, or the head at `L`) for one pass, as run.
    pub position_ms: Vec<f32>,
    /// Requests accepted and not yet answered.
    pub in_flight: u32,
    /// The admission limit on `in_flight`.
    pub capacity: u32,
}

/// A probe; `pad` makes it large enough to measure bandwidth.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ping {
    /// Echoed in the pong.
    pub nonce: u64,
    /// Ignored bytes.
    #[serde(with = "serde_bytes")]
    pub pad: Vec<u8>,
}

/// The answer to a [`Ping`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pong {
    /// The ping's nonce.
    pub nonce: u64,
}

/// Why a request has no result, or why a session ends: what travels on the wire.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum RemoteError {
    /// The deadline could no longer be met; the request was not computed.
    #[error("deadline missed: the server could not answer within {budget_ms} ms")]
    DeadlineMissed {
        /// The budget the request had.
        budget_ms: u32,
    },
    /// Admission control refused the request: the server holds `capacity` requests already.
    #[error("server overloaded: {in_flight} requests in flight (capacity {capacity}); retry later")]
    Overloaded {
        /// Requests held when it arrived.
        in_flight: u32,
        /// The admission limit.
        capacity: u32,
    },
    /// The request was malformed or inconsistent: what was wrong.
    #[error("invalid request: {0}")]
    Invalid(String),
    /// The compute failed while the request was running: the backend's message.
    #[error("compute failed: {0}")]
    Failed(String),
    /// The server is shutting down and takes no new requests.
    #[error("server shutting down; no new requests accepted")]
    ShuttingDown,
    /// The auth token was wrong.
    #[error("unauthorized: wrong auth token")]
    Unauthorized,
    /// The device runs another model than the server.
    #[error("wrong model: server runs `{expected}`, device sent `{got}`")]
    WrongModel {
        /// The server's model.
        expected: String,
        /// What the device announced.
        got: String,
    },
    /// The peer speaks a protocol version this build does not.
    #[error("unsupported protocol version {got} (this side speaks {supported})")]
    UnsupportedVersion {
        /// The version received.
        got: u16,
        /// The version spoken here.
        supported: u16,
    },
    /// A frame was larger than the receiver accepts.
    #[error("frame of {len} bytes exceeds the limit of {max} bytes")]
    FrameTooLarge {
        /// Its declared length.
        len: u64,
        /// The limit.
        max: u64,
    },
    /// A frame did not decode, or a message came out of order: what was wrong.
    #[error("protocol violation: {0}")]
    Protocol(String),
}
