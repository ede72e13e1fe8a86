//! {{name}}: an activation codec for collab's split inference.
//!
//! [`UniformQuant`] quantises each token's features to `bits` bits between that token's
//! minimum and maximum (an example to replace with your idea). [`Codecs`] is its factory,
//! registered with `typetag` as kind `{{name}}`: a pipeline file lists it under `[[codecs]]`
//! and a device may then choose the codec id `{{name}}-r<bits>` (the rank is the bit width).
//!
//! The wire format: `UQ`, then tokens and features as little-endian `u32`, bits as `u8`, then
//! per token its minimum and step as `f32` and the packed values, `bits` each, least
//! significant first, padded to a whole byte per token.

use collab_core::split::{Activation, ActivationCodec, CodecId};
use collab_core::{Error, Result};
use collab_policies::codec::{CodecContext, CodecFactory};
use serde::{Deserialize, Serialize};

/// The widest activation the decoder accepts: bounds what a hostile payload can make it
/// allocate before its length is checked.
pub const MAX_FEATURES: usize = 8192;
const HEADER: usize = 11;

/// Per-token uniform quantisation to `bits` bits (1 to 8).
#[derive(Debug, Clone, Copy)]
pub struct UniformQuant {
    bits: u8,
}

impl UniformQuant {
    /// A codec of `bits` bits per value.
    ///
    /// # Errors
    /// [`Error::Config`] unless `1 <= bits <= 8`.
    pub fn new(bits: u32) -> Result<Self> {
        match u8::try_from(bits) {
            Ok(b @ 1..=8) => Ok(UniformQuant { bits: b }),
            _ => Err(Error::Config(format!(
                "{{name}}: bits {bits} outside 1..=8"
            ))),
        }
    }

    fn row_bytes(&self, features: usize) -> usize {
        8 + (features * usize::from(self.bits)).div_ceil(8)
    }
}

fn codec_error(message: &str) -> Error {
    Error::codec("{{name}}", message.to_owned())
}

impl ActivationCodec for UniformQuant {
    fn name(&self) -> String {
        format!("{{name}}-r{}", self.bits)
    }

    fn encoded_len(&self, tokens: usize, features: usize) -> usize {
        HEADER + tokens * self.row_bytes(features)
    }

    fn encode(&self, x: &Activation) -> Result<Vec<u8>> {
        if x.features > MAX_FEATURES {
            return Err(codec_error("too many features"));
        }
        let levels = ((1u32 << self.bits) - 1) as f32;
        let mut out = Vec::with_capacity(self.encoded_len(x.tokens, x.features));
        out.extend_from_slice(b"UQ");
        for v in [x.tokens, x.features] {
            let v = u32::try_from(v).map_err(|_| codec_error("size too large"))?;
            out.extend_from_slice(&v.to_le_bytes());
        }
        out.push(self.bits);
        for row in x.values.chunks(x.features) {
            let lo = row.iter().copied().fold(f32::INFINITY, f32::min);
            let hi = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            if !lo.is_finite() || !hi.is_finite() {
                return Err(codec_error("non-finite activation"));
            }
            let step = if hi > lo { (hi - lo) / levels } else { 0.0 };
            out.extend_from_slice(&lo.to_le_bytes());
            out.extend_from_slice(&step.to_le_bytes());
            let (mut acc, mut filled) = (0u32, 0u8);
            for &v in row {
                let q = if step > 0.0 {
                    ((v - lo) / step).round().clamp(0.0, levels) as u32
                } else {
                    0
                };
                acc |= q << filled;
                filled += self.bits;
                while filled >= 8 {
                    out.push(acc as u8);
                    acc >>= 8;
                    filled -= 8;
                }
            }
            if filled > 0 {
                out.push(acc as u8);
            }
        }
        Ok(out)
    }

    fn declared_shape(&self, bytes: &[u8]) -> Result<(usize, usize)> {
        read_header(bytes).map(|(tokens, features, _)| (tokens, features))
    }

    fn decode(&self, bytes: &[u8]) -> Result<Activation> {
        let (tokens, features, codec) = read_header(bytes)?;
        let mask = (1u32 << codec.bits) - 1;
        let mut values = Vec::with_capacity(tokens * features);
        for row in bytes[HEADER..].chunks_exact(codec.row_bytes(features)) {
            let lo = f32::from_le_bytes([row[0], row[1], row[2], row[3]]);
            let step = f32::from_le_bytes([row[4], row[5], row[6], row[7]]);
            let (mut acc, mut filled, mut next) = (0u32, 0u8, 8usize);
            for _ in 0..features {
                while filled < codec.bits {
                    acc |= u32::from(row[next]) << filled;
                    next += 1;
                    filled += 8;
                }
                values.push(lo + step * (acc & mask) as f32);
                acc >>= codec.bits;
                filled -= codec.bits;
            }
        }
        Activation::new(tokens, features, values)
    }
}

/// A payload's tokens, features and bit width, checked against its length (a server reads
/// the shape this way before it decodes, and refuses shapes its model does not take).
fn read_header(bytes: &[u8]) -> Result<(usize, usize, UniformQuant)> {
    if bytes.len() < HEADER || &bytes[..2] != b"UQ" {
        return Err(codec_error("not a {{name}} payload"));
    }
    let word = |i: usize| {
        u32::from_le_bytes([bytes[i], bytes[i + 1], bytes[i + 2], bytes[i + 3]]) as usize
    };
    let (tokens, features) = (word(2), word(6));
    let codec =
        UniformQuant::new(u32::from(bytes[10])).map_err(|_| codec_error("bad bit width"))?;
    if tokens == 0 || features == 0 || features > MAX_FEATURES {
        return Err(codec_error("sizes out of range"));
    }
    // The length must match the sizes before anything is allocated.
    let body = tokens.checked_mul(codec.row_bytes(features));
    if body != Some(bytes.len() - HEADER) {
        return Err(codec_error("length does not match the sizes"));
    }
    Ok((tokens, features, codec))
}

/// The factory of family `{{name}}`: builds [`UniformQuant`] from a codec id's rank (its bit
/// width).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Codecs {}

#[typetag::serde(name = "{{name}}")]
impl CodecFactory for Codecs {
    fn families(&self) -> Vec<String> {
        vec!["{{name}}".into()]
    }

    fn build(&self, id: &CodecId, _context: &CodecContext<'_>) -> Result<Box<dyn ActivationCodec>> {
        let bits = id.rank().ok_or_else(|| {
            Error::Config(format!("codec `{id}` needs a bit width: {{name}}-r<bits>"))
        })?;
        Ok(Box::new(UniformQuant::new(bits)?))
    }
}

/// Keeps this crate's `typetag` registrations in a program that names its kinds only in a
/// config file: call it once at start-up (a linker drops a library nothing refers to, and its
/// registrations with it).
pub fn register() {}
