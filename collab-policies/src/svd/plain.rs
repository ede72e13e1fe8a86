//! The plain baselines of SPEC §1: the activation itself as `f32`, `f16`, `bf16` or per-token
//! `int8`.

use collab_core::Result;
use collab_core::split::{Activation, ActivationCodec};

use super::quant::Precision;
use super::wire::{HEADER_LEN, Header, Kind, check_finite, expect_end};

/// Sends the activation at a fixed precision (`f32` is the uncompressed reference).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PlainCodec {
    /// Value precision.
    pub precision: Precision,
}

impl ActivationCodec for PlainCodec {
    fn name(&self) -> String {
        self.precision.name().to_string()
    }

    fn encoded_len(&self, tokens: usize, features: usize) -> usize {
        HEADER_LEN + self.precision.block_len(tokens, features)
    }

    fn encode(&self, x: &Activation) -> Result<Vec<u8>> {
        let name = self.name();
        check_finite(&x.values, &name)?;
        let header = Header {
            kind: Kind::Plain,
            precision: self.precision,
            tokens: x.tokens,
            features: x.features,
            rank: x.features,
            basis: 0,
        };
        let mut out = header.start(&name, self.precision.block_len(x.tokens, x.features))?;
        self.precision
            .write_block(&x.values, x.tokens, x.features, &mut out);
        Ok(out)
    }

    fn declared_shape(&self, bytes: &[u8]) -> Result<(usize, usize)> {
        Header::shape(bytes, &self.name(), Kind::Plain, self.precision)
    }

    fn decode(&self, bytes: &[u8]) -> Result<Activation> {
        let name = self.name();
        let (h, rest) = Header::read(bytes, &name, Kind::Plain, self.precision)?;
        let (values, rest) = self
            .precision
            .read_block(rest, h.tokens, h.features, &name)?;
        expect_end(rest, &name)?;
        Activation::new(h.tokens, h.features, values)
    }
}
