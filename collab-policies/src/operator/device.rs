//! Hardware descriptions: peak compute, memory bandwidth and price (SPEC §7), and the link
//! between device and cloud.

use serde::{Deserialize, Serialize};

use collab_core::{Error, Result};

/// One machine as the roofline sees it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DeviceSpec {
    /// Name (`a100`).
    pub name: String,
    /// Peak compute in FLOP/s at the precision used (fp16 tensor cores for the GPUs).
    pub peak_flops: f64,
    /// Memory bandwidth in bytes/s.
    pub bandwidth: f64,
    /// Price of one second of compute in dollars (0 for the user's own device).
    pub price_per_second: f64,
}

/// Names accepted by [`DeviceSpec::preset`].
pub const DEVICE_PRESETS: [&str; 4] = ["v100s", "a100", "jetson-nano", "snapdragon-8s-gen3"];

impl DeviceSpec {
    /// NVIDIA V100S: 130 TFLOP/s (tensor), 1134 GB/s, $1.5e-5/s (SPEC §7, Group-L cloud).
    pub fn v100s() -> Self {
        Self::new("v100s", 130e12, 1134e9, 1.5e-5)
    }

    /// NVIDIA A100: 312 TFLOP/s, 2039 GB/s, $4e-5/s (SPEC §7, Group-H cloud).
    pub fn a100() -> Self {
        Self::new("a100", 312e12, 2039e9, 4e-5)
    }

    /// NVIDIA Jetson Nano: 0.47 TFLOP/s, 25.6 GB/s (SPEC §7, Group-L device).
    pub fn jetson_nano() -> Self {
        Self::new("jetson-nano", 0.47e12, 25.6e9, 0.0)
    }

    /// Snapdragon 8s Gen 3: 8.5 TFLOP/s, 76.6 GB/s (SPEC §7, Group-H device).
    pub fn snapdragon_8s_gen3() -> Self {
        Self::new("snapdragon-8s-gen3", 8.5e12, 76.6e9, 0.0)
    }

    fn new(name: &str, peak_flops: f64, bandwidth: f64, price_per_second: f64) -> Self {
        DeviceSpec {
            name: name.into(),
            peak_flops,
            bandwidth,
            price_per_second,
        }
    }

    /// A preset by name (see [`DEVICE_PRESETS`]).
    ///
    /// # Errors
    /// [`Error::Config`] naming the known presets.
    pub fn preset(name: &str) -> Result<Self> {
        match name {
            "v100s" => Ok(Self::v100s()),
            "a100" => Ok(Self::a100()),
            "jetson-nano" => Ok(Self::jetson_nano()),
            "snapdragon-8s-gen3" => Ok(Self::snapdragon_8s_gen3()),
            other => Err(Error::Config(format!(
                "unknown device preset `{other}`; known: {} (or a calibration file)",
                DEVICE_PRESETS.join(", ")
            ))),
        }
    }

    /// Checks that peak, bandwidth and price are finite, the first two positive.
    ///
    /// # Errors
    /// [`Error::Config`] naming the field.
    pub fn validate(&self) -> Result<()> {
        let bad = |what: &str, v: f64| {
            Err(Error::Config(format!(
                "device `{}`: {what} = {v} is not valid",
                self.name
            )))
        };
        if !(self.peak_flops.is_finite() && self.peak_flops > 0.0) {
            return bad("peak_flops", self.peak_flops);
        }
        if !(self.bandwidth.is_finite() && self.bandwidth > 0.0) {
            return bad("bandwidth", self.bandwidth);
        }
        if !(self.price_per_second.is_finite() && self.price_per_second >= 0.0) {
            return bad("price_per_second", self.price_per_second);
        }
        Ok(())
    }
}

/// The network between device and cloud.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Link {
    /// Bytes per second, each way.
    pub bandwidth: f64,
    /// Round-trip time in seconds; one crossing costs half of it.
    pub rtt: f64,
}

impl Link {
    /// Seconds for one one-way transfer of `bytes`: `rtt / 2 + bytes / bandwidth`.
    pub fn one_way(&self, bytes: u64) -> f64 {
        self.rtt / 2.0 + bytes as f64 / self.bandwidth
    }

    /// Checks bandwidth > 0 and rtt ≥ 0.
    ///
    /// # Errors
    /// [`Error::Config`] naming the field.
    pub fn validate(&self) -> Result<()> {
        if !(self.bandwidth.is_finite() && self.bandwidth > 0.0) {
            return Err(Error::Config(format!(
                "link bandwidth {} must be > 0",
                self.bandwidth
            )));
        }
        if !(self.rtt.is_finite() && self.rtt >= 0.0) {
            return Err(Error::Config(format!("link rtt {} must be >= 0", self.rtt)));
        }
        Ok(())
    }
}

/// A cloud and a device evaluated together (SPEC §7's groups).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Group {
    /// Name for reports (`group-L`).
    pub name: String,
    /// The cloud machine.
    pub cloud: DeviceSpec,
    /// The end device.
    pub device: DeviceSpec,
}

impl Group {
    /// Group-L: V100S cloud, Jetson Nano device.
    pub fn low() -> Self {
        Group {
            name: "group-L".into(),
            cloud: DeviceSpec::v100s(),
            device: DeviceSpec::jetson_nano(),
        }
    }

    /// Group-H: A100 cloud, Snapdragon 8s Gen 3 device.
    pub fn high() -> Self {
        Group {
            name: "group-H".into(),
            cloud: DeviceSpec::a100(),
            device: DeviceSpec::snapdragon_8s_gen3(),
        }
    }
}
