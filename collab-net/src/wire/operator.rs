//! What an operator changes on running devices, and what devices tell the server about their
//! requests (protocol version 5): the messages behind the dashboard (`crate::dashboard`).
//!
//! - [`DeviceSettings`], server -> device: new limits (deadline, accuracy-loss limit), an
//!   emulated link, a request rate. Each field is optional; a device applies the ones present
//!   and keeps the rest. Both sides check it ([`DeviceSettings::check`]): the server before it
//!   sends, the device before it applies what a server sent.
//! - [`RequestReport`], device -> server: one finished request (its split point, codec,
//!   end-to-end latency and outcome) and the device's view of its link. It carries no input,
//!   activation or result. The server checks it ([`RequestReport::check`]) before it counts it.

use collab_core::split::CodecId;
use serde::{Deserialize, Serialize};

/// The longest deadline an operator may set, ms (one minute).
pub const MAX_DEADLINE_MS: f32 = 60_000.0;
/// The largest emulated bandwidth, Mbit/s.
pub const MAX_MBIT: f32 = 100_000.0;
/// The smallest emulated bandwidth, Mbit/s (a slower link makes every probe time out).
pub const MIN_MBIT: f32 = 0.05;
/// The longest emulated round trip, ms.
pub const MAX_RTT_MS: f32 = 10_000.0;
/// The highest request rate an operator may set, requests per second.
pub const MAX_RATE: f32 = 1_000.0;
/// The longest error kind a report may carry, bytes.
pub const MAX_KIND_LEN: usize = 64;

/// An emulated link: what a device's link emulator ([`crate::transport::Shaped`]) runs at.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct LinkSetting {
    /// Bandwidth each way, Mbit/s, in `[MIN_MBIT, MAX_MBIT]`.
    pub mbit: f32,
    /// Round-trip time, ms, in `[0, MAX_RTT_MS]`.
    pub rtt_ms: f32,
}

/// New settings for a device; `None` fields stay as they are.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct DeviceSettings {
    /// End-to-end deadline per request, ms, in `(0, MAX_DEADLINE_MS]`.
    pub deadline_ms: Option<f32>,
    /// The largest accuracy loss a split choice may cost, in `[0, 1]`.
    pub max_loss: Option<f32>,
    /// The link the device's emulator runs at (a device without an emulator ignores it).
    pub link: Option<LinkSetting>,
    /// Requests per second of a device or load generator sending at a rate, in
    /// `[0, MAX_RATE]` (0 pauses it); a device sending back to back ignores it.
    pub rate: Option<f32>,
}

fn within(name: &str, v: f32, low: f32, high: f32, open_low: bool) -> Result<(), String> {
    let ok = v.is_finite() && v <= high && if open_low { v > low } else { v >= low };
    if ok {
        Ok(())
    } else {
        let bracket = if open_low { '(' } else { '[' };
        Err(format!("{name} = {v} is outside {bracket}{low}, {high}]"))
    }
}

impl DeviceSettings {
    /// Whether every field present is in range.
    ///
    /// # Errors
    /// The first field out of range, named with its range (e.g. `deadline_ms = -5 is outside
    /// (0, 60000]`), or `no settings` when every field is `None`.
    pub fn check(&self) -> Result<(), String> {
        if *self == Self::default() {
            return Err(
                "no settings: give at least one of deadline_ms, max_loss, link, rate".into(),
            );
        }
        if let Some(d) = self.deadline_ms {
            within("deadline_ms", d, 0.0, MAX_DEADLINE_MS, true)?;
        }
        if let Some(l) = self.max_loss {
            within("max_loss", l, 0.0, 1.0, false)?;
        }
        if let Some(link) = self.link {
            within("mbit", link.mbit, MIN_MBIT, MAX_MBIT, false)?;
            within("rtt_ms", link.rtt_ms, 0.0, MAX_RTT_MS, false)?;
        }
        if let Some(r) = self.rate {
            within("rate", r, 0.0, MAX_RATE, false)?;
        }
        Ok(())
    }

    /// `self` without the fields `other` sets.
    pub fn without(self, other: DeviceSettings) -> DeviceSettings {
        DeviceSettings {
            deadline_ms: self.deadline_ms.filter(|_| other.deadline_ms.is_none()),
            max_loss: self.max_loss.filter(|_| other.max_loss.is_none()),
            link: self.link.filter(|_| other.link.is_none()),
            rate: self.rate.filter(|_| other.rate.is_none()),
        }
    }

    /// `self` with the fields `newer` sets replaced.
    pub fn merged(self, newer: DeviceSettings) -> DeviceSettings {
        DeviceSettings {
            deadline_ms: newer.deadline_ms.or(self.deadline_ms),
            max_loss: newer.max_loss.or(self.max_loss),
            link: newer.link.or(self.link),
            rate: newer.rate.or(self.rate),
        }
    }
}

/// How a reported request ended.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ReportOutcome {
    /// A result within the deadline.
    Ok,
    /// A result after the deadline.
    Late,
    /// No result: the error's kind (`deadline_missed`, `overloaded`, ...), at most
    /// [`MAX_KIND_LEN`] bytes.
    Error(String),
}

