//! From a split choice to what the device does, as pure functions: parsing the selector's
//! codec names, the server's queueing estimate, the budget left for the server, top-k.

use std::str::FromStr;
use std::time::Duration;

use collab_policies::svd::{Family, SplitBases};

use super::error::ClientError;
use crate::wire::{RAW_RGB8, ServerLoad};

/// What the device does for one request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Plan {
    /// Split 0: send the cropped image as [`RAW_RGB8`] pixels; the server runs everything.
    ServerOnly,
    /// Run the embedding and blocks `0..split`, encode the activation with `family` at `rank`
    /// (ignored by plain codecs) and send it.
    Split {
        /// The split point, `1..L`.
        split: usize,
        /// The codec family (one whose shared basis the device holds, if it needs one).
        family: Family,
        /// The rank of SVD codecs.
        rank: usize,
    },
    /// Split `L`: run the whole model on the device; nothing is sent.
    DeviceOnly,
}

impl Plan {
    /// The codec name a request carries on the wire (`rgb8`, or the family without its rank:
    /// the rank travels in the payload); `none` for device-only.
    pub fn wire_codec(&self) -> String {
        match self {
            Plan::ServerOnly => RAW_RGB8.into(),
            Plan::Split { family, .. } => family.to_string(),
            Plan::DeviceOnly => "none".into(),
        }
    }

    /// The split point `k`, given the model's `layers`.
    pub fn split(&self, layers: usize) -> usize {
        match self {
            Plan::ServerOnly => 0,
            Plan::Split { split, .. } => *split,
            Plan::DeviceOnly => layers,
        }
    }
}

/// Parses a [`collab_core::split::SplitChoice`]'s split point and codec name, as
/// [`collab_policies::split::SplitSelector`] writes them: `raw` (or `rgb8`) at split 0, `none`
/// at split `layers`, and in between a family name (`f32`, `int8`, `svd-int8`, ...) with an
/// optional `-r<rank>` (`svd-int8-r55`, `int8-r192`); SVD families need the rank.
///
/// The calibrated families (`cpca`, `mpca`, `tpca`, ...) need `bases` holding that split
/// point (the file the server was started with, see [`SplitBases`]).
///
/// # Errors
/// [`ClientError::Local`] for a split past the model, a codec that does not fit its split
/// point, an unknown codec, a missing rank, or a family that needs a shared basis the device
/// does not hold at that split (`wsvd` never: its basis is not in the file).
pub fn parse_plan(
    split: usize,
    codec: &str,
    layers: usize,
    bases: Option<&SplitBases>,
) -> Result<Plan, ClientError> {
    let local = |m: String| Err(ClientError::Local(m));
    if split > layers {
        return local(format!("split {split} is past the model's {layers} blocks"));
    }
    let server_only = codec == "raw" || codec == RAW_RGB8;
    match (split, codec) {
        (0, _) if server_only => return Ok(Plan::ServerOnly),
        (0, _) => return local(format!("split 0 sends the raw image, not `{codec}`")),
        (_, "none") if split == layers => return Ok(Plan::DeviceOnly),
        (_, "none") => return local(format!("codec `none` (device-only) at split {split}")),
        _ if split == layers => {
            return local(format!("split {split} = L is device-only, not `{codec}`"));
        }
        _ if server_only => return local(format!("codec `{codec}` at split {split}")),
        _ => {}
    }
    let (name, rank) = match codec.rsplit_once("-r") {
        Some((name, r)) if !r.is_empty() && r.bytes().all(|b| b.is_ascii_digit()) => {
            let rank = r
                .parse::<usize>()
                .map_err(|e| ClientError::Local(format!("rank of `{codec}`: {e}")))?;
            (name, Some(rank))
        }
        _ => (codec, None),
    };
    let family = Family::from_str(name).map_err(|e| ClientError::Local(e.to_string()))?;
    if SplitBases::lookup(bases, split, family).is_none() {
        return local(format!(
            "codec `{codec}` needs a shared basis at split {split} this device does not hold"
        ));
    }
    let rank = match (family, rank) {
        (Family::Plain(_), r) => r.unwrap_or(0),
        (_, Some(r)) if r > 0 => r,
        _ => return local(format!("codec `{codec}` needs a rank: `{name}-r<rank>`")),
    };
    Ok(Plan::Split {
        split,
        family,
        rank,
    })
}

/// The server's queueing delay a new request can expect, seconds, from its latest
/// [`ServerLoad`]: the work the queued requests still need, spread over batches of `batch`
/// requests (the batch size this device's answers reported; at least 1),
///
/// ```text
/// sum over positions p of  queues[p] x (position_ms[p] + ... + position_ms[L]) / batch
/// ```
///
/// A request queued at position `p` still needs one pass through each position `p..=L`, and
/// a pass serves up to `batch` requests. It ignores that a new request joins running batches,
/// so it errs on the high side under load. Missing or non-finite entries count as 0.
pub fn queue_estimate(load: &ServerLoad, batch: u32) -> f64 {
    let ms = |v: f32| {
        let v = f64::from(v);
        if v.is_finite() && v > 0.0 { v } else { 0.0 }
    };
    let mut remaining = 0.0; // ms of positions p..=L, built from the end
    let mut work = 0.0;
    for p in (0..load.queues.len()).rev() {
        remaining += load.position_ms.get(p).copied().map_or(0.0, ms);
        work += f64::from(load.queues[p]) * remaining;
    }
    work / f64::from(batch.max(1)) / 1e3
}

/// What the server has of the deadline once the device's part took `elapsed` and the request
/// still has half a round trip to travel; `None` if nothing is left.
pub fn server_budget(deadline: Duration, elapsed: Duration, rtt: Duration) -> Option<Duration> {
    deadline
        .checked_sub(elapsed)?
        .checked_sub(rtt / 2)
        .filter(|d| !d.is_zero())
}

/// The `k` largest logits with their classes, best first (NaNs last).
pub fn top_k(logits: &[f32], k: usize) -> Vec<(u32, f32)> {
    let mut v: Vec<(u32, f32)> = logits
        .iter()
        .enumerate()
        .map(|(i, &x)| (u32::try_from(i).unwrap_or(u32::MAX), x))
        .collect();
    v.sort_by(|a, b| match (a.1.is_nan(), b.1.is_nan()) {
        (false, false) => b.1.total_cmp(&a.1),
        (an, bn) => an.cmp(&bn),
    });
    v.truncate(k);
    v
}
