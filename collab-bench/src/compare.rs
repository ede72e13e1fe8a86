//! A policy's sustainable rate on a replayed cost profile, and a side-by-side comparison.
//!
//! ```no_run
//! use std::sync::Arc;
//!
//! use collab_bench::compare::{FleetDevice, Scenario, compare};
//! use collab_core::cost::MeasuredProfile;
//! use collab_policies::batch::{PerSplitConfig, SharedModelConfig};
//!
//! let path = "collab-bench/profiles/h100-vit_base_patch16_224.estimate.json";
//! let profile = Arc::new(MeasuredProfile::load(path.as_ref())?);
//! let fleet = vec![FleetDevice {
//!     label: "jetson".into(),
//!     bandwidth: 20e6,
//!     rtt: 0.01,
//!     share: 1.0,
//!     slowdown: 100.0,
//!     split: 4,
//!     request_bytes: 197 * 768 * 4,
//! }];
//! let scenario = Scenario::fleet(profile, 197, &fleet, 0.9, 4000)?;
//! let rates = compare(
//!     &scenario,
//!     &[
//!         ("shared", &SharedModelConfig::new(8)),
//!         ("per-split", &PerSplitConfig { budget: 8 }),
//!     ],
//! )?;
//! println!("shared/per-split = {:.2}", rates[0].1.rate / rates[1].1.rate);
//! # Ok::<(), collab_core::Error>(())
//! ```

use std::sync::Arc;

use collab_core::batch::BatchPolicyConfig;
use collab_core::cost::{CostModel, MeasuredProfile, Scaled, Workload};
use collab_core::{Error, Result};

use crate::search::RateSearch;
use crate::serving::{
    DevicePlan, Load, ProfileClock, ReplayExecutor, Trial, capacity_guess, device_seconds,
    remaining, run_trial,
};

/// One kind of device in a fleet, against the server's profile.
#[derive(Clone, Debug, PartialEq)]
pub struct FleetDevice {
    /// A name for reports.
    pub label: String,
    /// Uplink and downlink bytes per second.
    pub bandwidth: f64,
    /// Round-trip time in seconds.
    pub rtt: f64,
    /// Share of the arrivals (a positive weight).
    pub share: f64,
    /// How many times slower than the server it computes a block (its costs are the server
    /// profile's, scaled).
    pub slowdown: f64,
    /// The block its requests enter the server at (0: it sends the raw input).
    pub split: usize,
    /// Bytes a request carries to the server at that split.
    pub request_bytes: usize,
}

/// Devices splitting one model, and the server's cost profile: what a comparison replays.
#[derive(Clone, Debug)]
pub struct Scenario {
    /// The server's per-block × batch-size cost profile.
    pub profile: Arc<MeasuredProfile>,
    /// Tokens per request entering a block.
    pub tokens: usize,
    /// The devices' plans.
    pub devices: Vec<DevicePlan<()>>,
    /// The least number of arrivals in each trial's measured window.
    pub requests: usize,
    /// Seeded arrival traces pooled at each rate tried.
    pub seeds: u64,
    /// Bisection steps of the rate search.
    pub steps: usize,
}

/// The answer of [`Scenario::sustainable_rate`].
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Sustained {
    /// Where the fraction on time crosses 90% (interpolated; see [`RateSearch::crossing`]).
    pub rate: f64,
    /// The highest rate tried and sustained.
    pub tried: f64,
    /// The pooled trial at that rate.
    pub trial: Trial,
    /// The search's top was still sustained: `rate` is a lower bound.
    pub capped: bool,
}

