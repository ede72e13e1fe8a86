//! Streamed runs on this machine (the compute costs the planner reads are measured by
//! `collab_bench::sti::compute_costs`).

use anyhow::Result;
use collab_backends::candle::CandleBackend;
use collab_core::cost::{median, quantile};
use collab_core::model::Input;
use collab_policies::shard::exec::{ExecConfig, Executor};
use collab_policies::shard::meter::{peak_rss_bytes, reset_peak_rss};
use collab_policies::shard::{Fidelity, ShardKey};

type Be = CandleBackend;

/// What streaming one configuration measured over its requests.
#[derive(Clone, Debug)]
pub(crate) struct Streamed {
    pub(crate) p50_ms: f64,
    pub(crate) p95_ms: f64,
    pub(crate) peak_weight_bytes: u64,
    pub(crate) io_bytes: u64,
    pub(crate) max_wait_ms: f64,
    /// The most any layer started after the plan's promised start (0 without a plan).
    pub(crate) max_late_ms: f64,
    pub(crate) peak_rss_bytes: Option<u64>,
}

impl Streamed {
    /// Nothing measured (a configuration that did not run).
    pub(crate) fn none() -> Self {
        Self {
            p50_ms: f64::NAN,
            p95_ms: f64::NAN,
            peak_weight_bytes: 0,
            io_bytes: 0,
            max_wait_ms: 0.0,
            max_late_ms: 0.0,
            peak_rss_bytes: None,
        }
    }

    /// A model held in memory: latencies `ms`, `weights` bytes resident, no IO.
    pub(crate) fn resident(ms: &[f64], weights: u64) -> Self {
        Self {
            p50_ms: median(ms),
            p95_ms: quantile(ms, 0.95),
            peak_weight_bytes: weights,
            ..Self::none()
        }
    }
}

/// Streams `sub` for every request (after one warm-up) with `preload` resident and a loader
/// buffer of `buffer_bytes`; `planned_starts` (a plan's promised layer starts) measures how
/// late layers really started.
pub(crate) fn stream(
    exec: &mut Executor<Be>,
    sub: &[Vec<(usize, Fidelity)>],
    preload: &[(ShardKey, Fidelity)],
    buffer_bytes: u64,
    requests: &[Input<Be>],
    planned_starts: Option<&[f64]>,
) -> Result<Streamed> {
    let cfg = exec.config();
    exec.set_config(ExecConfig {
        buffer_bytes,
        ..cfg
    });
    exec.set_preload(preload)?;
    if let Some(first) = requests.first() {
        exec.run(sub, first)?;
    }
    let rss_reset = reset_peak_rss();
    let mut lat = Vec::new();
    let (mut peak, mut io, mut wait, mut late) = (0u64, 0u64, 0f64, 0f64);
    for r in requests {
        let (_, rep) = exec.run(sub, r)?;
        if let Some(p) = planned_starts {
            for (t, &planned) in rep.layers.iter().zip(p) {
                late = late.max((t.start_s - planned) * 1e3);
            }
        }
        lat.push(rep.latency_s * 1e3);
        peak = peak.max(rep.peak_weight_bytes);
        io = io.max(rep.io_bytes);
        wait = wait.max(rep.wait_s * 1e3);
    }
    exec.set_preload(&[])?;
    Ok(Streamed {
        p50_ms: median(&lat),
        p95_ms: quantile(&lat, 0.95),
        peak_weight_bytes: peak,
        io_bytes: io,
        max_wait_ms: wait,
        max_late_ms: late,
        peak_rss_bytes: if rss_reset { peak_rss_bytes() } else { None },
    })
}
