//! The devices the demo starts: each a separate process with its own compute profile and link.

/// One device's emulated hardware and network.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Profile {
    /// A name for the view.
    pub(crate) name: &'static str,
    /// How much slower than this machine the device computes (it sleeps `slowdown - 1` times
    /// its measured compute; see the device client).
    pub(crate) slowdown: f64,
    /// Link bandwidth, Mbit/s.
    pub(crate) mbit: f64,
    /// Round-trip time, ms.
    pub(crate) rtt_ms: f64,
    /// One-way jitter, ms.
    pub(crate) jitter_ms: f64,
    /// Segment loss probability.
    pub(crate) loss: f64,
}

/// The profiles devices cycle through: a fast phone on good Wi-Fi down to a slow board on a
/// lossy cellular link.
pub(crate) const PROFILES: [Profile; 4] = [
    Profile {
        name: "phone-fast/wifi",
        slowdown: 1.0,
        mbit: 100.0,
        rtt_ms: 8.0,
        jitter_ms: 2.0,
        loss: 0.0,
    },
    Profile {
        name: "phone-mid/4g",
        slowdown: 2.0,
        mbit: 20.0,
        rtt_ms: 35.0,
        jitter_ms: 5.0,
        loss: 0.0,
    },
    Profile {
        name: "board-slow/3g",
        slowdown: 4.0,
        mbit: 4.0,
        rtt_ms: 60.0,
        jitter_ms: 10.0,
        loss: 0.005,
    },
    Profile {
        name: "laptop/ethernet",
        slowdown: 1.5,
        mbit: 400.0,
        rtt_ms: 2.0,
        jitter_ms: 0.0,
        loss: 0.0,
    },
];

/// The profile of device `i`, with the bandwidth and RTT overridden when given.
pub(crate) fn profile(i: usize, mbit: Option<f64>, rtt_ms: Option<f64>) -> Profile {
    let mut p = PROFILES[i % PROFILES.len()].clone();
    if let Some(m) = mbit {
        p.mbit = m;
    }
    if let Some(r) = rtt_ms {
        p.rtt_ms = r;
    }
    p
}
