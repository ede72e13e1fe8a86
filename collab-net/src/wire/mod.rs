//! The wire protocol: versioned, length-delimited frames ([`frame`]) carrying postcard-encoded
//! [`Message`]s ([`message`]), and the checks a server applies to a request before it queues
//! it ([`validate`]).
//!
//! postcard is serde's compact binary format (varint integers, length-prefixed byte strings,
//! no field names): a 38 KB int8 activation travels with about 20 bytes of framing.

pub mod frame;
pub mod message;
pub mod operator;
pub mod validate;

pub use frame::{DEFAULT_MAX_FRAME, FrameCodec, FrameError, decode_frame, encode_frame};
pub use message::{
    Hello, InferRequest, InferResponse, Message, PROTOCOL_VERSION, PersonaliseRequest,
    PersonaliseResponse, Ping, Pong, Prediction, RAW_RGB8, RAW_TOKENS, RemoteError, ServerLoad,
    TokenMeta, Welcome, raw_rgb8, raw_tokens,
};
pub use operator::{DeviceSettings, LinkSetting, ReportOutcome, RequestReport};

#[cfg(test)]
mod tests;