impl Scenario {
    /// A scenario of `fleet` on `profile`: each device's deadline is `deadline_factor` × the
    /// time it would take to run the whole model itself, answers carry `response_bytes`; 240
    /// requests per trial, 3 seeds, 7 bisection steps (change the fields to taste).
    ///
    /// # Errors
    /// [`Error::Config`] for an empty fleet, zero tokens, a split past the profile's blocks, a
    /// non-positive bandwidth, share, slowdown or deadline factor, or a profile whose blocks
    /// cost nothing; what the profile reports for a stage it lacks (embedding, blocks, head).
    pub fn fleet(
        profile: Arc<MeasuredProfile>,
        tokens: usize,
        fleet: &[FleetDevice],
        deadline_factor: f64,
        response_bytes: usize,
    ) -> Result<Scenario> {
        if fleet.is_empty()
            || tokens == 0
            || !(deadline_factor > 0.0 && deadline_factor.is_finite())
        {
            return Err(Error::Config(format!(
                "a scenario needs devices, tokens and a positive deadline factor (got {} devices, {tokens} tokens, factor {deadline_factor})",
                fleet.len()
            )));
        }
        let layers = profile.layers;
        // The replay prices every step from the profile: it must price each stage, at a cost.
        let prices = [
            profile.seconds(&Workload::Embed { batch: 1, tokens })?,
            profile.blocks_seconds(0..layers, 1, tokens)?,
            profile.seconds(&Workload::Head { batch: 1, tokens })?,
        ];
        if layers == 0 || prices.iter().any(|p| !(p.is_finite() && *p >= 0.0)) || prices[1] <= 0.0 {
            return Err(Error::Config(format!(
                "profile {}: embed, blocks and head at {tokens} tokens cost {prices:?} s; the blocks must cost something",
                profile.model
            )));
        }
        let mut devices = vec![];
        for d in fleet {
            let positive = |x: f64| x > 0.0 && x.is_finite();
            let in_range = d.split <= layers
                && positive(d.bandwidth)
                && positive(d.share)
                && positive(d.slowdown)
                && d.rtt >= 0.0
                && d.rtt.is_finite();
            if !in_range {
                return Err(Error::Config(format!(
                    "device {}: split {} of {layers} blocks, bandwidth {}, share {}, slowdown {}, rtt {}: out of range",
                    d.label, d.split, d.bandwidth, d.share, d.slowdown, d.rtt
                )));
            }
            let device = Scaled {
                inner: profile.clone(),
                factor: d.slowdown,
                label: d.label.clone(),
            };
            let alone = device_seconds(&device, layers, tokens)?
                + device.seconds(&Workload::Head { batch: 1, tokens })?;
            devices.push(DevicePlan {
                weight: d.share,
                split: d.split,
                to_server: device_seconds(&device, d.split, tokens)?
                    + d.request_bytes as f64 / d.bandwidth
                    + d.rtt / 2.0,
                back: response_bytes as f64 / d.bandwidth + d.rtt / 2.0,
                budget: deadline_factor * alone,
                payload: (),
            });
        }
        Ok(Scenario {
            profile,
            tokens,
            devices,
            requests: 240,
            seeds: 3,
            steps: 7,
        })
    }

    /// A first guess of the sustainable rate at budget batch `budget`: the inverse of the
    /// mean server time per request at that batch, from the profile.
    pub fn capacity_guess(&self, budget: usize) -> f64 {
        capacity_guess(&self.profile, self.tokens, &self.devices, budget)
    }

    /// One trial of `policy` at `rate` on the arrival trace of `seed`, replaying the profile.
    ///
    /// # Errors
    /// What building the policy reports; [`Error::Config`] if it refuses a device's split.
    pub fn trial(&self, policy: &dyn BatchPolicyConfig, rate: f64, seed: u64) -> Result<Trial> {
        let mut clock = ProfileClock::new(self.profile.clone(), self.tokens);
        run_trial(
            policy.build()?,
            ReplayExecutor::new(self.profile.layers),
            remaining(&self.profile, self.tokens),
            &mut clock,
            &Load {
                devices: &self.devices,
                rate,
                requests: self.requests,
                seed,
            },
        )
    }

    /// The highest rate at which `policy` answers at least 90% of requests within their
    /// deadlines (SPEC §2's sustainable throughput), by [`RateSearch`] over seeded traces
    /// pooled per rate. The replay is deterministic: the same scenario gives the same answer.
    ///
    /// # Errors
    /// As [`Scenario::trial`].
    pub fn sustainable_rate(&self, policy: &dyn BatchPolicyConfig) -> Result<Sustained> {
        let budget = policy.build()?.budget();
        let mut search = RateSearch::new(self.capacity_guess(budget), self.steps);
        while let Some(rate) = search.next_rate() {
            let first = 1 + search.look() * self.seeds.max(1);
            let mut pooled = Trial::default();
            for seed in first..first + self.seeds.max(1) {
                pooled = pooled.pooled(self.trial(policy, rate, seed)?);
            }
            search.record(rate, pooled);
        }
        let (tried, trial) = search.best();
        Ok(Sustained {
            rate: search.crossing(),
            tried,
            trial,
            capped: search.capped(),
        })
    }
}

/// The sustainable rate of each named policy on `scenario`, in order.
///
/// # Errors
/// The first policy's error, named.
pub fn compare(
    scenario: &Scenario,
    policies: &[(&str, &dyn BatchPolicyConfig)],
) -> Result<Vec<(String, Sustained)>> {
    policies
        .iter()
        .map(|(name, p)| {
            scenario
                .sustainable_rate(*p)
                .map(|s| (name.to_string(), s))
                .map_err(|e| Error::Config(format!("policy {name}: {e}")))
        })
        .collect()
}
