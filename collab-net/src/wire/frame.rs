//! Frames: `[u32 length][u16 version][postcard body]`, big-endian, where `length` counts the
//! version and the body. [`FrameCodec`] is a tokio-util [`Decoder`]/[`Encoder`] of
//! [`Message`]s; [`decode_frame`] decodes one complete frame from a slice (the fuzz target).
//!
//! A declared length over the limit is refused before any of the frame is buffered, so a peer
//! cannot make the receiver allocate more than `max_frame` bytes. Decoding never panics:
//! every malformed input is a [`FrameError`].

use bytes::{Buf, BufMut, BytesMut};
use tokio_util::codec::{Decoder, Encoder};

use super::message::{Message, PROTOCOL_VERSION, RemoteError};

/// Bytes before the body: the length and the version.
pub const PREFIX_LEN: usize = 6;

/// The default largest frame, bytes (a 224 x 224 image as `f32` is 0.6 MB).
pub const DEFAULT_MAX_FRAME: usize = 8 << 20;

/// Why bytes did not make a message.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    /// The stream failed.
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
    /// The declared length exceeds the limit.
    #[error("frame of {len} bytes exceeds the limit of {max} bytes")]
    TooLarge {
        /// The declared length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// A frame shorter than its version field.
    #[error("frame of {len} bytes is shorter than the 2-byte version")]
    TooShort {
        /// The declared length.
        len: usize,
    },
    /// The frame speaks another protocol version.
    #[error("unsupported protocol version {got} (this side speaks {PROTOCOL_VERSION})")]
    Version {
        /// The version found.
        got: u16,
    },
    /// The body is not a message.
    #[error("malformed message: {0}")]
    Malformed(String),
    /// The stream ended inside a frame.
    #[error("stream ended inside a frame ({buffered} bytes buffered)")]
    Truncated {
        /// Bytes of the unfinished frame.
        buffered: usize,
    },
}

impl FrameError {
    /// What to tell the peer before closing, or `None` when the stream itself is gone.
    pub fn to_remote(&self) -> Option<RemoteError> {
        Some(match self {
            FrameError::Io(_) | FrameError::Truncated { .. } => return None,
            FrameError::TooLarge { len, max } => RemoteError::FrameTooLarge {
                len: *len as u64,
                max: *max as u64,
            },
            FrameError::Version { got } => RemoteError::UnsupportedVersion {
                got: *got,
                supported: PROTOCOL_VERSION,
            },
            e @ (FrameError::TooShort { .. } | FrameError::Malformed(_)) => {
                RemoteError::Protocol(e.to_string())
            }
        })
    }
}

/// Encodes and decodes [`Message`] frames with a size limit.
#[derive(Clone, Copy, Debug)]
pub struct FrameCodec {
    max_frame: usize,
}

impl Default for FrameCodec {
    fn default() -> Self {
        Self::new(DEFAULT_MAX_FRAME)
    }
}

impl FrameCodec {
    /// A codec refusing frames longer than `max_frame` bytes (at least the 2-byte version).
    pub fn new(max_frame: usize) -> Self {
        Self {
            max_frame: max_frame.max(2),
        }
    }

    /// The limit.
    pub fn max_frame(&self) -> usize {
        self.max_frame
    }

    /// Changes the limit (at least the 2-byte version) for the frames read from now on: a
    /// server reads a small `Hello` first and raises the limit once the peer is authenticated.
    pub fn set_max_frame(&mut self, max_frame: usize) {
        self.max_frame = max_frame.max(2);
    }
}

/// Decodes the part of a frame after its length: the version and the body.
///
/// # Errors
/// [`FrameError::TooShort`], [`FrameError::Version`] or [`FrameError::Malformed`].
pub fn decode_body(frame: &[u8]) -> Result<Message, FrameError> {
    let Some((version, body)) = frame.split_first_chunk::<2>() else {
        return Err(FrameError::TooShort { len: frame.len() });
    };
    let got = u16::from_be_bytes(*version);
    if got != PROTOCOL_VERSION {
        return Err(FrameError::Version { got });
    }
    let (message, rest) = postcard::take_from_bytes::<Message>(body)
        .map_err(|e| FrameError::Malformed(e.to_string()))?;
    if !rest.is_empty() {
        return Err(FrameError::Malformed(format!(
            "{} bytes after the {} message",
            rest.len(),
            message.kind()
        )));
    }
    Ok(message)
}

/// Decodes exactly one whole frame (length prefix included) from `bytes`, with the default
/// limit: the entry point of the fuzz target.
///
/// # Errors
/// Any [`FrameError`]; [`FrameError::Truncated`] if `bytes` is not exactly one frame long.
pub fn decode_frame(bytes: &[u8]) -> Result<Message, FrameError> {
    let mut buf = BytesMut::from(bytes);
    let mut codec = FrameCodec::default();
    match codec.decode(&mut buf)? {
        Some(m) if buf.is_empty() => Ok(m),
        Some(_) => Err(FrameError::Malformed(format!(
            "{} bytes after the frame",
            buf.len()
        ))),
        None => Err(FrameError::Truncated {
            buffered: bytes.len(),
        }),
    }
}

/// Encodes `message` as one frame.
///
/// # Errors
/// [`FrameError::Malformed`] if serde fails (it does not for these types).
pub fn encode_frame(message: &Message) -> Result<Vec<u8>, FrameError> {
    let mut buf = BytesMut::new();
    FrameCodec::new(usize::MAX).encode(message.clone(), &mut buf)?;
    Ok(buf.to_vec())
}

impl Decoder for FrameCodec {
    type Item = Message;
    type Error = FrameError;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Message>, FrameError> {
        let Some(len) = src
            .first_chunk::<4>()
            .map(|b| u32::from_be_bytes(*b) as usize)
        else {
            return Ok(None);
        };
        if len > self.max_frame {
            return Err(FrameError::TooLarge {
                len,
                max: self.max_frame,
            });
        }
        if src.len() < 4 + len {
            src.reserve(4 + len - src.len());
            return Ok(None);
        }
        src.advance(4);
        let frame = src.split_to(len);
        decode_body(&frame).map(Some)
    }

    fn decode_eof(&mut self, src: &mut BytesMut) -> Result<Option<Message>, FrameError> {
        match self.decode(src)? {
            Some(m) => Ok(Some(m)),
            None if src.is_empty() => Ok(None),
            None => Err(FrameError::Truncated {
                buffered: src.len(),
            }),
        }
    }
}

impl Encoder<Message> for FrameCodec {
    type Error = FrameError;

    fn encode(&mut self, message: Message, dst: &mut BytesMut) -> Result<(), FrameError> {
        let start = dst.len();
        dst.put_u32(0);
        dst.put_u16(PROTOCOL_VERSION);
        let writer = (&mut *dst).writer();
        postcard::to_io(&message, writer).map_err(|e| FrameError::Malformed(e.to_string()))?;
        let len = dst.len() - start - 4;
        if len > self.max_frame {
            dst.truncate(start);
            return Err(FrameError::TooLarge {
                len,
                max: self.max_frame,
            });
        }
        let len32 = u32::try_from(len).map_err(|_| FrameError::TooLarge {
            len,
            max: self.max_frame,
        })?;
        dst[start..start + 4].copy_from_slice(&len32.to_be_bytes());
        Ok(())
    }
}
