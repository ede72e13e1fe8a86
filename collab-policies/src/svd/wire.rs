//! The self-describing header every activation codec writes before its values.
//!
//! Layout (little-endian, 25 bytes): magic `CB`, version `1`, codec kind, precision tag,
//! tokens `u32`, features `u32`, rank `u32`, basis fingerprint `u64` (0 when the codec needs
//! no shared basis). A decoder checks every field against itself before reading values.

use collab_core::{Error, Result};

use super::quant::Precision;

/// Header length in bytes.
pub const HEADER_LEN: usize = 25;
const MAGIC: [u8; 2] = *b"CB";
const VERSION: u8 = 1;
/// The largest tokens, features or rank a header may declare: keeps every byte count a
/// decoder computes from them (`4 * rows * cols`) far from overflow on untrusted input.
pub(super) const MAX_DIM: usize = 1 << 24;

/// Which family of codec wrote the bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(super) enum Kind {
    /// The activation itself at some precision.
    Plain,
    /// Per-request truncated SVD factors.
    RequestSvd,
    /// Coefficients in a basis known to both sides.
    Projected,
    /// Every coefficient in a shared basis, each column at its own width.
    Transform,
    /// The largest coefficients in a shared basis and where they are.
    Masked,
}

impl Kind {
    fn tag(self) -> u8 {
        match self {
            Self::Plain => 0,
            Self::RequestSvd => 1,
            Self::Projected => 2,
            Self::Transform => 3,
            Self::Masked => 4,
        }
    }
}

/// The decoded header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Header {
    /// Codec family.
    pub(super) kind: Kind,
    /// Value precision.
    pub(super) precision: Precision,
    /// Rows of the activation.
    pub(super) tokens: usize,
    /// Columns of the activation.
    pub(super) features: usize,
    /// Rank of the factors (equals `features` for plain codecs).
    pub(super) rank: usize,
    /// Fingerprint of the shared basis, 0 if none.
    pub(super) basis: u64,
}

impl Header {
    /// Writes the header to a fresh buffer with room for `body` more bytes.
    ///
    /// # Errors
    /// [`Error::Codec`] if a size does not fit in `u32`.
    pub(super) fn start(&self, codec: &str, body: usize) -> Result<Vec<u8>> {
        let small = |v: usize, what: &str| {
            u32::try_from(v)
                .map_err(|_| Error::codec(codec, format!("{what} {v} does not fit the wire")))
        };
        let mut out = Vec::with_capacity(HEADER_LEN + body);
        out.extend_from_slice(&MAGIC);
        out.push(VERSION);
        out.push(self.kind.tag());
        out.push(self.precision.tag());
        out.extend_from_slice(&small(self.tokens, "tokens")?.to_le_bytes());
        out.extend_from_slice(&small(self.features, "features")?.to_le_bytes());
        out.extend_from_slice(&small(self.rank, "rank")?.to_le_bytes());
        out.extend_from_slice(&self.basis.to_le_bytes());
        Ok(out)
    }

    /// The `(tokens, features)` of the header at the start of `bytes` that `codec` (of `kind`
    /// and `precision`) wrote: [`ActivationCodec::declared_shape`] of every codec here.
    ///
    /// # Errors
    /// As [`Header::read`].
    ///
    /// [`ActivationCodec::declared_shape`]: collab_core::split::ActivationCodec::declared_shape
    pub(super) fn shape(
        bytes: &[u8],
        codec: &str,
        kind: Kind,
        precision: Precision,
    ) -> Result<(usize, usize)> {
        Self::read(bytes, codec, kind, precision).map(|(h, _)| (h.tokens, h.features))
    }

    /// Reads a header and checks that `codec` (of `kind` and `precision`) wrote it.
    /// Returns the header and the bytes after it.
    ///
    /// # Errors
    /// [`Error::Codec`] for short bytes, a wrong magic or version, another codec's kind or
    /// precision, zero sizes or rank, or sizes over [`MAX_DIM`].
    pub(super) fn read<'a>(
        bytes: &'a [u8],
        codec: &str,
        kind: Kind,
        precision: Precision,
    ) -> Result<(Self, &'a [u8])> {
        if bytes.len() < HEADER_LEN {
            return Err(Error::codec(
                codec,
                format!(
                    "{} bytes is shorter than the {HEADER_LEN}-byte header",
                    bytes.len()
                ),
            ));
        }
        if bytes[0..2] != MAGIC || bytes[2] != VERSION {
            return Err(Error::codec(
                codec,
                "not an activation payload (bad magic or version)",
            ));
        }
        if bytes[3] != kind.tag() {
            return Err(Error::codec(
                codec,
                format!("payload is of codec kind {} but this is {kind:?}", bytes[3]),
            ));
        }
        let found = Precision::from_tag(bytes[4]);
        if found != Some(precision) {
            return Err(Error::codec(
                codec,
                format!("payload precision {found:?} but this codec uses {precision:?}"),
            ));
        }
        let u32_at = |i: usize| {
            u32::from_le_bytes([bytes[i], bytes[i + 1], bytes[i + 2], bytes[i + 3]]) as usize
        };
        let mut basis = [0u8; 8];
        basis.copy_from_slice(&bytes[17..25]);
        let header = Self {
            kind,
            precision,
            tokens: u32_at(5),
            features: u32_at(9),
            rank: u32_at(13),
            basis: u64::from_le_bytes(basis),
        };
        if header.tokens == 0 || header.features == 0 {
            return Err(Error::codec(codec, "payload declares an empty activation"));
        }
        if header.rank == 0 {
            // Rank 0 would decode a full activation (of zeros) from 25 bytes.
            return Err(Error::codec(codec, "payload declares rank 0"));
        }
        if header.tokens.max(header.features).max(header.rank) > MAX_DIM {
            return Err(Error::codec(
                codec,
                format!(
                    "payload declares {} x {} at rank {}: sizes over {MAX_DIM} are refused \
                     (their byte counts could overflow)",
                    header.tokens, header.features, header.rank
                ),
            ));
        }
        Ok((header, &bytes[HEADER_LEN..]))
    }
}

/// Rejects trailing bytes after the last block.
///
/// # Errors
/// [`Error::Codec`] if `rest` is not empty.
pub(super) fn expect_end(rest: &[u8], codec: &str) -> Result<()> {
    if rest.is_empty() {
        Ok(())
    } else {
        Err(Error::codec(
            codec,
            format!("{} unexpected trailing bytes", rest.len()),
        ))
    }
}

/// Rejects non-finite values before encoding.
///
/// # Errors
/// [`Error::Codec`] naming the first bad position.
pub(super) fn check_finite(values: &[f32], codec: &str) -> Result<()> {
    match values.iter().position(|v| !v.is_finite()) {
        None => Ok(()),
        Some(i) => Err(Error::codec(codec, format!("value {i} is {}", values[i]))),
    }
}
