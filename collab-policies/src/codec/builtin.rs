//! The codec families of [`crate::svd`] as one [`CodecFactory`].

use collab_core::split::{ActivationCodec, CodecId};
use collab_core::{Error, Result};
use serde::{Deserialize, Serialize};

use super::{CodecContext, CodecFactory};
use crate::svd::{BasisNeed, Family, SplitBases};

/// Every family of [`crate::svd`] (`kind = "builtin"`): `f32`, `f16`, `bf16`, `int8`, and
/// `svd`, `csvd`, `pca`, `cpca`, `asvd`, `hsvd`, `lsvd`, `wsvd` at each precision
/// (`svd-int8`, ...), `tpca` and `mpca`.
///
/// Plain families take no rank (one given is ignored); the others need one (`svd-int8-r55`).
/// Families on a calibrated basis need [`CodecContext::bases`] holding the split point;
/// `wsvd`'s weight basis is never held (it is not in the bases file).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BuiltinCodecs;

#[typetag::serde(name = "builtin")]
impl CodecFactory for BuiltinCodecs {
    fn families(&self) -> Vec<String> {
        Family::all().map(|f| f.to_string()).collect()
    }

    fn build(&self, id: &CodecId, context: &CodecContext<'_>) -> Result<Box<dyn ActivationCodec>> {
        let family: Family = id.family().parse()?;
        let split = context.split;
        let Some(shared) = SplitBases::lookup(context.bases, split, family) else {
            let held = match context.bases {
                None => "no bases are loaded".to_owned(),
                Some(b) => format!(
                    "the bases cover splits {:?}{}",
                    b.splits().collect::<Vec<_>>(),
                    if family.basis_need() == BasisNeed::Weight {
                        " and hold no weight bases"
                    } else {
                        ""
                    }
                ),
            };
            return Err(Error::Config(format!(
                "codec `{id}` at split {split} needs a shared basis that is not held ({held}); \
                 f32, f16, bf16, int8 and svd[-f16|-bf16|-int8] need none"
            )));
        };
        let rank = match (family, id.rank()) {
            (Family::Plain(_), r) => r.unwrap_or(0),
            (_, Some(r)) if r > 0 => r,
            _ => {
                return Err(Error::Config(format!(
                    "codec `{id}` needs a rank of at least 1: `{family}-r<rank>`"
                )));
            }
        };
        let rank = usize::try_from(rank)
            .map_err(|_| Error::Config(format!("codec `{id}`: rank too large")))?;
        family.build_with(rank, shared)
    }
}
