//! Coefficients in a shared basis (SPEC §1, "calibrated basis"): the device sends
//! `(X - mean) P_r` (`n x r`); the server computes `coefficients P_r^T + mean`.

use std::sync::Arc;

use collab_core::split::{Activation, ActivationCodec};
use collab_core::{Error, Result};
use faer::{Mat, MatRef};

use super::basis::Basis;
use super::centre::PositionMean;
use super::quant::Precision;
use super::request::row_major;
use super::wire::{HEADER_LEN, Header, Kind, check_finite, expect_end};

/// Projects onto the leading `rank` components of a shared [`Basis`].
#[derive(Clone, Debug)]
pub struct ProjectedCodec {
    /// A short label for the basis family in names (`pca`, `wsvd`).
    pub label: &'static str,
    /// The shared basis.
    pub basis: Arc<Basis>,
    /// Components kept (clamped to the basis rank).
    pub rank: usize,
    /// Precision of the coefficients.
    pub precision: Precision,
    /// A per-position mean subtracted before projecting and added back after (`cpca`), whose
    /// basis was fitted on calibration activations centred the same way.
    pub centre: Option<Arc<PositionMean>>,
}

impl ProjectedCodec {
    /// The fingerprint of everything shared that the payload depends on.
    fn fingerprint(&self) -> u64 {
        match &self.centre {
            Some(c) => centred_fingerprint(&self.basis, c),
            None => self.basis.fingerprint,
        }
    }

    /// Exact bytes of `tokens` rows of `rank` coefficients at `precision`.
    pub fn len_for(precision: Precision, rank: usize, tokens: usize) -> usize {
        HEADER_LEN + precision.block_len(tokens, rank)
    }

    fn rank(&self) -> usize {
        self.rank.min(self.basis.rank())
    }
}

/// The fingerprint of a basis used around a per-position mean (never 0, which means "none").
pub(super) fn centred_fingerprint(basis: &Basis, centre: &PositionMean) -> u64 {
    (basis.fingerprint ^ centre.fingerprint.rotate_left(17)).max(1)
}

/// Reads the header of a payload of `kind` (`f32`) that `codec` coded on `basis` around
/// `centre`, padded to the budget of some rank, and returns it with the bytes after it.
///
/// `len_at(rank, tokens, features)` is the codec's budget. The budget's rank travels as the
/// length: a payload of any rank `1..=K` is read, so a server decodes without knowing the
/// device's rank; `own_rank` only names the length expected in the error.
///
/// # Errors
/// [`Error::Codec`] for [`Header::read`]'s reasons, another basis or centre (by fingerprint),
/// another feature count, or a payload whose length is no rank's budget.
pub(super) fn read_centred<'a>(
    bytes: &'a [u8],
    codec: &str,
    kind: Kind,
    (basis, centre): (&Basis, &PositionMean),
    len_at: impl Fn(usize, usize, usize) -> usize,
    own_rank: usize,
) -> Result<(Header, &'a [u8])> {
    let (h, rest) = Header::read(bytes, codec, kind, Precision::F32)?;
    let expected = centred_fingerprint(basis, centre);
    if h.basis != expected {
        return Err(Error::codec(
            codec,
            format!(
                "payload was coded on basis {:#x}, this server holds {expected:#x} ({}, centred)",
                h.basis, basis.origin
            ),
        ));
    }
    basis.check_features(h.features, codec)?;
    let (n, d) = (h.tokens, h.features);
    if !(1..=basis.rank()).any(|r| len_at(r, n, d) == bytes.len()) {
        return Err(Error::codec(
            codec,
            format!(
                "{} bytes for a {n} x {d} activation, expected {}",
                bytes.len(),
                len_at(own_rank, n, d)
            ),
        ));
    }
    Ok((h, rest))
}

