//! The plain roofline (SPEC §7): `time = max(flops / peak, bytes / bandwidth)`.

use collab_core::cost::{CostModel, Workload};
use collab_core::{Error, Result};

use super::DeviceSpec;

/// A [`CostModel`] for operator workloads from a device's peak compute and bandwidth alone.
#[derive(Clone, Debug, PartialEq)]
pub struct Roofline {
    /// The device.
    pub spec: DeviceSpec,
}

impl Roofline {
    /// The roofline of `spec`.
    ///
    /// # Errors
    /// [`Error::Config`] if the spec is invalid.
    pub fn new(spec: DeviceSpec) -> Result<Self> {
        spec.validate()?;
        Ok(Roofline { spec })
    }
}

/// Seconds of an operator workload under a roofline with `rate` FLOP/s and `bandwidth` B/s,
/// or a `NoPrediction` error naming `model` for any other workload.
pub(crate) fn operator_seconds(
    model: &dyn CostModel,
    work: &Workload,
    rate: impl Fn(f64) -> f64,
    bandwidth: f64,
) -> Result<f64> {
    match *work {
        Workload::Operator {
            class: _,
            flops,
            bytes,
        } => {
            let intensity = flops as f64 / bytes.max(1) as f64;
            let compute = if flops == 0 {
                0.0
            } else {
                flops as f64 / rate(intensity)
            };
            Ok(compute.max(bytes as f64 / bandwidth))
        }
        _ => Err(Error::NoPrediction {
            model: model.name(),
            workload: work.to_string(),
            reason: "a roofline prices operator workloads only".into(),
        }),
    }
}

impl CostModel for Roofline {
    fn name(&self) -> String {
        format!("roofline({})", self.spec.name)
    }

    fn seconds(&self, work: &Workload) -> Result<f64> {
        operator_seconds(self, work, |_| self.spec.peak_flops, self.spec.bandwidth)
    }
}
