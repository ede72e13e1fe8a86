//! Prices from a cost profile that the simulation and the device plans need.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use collab_core::Result;
use collab_core::cost::{CostModel, MeasuredProfile, Workload};

/// `remaining(p, b)`: the profile's seconds to finish a batch of `b` from position `p`
/// (blocks `p..L`, the head, and the embedding when `p = 0`), the estimate a
/// [`Worker`](collab_policies::batch::Worker) expires requests by. The worker asks it for
/// every queued request at every step, so answers are memoised.
pub fn remaining(
    profile: &Arc<MeasuredProfile>,
    tokens: usize,
) -> impl Fn(usize, usize) -> f64 + Send + 'static {
    let profile = profile.clone();
    let memo: Mutex<HashMap<(usize, usize), f64>> = Mutex::new(HashMap::new());
    move |p: usize, b: usize| {
        let mut memo = memo.lock().unwrap_or_else(PoisonError::into_inner);
        *memo
            .entry((p, b))
            .or_insert_with(|| price_remaining(&profile, tokens, p, b))
    }
}

fn price_remaining(profile: &MeasuredProfile, tokens: usize, p: usize, b: usize) -> f64 {
    let b = b.max(1);
    let l = profile.layers;
    let blocks = profile
        .blocks_seconds(p.min(l)..l, b, tokens)
        .unwrap_or(0.0);
    let head = profile
        .seconds(&Workload::Head { batch: b, tokens })
        .unwrap_or(0.0);
    let embed = if p == 0 {
        profile
            .seconds(&Workload::Embed { batch: b, tokens })
            .unwrap_or(0.0)
    } else {
        0.0
    };
    blocks + head + embed
}

/// Seconds a device needs for the embedding and blocks `0..k` alone (0 for `k = 0`, a
/// server-only request).
///
/// # Errors
/// What `device` reports for a workload it cannot price.
pub fn device_seconds(device: &dyn CostModel, k: usize, tokens: usize) -> Result<f64> {
    if k == 0 {
        return Ok(0.0);
    }
    Ok(device.seconds(&Workload::Embed { batch: 1, tokens })?
        + device.blocks_seconds(0..k, 1, tokens)?)
}

/// A first guess of the sustainable rate of `devices` at budget batch `budget`: the inverse of
/// the mean server time per request at that batch, from the profile (where a rate search
/// starts; see [`RateSearch::new`](crate::search::RateSearch::new)).
pub fn capacity_guess<P>(
    profile: &Arc<MeasuredProfile>,
    tokens: usize,
    devices: &[super::DevicePlan<P>],
    budget: usize,
) -> f64 {
    let budget = budget.max(1);
    let rem = remaining(profile, tokens);
    let total: f64 = devices.iter().map(|p| p.weight).sum();
    let per_request: f64 = devices
        .iter()
        .map(|p| p.weight * rem(p.split, budget) / budget as f64)
        .sum::<f64>()
        / total.max(1e-12);
    1.0 / per_request.max(1e-9)
}