/// One finished request, as its device saw it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RequestReport {
    /// The split point used (`0..=L`; `L` is device-only and never reached the server);
    /// `None` when the request failed before one was chosen (a link probe that timed out).
    pub split: Option<u32>,
    /// The codec used ([`CodecId::none`] for device-only, `rgb8` for server-only).
    pub codec: CodecId,
    /// End-to-end milliseconds (for an error, until it came).
    pub total_ms: f32,
    /// Milliseconds on the device (crop, compute, encoding).
    pub device_ms: f32,
    /// How it ended.
    pub outcome: ReportOutcome,
    /// The deadline the request had, ms.
    pub deadline_ms: f32,
    /// The device's latest link estimate: bandwidth, Mbit/s (0 when unknown).
    pub link_mbit: f32,
    /// The device's latest link estimate: round trip, ms (0 when unknown).
    pub rtt_ms: f32,
}

impl RequestReport {
    /// Whether the report is one a model of `layers` blocks can have produced.
    ///
    /// # Errors
    /// What is wrong: a split past `layers`, a negative or non-finite number, an error kind
    /// longer than [`MAX_KIND_LEN`] bytes.
    pub fn check(&self, layers: usize) -> Result<(), String> {
        if let Some(split) = self.split
            && split as usize > layers
        {
            return Err(format!("split {split} is past the model's {layers} blocks"));
        }
        for (name, v) in [
            ("total_ms", self.total_ms),
            ("device_ms", self.device_ms),
            ("deadline_ms", self.deadline_ms),
            ("link_mbit", self.link_mbit),
            ("rtt_ms", self.rtt_ms),
        ] {
            if !(v.is_finite() && v >= 0.0) {
                return Err(format!("{name} = {v} is not a finite non-negative number"));
            }
        }
        if let ReportOutcome::Error(kind) = &self.outcome
            && kind.len() > MAX_KIND_LEN
        {
            return Err(format!(
                "error kind of {} bytes (at most {MAX_KIND_LEN})",
                kind.len()
            ));
        }
        Ok(())
    }

    /// Whether the request missed its deadline: late, refused for it (`deadline_missed`), or
    /// given up on after it (`timeout`).
    pub fn missed(&self) -> bool {
        match &self.outcome {
            ReportOutcome::Ok => false,
            ReportOutcome::Late => true,
            ReportOutcome::Error(kind) => kind == "deadline_missed" || kind == "timeout",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_out_of_range_are_named() {
        let s = |f: fn(&mut DeviceSettings)| {
            let mut s = DeviceSettings::default();
            f(&mut s);
            s.check()
        };
        assert!(s(|_| {}).expect_err("refused").contains("no settings"));
        assert!(
            s(|s| s.deadline_ms = Some(0.0))
                .expect_err("refused")
                .contains("deadline_ms")
        );
        assert!(s(|s| s.deadline_ms = Some(f32::NAN)).is_err());
        assert!(
            s(|s| s.max_loss = Some(1.5))
                .expect_err("refused")
                .contains("max_loss")
        );
        assert!(
            s(|s| s.link = Some(LinkSetting {
                mbit: 0.0,
                rtt_ms: 5.0
            }))
            .expect_err("refused")
            .contains("mbit")
        );
        assert!(
            s(|s| s.link = Some(LinkSetting {
                mbit: 5.0,
                rtt_ms: -1.0
            }))
            .expect_err("refused")
            .contains("rtt_ms")
        );
        assert!(s(|s| s.rate = Some(f32::INFINITY)).is_err());
        assert!(s(|s| s.deadline_ms = Some(250.0)).is_ok());
        assert!(s(|s| s.rate = Some(0.0)).is_ok());
    }

    #[test]
    fn merging_keeps_what_the_newer_settings_leave_out() {
        let old = DeviceSettings {
            deadline_ms: Some(300.0),
            max_loss: Some(0.02),
            ..DeviceSettings::default()
        };
        let new = DeviceSettings {
            max_loss: Some(0.05),
            rate: Some(2.0),
            ..DeviceSettings::default()
        };
        let m = old.merged(new);
        assert_eq!(m.deadline_ms, Some(300.0));
        assert_eq!(m.max_loss, Some(0.05));
        assert_eq!(m.rate, Some(2.0));
        assert_eq!(m.link, None);
        let w = m.without(DeviceSettings {
            deadline_ms: Some(1.0),
            ..DeviceSettings::default()
        });
        assert_eq!((w.deadline_ms, w.max_loss), (None, Some(0.05)));
    }

    #[test]
    fn reports_are_checked_against_the_model() {
        let mut r = RequestReport {
            split: Some(4),
            codec: CodecId::plain("int8").expect("codec"),
            total_ms: 80.0,
            device_ms: 30.0,
            outcome: ReportOutcome::Ok,
            deadline_ms: 400.0,
            link_mbit: 20.0,
            rtt_ms: 35.0,
        };
        assert!(r.check(12).is_ok());
        assert!(!r.missed());
        r.split = Some(13);
        assert!(r.check(12).expect_err("refused").contains("split 13"));
        r.split = None;
        assert!(r.check(12).is_ok());
        r.split = Some(12);
        r.total_ms = f32::NAN;
        assert!(r.check(12).expect_err("refused").contains("total_ms"));
        r.total_ms = 1.0;
        r.outcome = ReportOutcome::Error("x".repeat(MAX_KIND_LEN + 1));
        assert!(r.check(12).is_err());
        r.outcome = ReportOutcome::Error("deadline_missed".into());
        assert!(r.check(12).is_ok() && r.missed());
    }
}
