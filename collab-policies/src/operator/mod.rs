//! Operator-level placement of an LLM between a device and a cloud (SPEC §7).
//!
//! - [`DeviceSpec`] presets (V100S, A100, Jetson Nano, Snapdragon 8s Gen 3) and the [`Link`];
//! - cost models for operator workloads: the plain [`Roofline`], and the
//!   [`CalibratedRoofline`] fitted from a measured [`Calibration`] (attainable rate a monotone
//!   [`RateCurve`] over intensity);
//! - [`Plan`]: a placement with its transfers, latency and cloud cost;
//! - [`PlacementPolicy`]: [`Greedy`] (SPEC §7), [`Exact`] (Pareto dynamic programming) and the
//!   [`Everything`] baselines (device-only, cloud-only);
//! - [`plan_request`]: a prefill and its decode steps under TTFT/TPOT targets, with the KV
//!   cache kept where attention runs;
//! - [`SplitExecutor`]: runs plans on real backends, device and cloud each with a copy of the
//!   decoder and its own KV cache, and reports the bytes moved and per-operator times.

mod calibrated;
mod chain;
mod device;
mod exact;
mod execute;
mod greedy;
mod plan;
mod policy;
mod request;
mod roofline;
mod spline;
#[cfg(test)]
mod tests;

pub use calibrated::{
    CalibratedRoofline, Calibration, CalibrationPoint, ClassCurves, MIN_BAND_POINTS, SizeBand,
};
pub use chain::Pins;
pub use device::{DEVICE_PRESETS, DeviceSpec, Group, Link};
pub use exact::Exact;
pub use execute::{Generation, OpTiming, SplitExecutor};
pub use greedy::Greedy;
pub use plan::{Plan, Pricing, Side, Step, placement_lines};
pub use policy::{Everything, Placement, PlacementPolicy};
pub use request::{KvStrategy, RequestPlan, Sla, plan_request};
pub use roofline::Roofline;
pub use spline::{Knot, RateCurve};