/// The coefficients of `x` on the leading `rank` components of `basis` (`n x rank`):
/// `(X - M - mean) P_r^T`, `M` the per-position `centre` if given, `mean` the basis's own.
///
/// # Errors
/// [`Error::Codec`] (attributed to `codec`) if `centre` cannot shift `x`.
pub(super) fn project(
    basis: &Basis,
    centre: Option<&PositionMean>,
    x: &Activation,
    rank: usize,
    codec: &str,
) -> Result<Mat<f32>> {
    let (n, d) = (x.tokens, x.features);
    let shifted;
    let x = match centre {
        Some(c) => {
            let mut y = x.clone();
            c.shift(&mut y, -1.0, codec)?;
            shifted = y;
            &shifted
        }
        None => x,
    };
    let xm = MatRef::from_row_major_slice(&x.values, n, d);
    let centred;
    let xm = match &basis.mean {
        Some(mean) => {
            centred = Mat::<f32>::from_fn(n, d, |i, j| xm[(i, j)] - mean[j]);
            centred.as_ref()
        }
        None => xm,
    };
    Ok(xm * basis.leading(rank).transpose())
}

/// The activation that coefficients on the leading `coeff.ncols()` components of `basis`
/// rebuild: `coeff P_r + mean`, shifted back onto `centre` if given ([`project`]'s inverse up
/// to the dropped components).
///
/// # Errors
/// [`Error::Codec`] (attributed to `codec`) if `centre` cannot shift the result.
pub(super) fn rebuild(
    basis: &Basis,
    centre: Option<&PositionMean>,
    coeff: MatRef<'_, f32>,
    codec: &str,
) -> Result<Activation> {
    let x: Mat<f32> = coeff * basis.leading(coeff.ncols());
    let mut values = row_major(x.as_ref());
    if let Some(mean) = &basis.mean {
        for row in values.chunks_mut(basis.features) {
            row.iter_mut().zip(mean).for_each(|(v, m)| *v += m);
        }
    }
    let mut x = Activation::new(coeff.nrows(), basis.features, values)?;
    if let Some(c) = centre {
        c.shift(&mut x, 1.0, codec)?;
    }
    Ok(x)
}

impl ActivationCodec for ProjectedCodec {
    fn name(&self) -> String {
        match self.precision {
            Precision::F32 => format!("{}-r{}", self.label, self.rank),
            p => format!("{}-{}-r{}", self.label, p.name(), self.rank),
        }
    }

    fn encoded_len(&self, tokens: usize, _features: usize) -> usize {
        Self::len_for(self.precision, self.rank(), tokens)
    }

    fn encode(&self, x: &Activation) -> Result<Vec<u8>> {
        let name = self.name();
        check_finite(&x.values, &name)?;
        self.basis.check_features(x.features, &name)?;
        let (n, d, r) = (x.tokens, x.features, self.rank());
        let coeff = project(&self.basis, self.centre.as_deref(), x, r, &name)?;
        let header = Header {
            kind: Kind::Projected,
            precision: self.precision,
            tokens: n,
            features: d,
            rank: r,
            basis: self.fingerprint(),
        };
        let mut out = header.start(&name, self.precision.block_len(n, r))?;
        self.precision
            .write_block(&row_major(coeff.as_ref()), n, r, &mut out);
        Ok(out)
    }

    fn declared_shape(&self, bytes: &[u8]) -> Result<(usize, usize)> {
        Header::shape(bytes, &self.name(), Kind::Projected, self.precision)
    }

    fn decode(&self, bytes: &[u8]) -> Result<Activation> {
        let name = self.name();
        let (h, rest) = Header::read(bytes, &name, Kind::Projected, self.precision)?;
        if h.basis != self.fingerprint() {
            return Err(Error::codec(
                &name,
                format!(
                    "payload was projected on basis {:#x}, this server holds {:#x} ({}{})",
                    h.basis,
                    self.fingerprint(),
                    self.basis.origin,
                    if self.centre.is_some() {
                        ", centred"
                    } else {
                        ""
                    }
                ),
            ));
        }
        self.basis.check_features(h.features, &name)?;
        if h.rank > self.basis.rank() {
            return Err(Error::codec(
                &name,
                format!(
                    "rank {} exceeds the basis rank {}",
                    h.rank,
                    self.basis.rank()
                ),
            ));
        }
        let (coeff, rest) = self.precision.read_block(rest, h.tokens, h.rank, &name)?;
        expect_end(rest, &name)?;
        let c = MatRef::from_row_major_slice(&coeff, h.tokens, h.rank);
        let x = rebuild(&self.basis, self.centre.as_deref(), c, &name)?;
        Ok(x)
    }
}
