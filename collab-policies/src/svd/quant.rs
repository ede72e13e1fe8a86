//! Element encodings of a block of values on the wire: `f32`, `f16`, `bf16`, and `int8` with
//! one `f32` scale per row (symmetric, `scale = max|row| / 127`).

use collab_core::{Error, Result};
use half::{bf16, f16};
use serde::{Deserialize, Serialize};

/// How each value of a block is stored.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    /// 4 bytes per value.
    F32,
    /// IEEE half: 2 bytes per value.
    F16,
    /// bfloat16: 2 bytes per value.
    Bf16,
    /// 1 byte per value plus a 4-byte scale per row.
    Int8,
}

impl Precision {
    /// Every precision, in wire-tag order.
    pub const ALL: [Precision; 4] = [Self::F32, Self::F16, Self::Bf16, Self::Int8];

    /// The tag byte on the wire.
    pub fn tag(self) -> u8 {
        match self {
            Self::F32 => 0,
            Self::F16 => 1,
            Self::Bf16 => 2,
            Self::Int8 => 3,
        }
    }

    /// The precision of a tag byte.
    pub fn from_tag(tag: u8) -> Option<Self> {
        Self::ALL.into_iter().find(|p| p.tag() == tag)
    }

    /// Lower-case name (`f32`, `f16`, `bf16`, `int8`).
    pub fn name(self) -> &'static str {
        match self {
            Self::F32 => "f32",
            Self::F16 => "f16",
            Self::Bf16 => "bf16",
            Self::Int8 => "int8",
        }
    }

    /// Exact bytes of a `rows x cols` block.
    pub fn block_len(self, rows: usize, cols: usize) -> usize {
        match self {
            Self::F32 => 4 * rows * cols,
            Self::F16 | Self::Bf16 => 2 * rows * cols,
            Self::Int8 => rows * (4 + cols),
        }
    }

    /// Appends the row-major `rows x cols` block `values` to `out`.
    pub fn write_block(self, values: &[f32], rows: usize, cols: usize, out: &mut Vec<u8>) {
        debug_assert_eq!(values.len(), rows * cols);
        out.reserve(self.block_len(rows, cols));
        match self {
            Self::F32 => values
                .iter()
                .for_each(|v| out.extend_from_slice(&v.to_le_bytes())),
            Self::F16 => values
                .iter()
                .for_each(|v| out.extend_from_slice(&f16::from_f32(*v).to_le_bytes())),
            Self::Bf16 => values
                .iter()
                .for_each(|v| out.extend_from_slice(&bf16::from_f32(*v).to_le_bytes())),
            Self::Int8 => {
                for row in values.chunks(cols.max(1)).take(rows) {
                    let max = row.iter().fold(0f32, |m, v| m.max(v.abs()));
                    let scale = max / 127.0;
                    out.extend_from_slice(&scale.to_le_bytes());
                    let inv = if scale > 0.0 { 1.0 / scale } else { 0.0 };
                    out.extend(
                        row.iter()
                            .map(|v| ((v * inv).round().clamp(-127.0, 127.0) as i8) as u8),
                    );
                }
            }
        }
    }

    /// Reads a `rows x cols` block from the front of `bytes`; returns the values and the rest.
    ///
    /// # Errors
    /// [`Error::Codec`] (attributed to `codec`) if `bytes` is too short or a scale is not
    /// finite.
    pub fn read_block<'a>(
        self,
        bytes: &'a [u8],
        rows: usize,
        cols: usize,
        codec: &str,
    ) -> Result<(Vec<f32>, &'a [u8])> {
        let need = self.block_len(rows, cols);
        if bytes.len() < need {
            return Err(Error::codec(
                codec,
                format!(
                    "a {rows} x {cols} {} block needs {need} bytes, only {} left",
                    self.name(),
                    bytes.len()
                ),
            ));
        }
        let (block, rest) = bytes.split_at(need);
        let values = match self {
            Self::F32 => block
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect(),
            Self::F16 => block
                .chunks_exact(2)
                .map(|c| f16::from_le_bytes([c[0], c[1]]).to_f32())
                .collect(),
            Self::Bf16 => block
                .chunks_exact(2)
                .map(|c| bf16::from_le_bytes([c[0], c[1]]).to_f32())
                .collect(),
            Self::Int8 => {
                let mut values = Vec::with_capacity(rows * cols);
                for row in block.chunks_exact(4 + cols) {
                    let scale = f32::from_le_bytes([row[0], row[1], row[2], row[3]]);
                    if !scale.is_finite() || scale < 0.0 {
                        return Err(Error::codec(codec, format!("bad int8 row scale {scale}")));
                    }
                    values.extend(row[4..].iter().map(|&q| f32::from(q as i8) * scale));
                }
                values
            }
        };
        Ok((values, rest))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_round_trip_within_their_precision() -> Result<()> {
        let values: Vec<f32> = (0..60).map(|i| (i as f32 - 30.0) * 0.37).collect();
        for p in Precision::ALL {
            let mut out = vec![];
            p.write_block(&values, 6, 10, &mut out);
            assert_eq!(out.len(), p.block_len(6, 10), "{p:?}");
            let (back, rest) = p.read_block(&out, 6, 10, "t")?;
            assert!(rest.is_empty());
            let tol = match p {
                Precision::F32 => 0.0,
                Precision::F16 => 0.01,
                Precision::Bf16 => 0.05,
                Precision::Int8 => 11.1 / 127.0 * 0.5 + 1e-6,
            };
            for (a, b) in values.iter().zip(&back) {
                assert!((a - b).abs() <= tol, "{p:?}: {a} vs {b}");
            }
            assert!(p.read_block(&out[..out.len() - 1], 6, 10, "t").is_err());
        }
        Ok(())
    }
}
