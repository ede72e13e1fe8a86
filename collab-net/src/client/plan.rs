//! From a split choice to what the device does, as pure functions: checking the strategy's
//! choice against the model and the codecs the device holds, the server's queueing estimate,
//! the budget left for the server, top-k.

use std::time::Duration;

use collab_core::split::{CodecId, SplitChoice};
use collab_policies::codec::{CodecContext, CodecRegistry};
use collab_policies::svd::SplitBases;

use super::error::ClientError;
use crate::wire::{RAW_RGB8, ServerLoad, raw_rgb8};

/// What the device does for one request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Plan {
    /// Split 0: send the cropped image as [`RAW_RGB8`] pixels; the server runs everything.
    ServerOnly,
    /// Run the embedding and blocks `0..split`, encode the activation with `codec` and send
    /// it.
    Split {
        /// The split point, `1..L`.
        split: usize,
        /// The codec (one the device's registry builds at `split` with the bases it holds).
        codec: CodecId,
    },
    /// Split `L`: run the whole model on the device; nothing is sent.
    DeviceOnly,
}

impl Plan {
    /// The codec id a request carries on the wire ([`raw_rgb8`] for server-only, the
    /// strategy's codec for a split); [`CodecId::none`] for device-only, which sends nothing.
    pub fn wire_codec(&self) -> CodecId {
        match self {
            Plan::ServerOnly => raw_rgb8(),
            Plan::Split { codec, .. } => codec.clone(),
            Plan::DeviceOnly => CodecId::none(),
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

/// The plan for a split strategy's `choice` on a model of `layers` blocks: server-only at
/// split 0 (codec [`CodecId::raw`] or [`RAW_RGB8`]), device-only at `layers`
/// ([`CodecId::none`]), and in between the chosen codec, which `codecs` must build at that
/// split with `bases` (the file the server was started with, for the calibrated codecs).
///
/// # Errors
/// [`ClientError::Local`] for a split past the model, a codec that does not fit its split
/// point, a codec family the registry does not know, a missing rank, or a shared basis the
/// device does not hold at that split.
pub fn plan_for(
    choice: &SplitChoice,
    layers: usize,
    codecs: &CodecRegistry,
    bases: Option<&SplitBases>,
) -> Result<Plan, ClientError> {
    let local = |m: String| Err(ClientError::Local(m));
    let (split, codec) = (choice.split, &choice.codec);
    if split > layers {
        return local(format!("split {split} is past the model's {layers} blocks"));
    }
    let raw = *codec == CodecId::raw() || codec.family() == RAW_RGB8;
    let none = *codec == CodecId::none();
    match split {
        0 if raw => return Ok(Plan::ServerOnly),
        0 => return local(format!("split 0 sends the raw image, not `{codec}`")),
        k if k == layers && none => return Ok(Plan::DeviceOnly),
        k if k == layers => return local(format!("split {k} = L is device-only, not `{codec}`")),
        _ if none => return local(format!("codec `none` (device-only) at split {split}")),
        _ if raw => return local(format!("codec `{codec}` (the raw input) at split {split}")),
        _ => {}
    }
    let context = CodecContext { split, bases };
    codecs
        .build(codec, &context)
        .map_err(|e| ClientError::Local(format!("split {split}: {e}")))?;
    Ok(Plan::Split {
        split,
        codec: codec.clone(),
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

/// The `k` largest logits with their classes, best first (NaNs last, ties: the lower class
/// first). The server answers a classifier's requests with it; a device answering locally
/// uses it too, so both sides rank alike.
pub fn top_k(logits: &[f32], k: usize) -> Vec<(u32, f32)> {
    let mut v: Vec<(u32, f32)> = logits
        .iter()
        .enumerate()
        .map(|(i, &x)| (u32::try_from(i).unwrap_or(u32::MAX), x))
        .collect();
    v.sort_by(|a, b| match (a.1.is_nan(), b.1.is_nan()) {
        (false, false) => b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)),
        (an, bn) => an.cmp(&bn).then(a.0.cmp(&b.0)),
    });
    v.truncate(k);
    v
}
