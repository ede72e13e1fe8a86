//! Per-request truncated SVD (SPEC §1): `X ~= U_r S_r V_r^T`; the device sends `U_r S_r`
//! (`n x r`) and `V_r^T` (`r x d`), `r (n + d)` values instead of `n d`, computed afresh for
//! every request with faer's thin SVD.

use collab_core::split::{Activation, ActivationCodec};
use collab_core::{Error, Result};
use faer::{Mat, MatRef};

use super::quant::Precision;
use super::wire::{HEADER_LEN, Header, Kind, check_finite, expect_end};

/// Per-request truncated SVD of rank `rank`, factors stored at `precision`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SvdCodec {
    /// Rank kept (clamped to `min(tokens, features)` per request; the header says which).
    pub rank: usize,
    /// Precision of both factors.
    pub precision: Precision,
}

impl SvdCodec {
    fn effective_rank(&self, tokens: usize, features: usize) -> usize {
        self.rank.min(tokens).min(features)
    }
}

impl ActivationCodec for SvdCodec {
    fn name(&self) -> String {
        match self.precision {
            Precision::F32 => format!("svd-r{}", self.rank),
            p => format!("svd-{}-r{}", p.name(), self.rank),
        }
    }

    fn encoded_len(&self, tokens: usize, features: usize) -> usize {
        let r = self.effective_rank(tokens, features);
        HEADER_LEN + self.precision.block_len(tokens, r) + self.precision.block_len(r, features)
    }

    fn encode(&self, x: &Activation) -> Result<Vec<u8>> {
        self.encode_tagged(x, 0, &self.name(), None)
    }

    fn declared_shape(&self, bytes: &[u8]) -> Result<(usize, usize)> {
        Header::shape(bytes, &self.name(), Kind::RequestSvd, self.precision)
    }

    fn decode(&self, bytes: &[u8]) -> Result<Activation> {
        self.decode_tagged(bytes, 0, &self.name())
    }
}

impl SvdCodec {
    /// Encodes `x` with `centre` (the fingerprint of what was subtracted first, 0 for nothing)
    /// in the header's basis field. With `row_weights` (one positive weight per token) the
    /// factors are those of the rank-`r` minimiser of the weighted error
    /// ([`super::metric`]): the SVD of the rows scaled by `sqrt(w_i)`, the left factor scaled
    /// back. The payload is the same kind either way.
    pub(super) fn encode_tagged(
        &self,
        x: &Activation,
        centre: u64,
        name: &str,
        row_weights: Option<&[f32]>,
    ) -> Result<Vec<u8>> {
        check_finite(&x.values, name)?;
        let (n, d) = (x.tokens, x.features);
        let r = self.effective_rank(n, d);
        if r == 0 {
            return Err(Error::codec(name, "rank 0 sends nothing"));
        }
        let roots: Option<Vec<f32>> = row_weights.map(|w| w.iter().map(|w| w.sqrt()).collect());
        let scaled: Vec<f32>;
        let values = match &roots {
            Some(roots) if roots.len() == n => {
                scaled = x
                    .values
                    .chunks(d.max(1))
                    .zip(roots)
                    .flat_map(|(row, s)| row.iter().map(move |v| v * s))
                    .collect();
                &scaled
            }
            Some(roots) => {
                return Err(Error::codec(
                    name,
                    format!("{} row weights for {n} tokens", roots.len()),
                ));
            }
            None => &x.values,
        };
        let m = MatRef::from_row_major_slice(values, n, d);
        let svd = m
            .thin_svd()
            .map_err(|e| Error::codec(name, format!("SVD did not converge: {e:?}")))?;
        let (u, s, v) = (svd.U(), svd.S().column_vector(), svd.V());
        let mut us = Vec::with_capacity(n * r);
        for i in 0..n {
            let back = roots.as_ref().map_or(1.0, |roots| 1.0 / roots[i]);
            us.extend((0..r).map(|j| u[(i, j)] * s[j] * back));
        }
        let mut vt = Vec::with_capacity(r * d);
        for j in 0..r {
            vt.extend((0..d).map(|i| v[(i, j)]));
        }
        let header = Header {
            kind: Kind::RequestSvd,
            precision: self.precision,
            tokens: n,
            features: d,
            rank: r,
            basis: centre,
        };
        let mut out = header.start(name, self.encoded_len(n, d) - HEADER_LEN)?;
        self.precision.write_block(&us, n, r, &mut out);
        self.precision.write_block(&vt, r, d, &mut out);
        Ok(out)
    }

    /// Decodes factors written with centre fingerprint `centre` (anything else is refused: a
    /// centred payload read without its centre, or the reverse, would be silently wrong).
    pub(super) fn decode_tagged(
        &self,
        bytes: &[u8],
        centre: u64,
        name: &str,
    ) -> Result<Activation> {
        let (h, rest) = Header::read(bytes, name, Kind::RequestSvd, self.precision)?;
        if h.basis != centre {
            return Err(Error::codec(
                name,
                format!(
                    "payload was centred on {:#x}, this codec expects {centre:#x} (0: none)",
                    h.basis
                ),
            ));
        }
        if h.rank > h.tokens.min(h.features) {
            return Err(Error::codec(
                name,
                format!("rank {} exceeds min({}, {})", h.rank, h.tokens, h.features),
            ));
        }
        let (us, rest) = self.precision.read_block(rest, h.tokens, h.rank, name)?;
        let (vt, rest) = self.precision.read_block(rest, h.rank, h.features, name)?;
        expect_end(rest, name)?;
        let a = MatRef::from_row_major_slice(&us, h.tokens, h.rank);
        let b = MatRef::from_row_major_slice(&vt, h.rank, h.features);
        let x: Mat<f32> = a * b;
        Activation::new(h.tokens, h.features, row_major(x.as_ref()))
    }
}

/// The values of `m` in row-major order.
pub(crate) fn row_major(m: MatRef<'_, f32>) -> Vec<f32> {
    let mut out = Vec::with_capacity(m.nrows() * m.ncols());
    for i in 0..m.nrows() {
        out.extend((0..m.ncols()).map(|j| m[(i, j)]));
    }
    out
}
