//! The server's live board: what the dashboard shows and the settings an operator sends.
//!
//! - a time series, one point per finished second since the first report, of the requests
//!   devices reported ([`crate::wire::RequestReport`]): throughput, p50/p95/p99 end-to-end
//!   latency and the deadline-miss rate over the last [`WINDOW_S`] seconds;
//! - per device, the split point and codec of its latest request, its link estimate, deadline
//!   and recent latency;
//! - the server's queue per entry position and its recent batch sizes;
//! - a comparison series: [`Board::start_phase`] keeps the series so far (e.g. the
//!   server-only run) under its label and starts a fresh one;
//! - [`Board::apply`]: an operator's [`DeviceSettings`], checked, remembered (a device that
//!   reconnects gets them again) and sent to the matching live sessions.
//!
//! Everything is bounded: [`MAX_POINTS`] points, [`MAX_LATENCIES`] latencies per second,
//! [`MAX_DEVICES`] devices shown (reports of more devices still count in the series), the
//! last [`MAX_BATCHES`] batch sizes.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::Instant;

use serde::Serialize;
use tokio::sync::mpsc;

use crate::wire::{DeviceSettings, Message, ReportOutcome, RequestReport};

/// Points kept per series (one per second: ten minutes).
pub const MAX_POINTS: usize = 600;
/// Latencies kept per second (a point's window holds up to [`WINDOW_S`] times as many).
pub const MAX_LATENCIES: usize = 1024;
/// Devices shown; reports of others count in the series only.
pub const MAX_DEVICES: usize = 256;
/// Batch sizes kept.
pub const MAX_BATCHES: usize = 256;
/// Seconds of reports each point's latency quantiles and rates cover.
pub const WINDOW_S: u64 = 5;
/// Recent latencies kept per device.
const DEVICE_LATENCIES: usize = 32;
/// The target of settings meant for every device.
pub const ALL_DEVICES: &str = "*";

/// Requests finished in one second.
#[derive(Clone, Debug, Default)]
struct Bucket {
    second: u64,
    ok: u32,
    late: u32,
    errors: u32,
    missed: u32,
    latencies: Vec<f32>,
}

/// One series: a point per finished second since its first report.
///
/// Only the last [`WINDOW_S`] seconds of requests are kept; a point is computed once, when
/// its second has passed, so a snapshot costs a copy of at most [`MAX_POINTS`] points.
#[derive(Debug)]
struct Series {
    label: String,
    /// When its first report came (its second 0).
    start: Option<Instant>,
    /// The requests of the last seconds, oldest first.
    buckets: VecDeque<Bucket>,
    /// The points of finished seconds, oldest first.
    done: VecDeque<Point>,
    /// The first second without a point yet.
    next: u64,
}

impl Series {
    fn new(label: &str) -> Self {
        Self {
            label: label.to_owned(),
            start: None,
            buckets: VecDeque::new(),
            done: VecDeque::new(),
            next: 0,
        }
    }

    /// The bucket of the second `now` falls in (the series starts at its first report).
    fn bucket(&mut self, now: Instant) -> &mut Bucket {
        self.finish(now);
        let start = *self.start.get_or_insert(now);
        let second = now.saturating_duration_since(start).as_secs();
        if self.buckets.back().is_none_or(|b| b.second != second) {
            self.buckets.push_back(Bucket {
                second,
                ..Bucket::default()
            });
            while self
                .buckets
                .front()
                .is_some_and(|b| b.second + WINDOW_S <= second)
            {
                self.buckets.pop_front();
            }
        }
        let last = self.buckets.len() - 1;
        &mut self.buckets[last]
    }

    /// Computes the points of the seconds that have passed by `now`.
    fn finish(&mut self, now: Instant) {
        let Some(start) = self.start else {
            return;
        };
        let current = now.saturating_duration_since(start).as_secs();
        // After a long silence only the last MAX_POINTS seconds are worth a point.
        let first = self.next.max(current.saturating_sub(MAX_POINTS as u64));
        let mut lat = Vec::new();
        for second in first..current {
            let low = second.saturating_sub(WINDOW_S - 1);
            let (mut ok, mut answered, mut missed) = (0u32, 0u32, 0u32);
            lat.clear();
            for b in self
                .buckets
                .iter()
                .filter(|b| b.second >= low && b.second <= second)
            {
                ok += b.ok + b.late;
                answered += b.ok + b.late + b.errors;
                missed += b.missed;
                lat.extend_from_slice(&b.latencies);
            }
            lat.sort_by(f32::total_cmp);
            self.done.push_back(Point {
                t: second as f32,
                throughput: ok as f32 / (second - low + 1) as f32,
                p50: quantile(&lat, 0.50),
                p95: quantile(&lat, 0.95),
                p99: quantile(&lat, 0.99),
                miss_rate: (answered > 0).then(|| missed as f32 / answered as f32),
            });
            while self.done.len() > MAX_POINTS {
                self.done.pop_front();
            }
        }
        self.next = self.next.max(current);
    }

    /// Its points, oldest first.
    fn view(&mut self, now: Instant) -> SeriesView {
        self.finish(now);
        SeriesView {
            label: self.label.clone(),
            points: self.done.iter().cloned().collect(),
        }
    }
}

/// The nearest-rank quantile of sorted values; `None` for none.
fn quantile(sorted: &[f32], q: f32) -> Option<f32> {
    if sorted.is_empty() {
        return None;
    }
    let rank = (q * sorted.len() as f32).ceil() as usize;
    Some(sorted[rank.clamp(1, sorted.len()) - 1])
}

/// One point of a series.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Point {
    /// Seconds since the series' first report (the point covers the second from `t`).
    pub t: f32,
    /// Results per second over the window.
    pub throughput: f32,
    /// End-to-end latency quantiles of the window's results, ms (`None`: no result).
    pub p50: Option<f32>,
    /// The 95th percentile, ms.
    pub p95: Option<f32>,
    /// The 99th percentile, ms.
    pub p99: Option<f32>,
    /// Share of the window's finished requests that missed their deadline.
    pub miss_rate: Option<f32>,
}

/// A labelled series.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct SeriesView {
    /// What it is (`server-only`, `collaborative`, ...).
    pub label: String,
    /// Its points, oldest first.
    pub points: Vec<Point>,
}

/// One device as the board shows it.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct DeviceView {
    /// The device id.
    pub id: String,
    /// Whether it has a live session now.
    pub connected: bool,
    /// Split point of its latest request.
    pub split: Option<u32>,
    /// Codec of its latest request.
    pub codec: Option<String>,
    /// Its latest link estimate, Mbit/s.
    pub link_mbit: Option<f32>,
    /// Its latest RTT estimate, ms.
    pub rtt_ms: Option<f32>,
    /// The deadline of its latest request, ms.
    pub deadline_ms: Option<f32>,
    /// Median end-to-end latency of its recent results, ms.
    pub latency_ms: Option<f32>,
    /// Requests it reported.
    pub finished: u64,
    /// Of them, deadline misses.
    pub missed: u64,
    /// The settings it runs with from the operator: those given for all devices, with what
    /// was given to it alone since then over them.
    pub settings: DeviceSettings,
    /// What was given to it alone (the fields a later setting for all devices replaced are
    /// removed).
    #[serde(skip)]
    own: DeviceSettings,
    #[serde(skip)]
    recent: VecDeque<f32>,
}

/// What the dashboard receives, whole, on every push.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct BoardSnapshot {
    /// The current series.
    pub live: SeriesView,
    /// The series kept by the latest [`Board::start_phase`], if any.
    pub comparison: Option<SeriesView>,
    /// The devices, by id.
    pub devices: Vec<DeviceView>,
    /// Requests queued per entry position `0..=L`.
    pub queues: Vec<u32>,
    /// The latest batch sizes, oldest first.
    pub batches: Vec<u32>,
    /// Requests held now.
    pub in_flight: u32,
    /// The admission limit.
    pub capacity: u32,
    /// Settings for every device, as given to [`Board::apply`] with [`ALL_DEVICES`].
    pub all_settings: DeviceSettings,
}

/// Why [`Board::apply`] refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SettingsError {
    /// A value out of range (the message names it).
    #[error("invalid settings: {0}")]
    Invalid(String),
    /// No device of that id has connected.
    #[error("no device `{0}` has connected")]
    UnknownDevice(String),
}

#[derive(Debug)]
struct Live {
    id: u64,
    control: mpsc::Sender<Message>,
}

#[derive(Debug)]
struct State {
    series: Series,
    comparison: Option<SeriesView>,
    devices: BTreeMap<String, DeviceView>,
    sessions: HashMap<String, Vec<Live>>,
    all: DeviceSettings,
    batches: VecDeque<u32>,
    next_session: u64,
}

/// The board (see the module docs). One per server; cheap to share behind an `Arc`.
#[derive(Debug)]
pub struct Board {
    state: Mutex<State>,
}

impl Default for Board {
    fn default() -> Self {
        Self::new("live")
    }
}

/// A live session's place on the board; dropping it takes the session off.
#[derive(Debug)]
pub(crate) struct Registration<'a> {
    board: &'a Board,
    device: String,
    id: u64,
}

impl Drop for Registration<'_> {
    fn drop(&mut self) {
        let mut s = self.board.lock();
        if let Some(list) = s.sessions.get_mut(&self.device) {
            list.retain(|l| l.id != self.id);
            if list.is_empty() {
                s.sessions.remove(&self.device);
                if let Some(d) = s.devices.get_mut(&self.device) {
                    d.connected = false;
                }
            }
        }
    }
}

impl Board {
    /// An empty board whose first series is called `label`.
    pub fn new(label: &str) -> Self {
        Self {
            state: Mutex::new(State {
                series: Series::new(label),
                comparison: None,
                devices: BTreeMap::new(),
                sessions: HashMap::new(),
                all: DeviceSettings::default(),
                batches: VecDeque::new(),
                next_session: 0,
            }),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // Plain data; a panic mid-update leaves nothing a reader could trip on.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Puts a device's new session on the board; the settings it should run with (those for
    /// all devices under its own), if an operator gave any, are queued on `control` at once.
    pub(crate) fn register(
        &self,
        device: &str,
        control: mpsc::Sender<Message>,
    ) -> Registration<'_> {
        let mut s = self.lock();
        s.next_session += 1;
        let id = s.next_session;
        let all = s.all;
        let room = s.devices.len() < MAX_DEVICES;
        let own = match s.devices.get_mut(device) {
            Some(d) => {
                d.connected = true;
                d.own
            }
            None if room => {
                s.devices.insert(
                    device.to_owned(),
                    DeviceView {
                        id: device.to_owned(),
                        connected: true,
                        ..DeviceView::default()
                    },
                );
                DeviceSettings::default()
            }
            None => DeviceSettings::default(),
        };
        let settings = all.merged(own);
        if settings != DeviceSettings::default() {
            let _ = control.try_send(Message::Settings(settings));
        }
        s.sessions
            .entry(device.to_owned())
            .or_default()
            .push(Live { id, control });
        Registration {
            board: self,
            device: device.to_owned(),
            id,
        }
    }

    /// Counts a device's checked report.
    pub(crate) fn record(&self, device: &str, report: &RequestReport) {
        self.record_at(device, report, Instant::now());
    }

    fn record_at(&self, device: &str, report: &RequestReport, now: Instant) {
        let mut s = self.lock();
        let b = s.series.bucket(now);
        match report.outcome {
            ReportOutcome::Ok => b.ok += 1,
            ReportOutcome::Late => b.late += 1,
            ReportOutcome::Error(_) => b.errors += 1,
        }
        if report.missed() {
            b.missed += 1;
        }
        let result = !matches!(report.outcome, ReportOutcome::Error(_));
        if result && b.latencies.len() < MAX_LATENCIES {
            b.latencies.push(report.total_ms);
        }
        let Some(d) = s.devices.get_mut(device) else {
            return;
        };
        d.finished += 1;
        d.missed += u64::from(report.missed());
        // A request that failed before its split was chosen says nothing about the split.
        if let Some(split) = report.split {
            d.split = Some(split);
            d.codec = Some(report.codec.to_string());
        }
        d.deadline_ms = Some(report.deadline_ms);
        if report.link_mbit > 0.0 {
            d.link_mbit = Some(report.link_mbit);
            d.rtt_ms = Some(report.rtt_ms);
        }
        if result {
            d.recent.push_back(report.total_ms);
            while d.recent.len() > DEVICE_LATENCIES {
                d.recent.pop_front();
            }
            let mut v: Vec<f32> = d.recent.iter().copied().collect();
            v.sort_by(f32::total_cmp);
            d.latency_ms = quantile(&v, 0.5);
        }
    }

    /// Notes a batch the compute thread ran.
    pub(crate) fn record_batch(&self, size: usize) {
        let mut s = self.lock();
        s.batches.push_back(u32::try_from(size).unwrap_or(u32::MAX));
        while s.batches.len() > MAX_BATCHES {
            s.batches.pop_front();
        }
    }

    /// Sends `settings` to device `target` ([`ALL_DEVICES`]: every device, now and later);
    /// returns how many live sessions it reached. The settings are remembered: a device that
    /// connects later gets them. The latest setting of a field wins: one for all devices
    /// replaces what single devices were given for that field.
    ///
    /// # Errors
    /// [`SettingsError::Invalid`] for a value out of range or no value at all;
    /// [`SettingsError::UnknownDevice`] for a device that never connected.
    pub fn apply(&self, target: &str, settings: DeviceSettings) -> Result<usize, SettingsError> {
        settings.check().map_err(SettingsError::Invalid)?;
        let mut s = self.lock();
        if target == ALL_DEVICES {
            s.all = s.all.merged(settings);
            for d in s.devices.values_mut() {
                d.own = d.own.without(settings);
            }
        } else {
            let device = s
                .devices
                .get_mut(target)
                .ok_or_else(|| SettingsError::UnknownDevice(target.to_owned()))?;
            device.own = device.own.merged(settings);
        }
        let mut reached = 0;
        for (device, lives) in &s.sessions {
            if target != ALL_DEVICES && device != target {
                continue;
            }
            for live in lives {
                // A full control queue means the device stopped reading; it gets the
                // remembered settings when it reconnects.
                if live.control.try_send(Message::Settings(settings)).is_ok() {
                    reached += 1;
                }
            }
        }
        Ok(reached)
    }

    /// Keeps the series so far as the comparison (renamed `previous` when given) and starts
    /// a new one called `label`.
    pub fn start_phase(&self, label: &str, previous: Option<&str>) {
        self.start_phase_at(label, previous, Instant::now());
    }

    fn start_phase_at(&self, label: &str, previous: Option<&str>, now: Instant) {
        let mut s = self.lock();
        let mut old = std::mem::replace(&mut s.series, Series::new(label));
        let mut kept = old.view(now);
        if let Some(p) = previous {
            kept.label = p.to_owned();
        }
        s.comparison = Some(kept);
        for d in s.devices.values_mut() {
            d.finished = 0;
            d.missed = 0;
            d.recent.clear();
            d.latency_ms = None;
        }
    }

    /// What the dashboard shows now; `queues`, `in_flight` and `capacity` come from the
    /// server's state.
    pub(crate) fn snapshot(
        &self,
        queues: Vec<u32>,
        in_flight: u32,
        capacity: u32,
    ) -> BoardSnapshot {
        self.snapshot_at(queues, in_flight, capacity, Instant::now())
    }

    fn snapshot_at(
        &self,
        queues: Vec<u32>,
        in_flight: u32,
        capacity: u32,
        now: Instant,
    ) -> BoardSnapshot {
        let mut s = self.lock();
        let all = s.all;
        BoardSnapshot {
            live: s.series.view(now),
            comparison: s.comparison.clone(),
            devices: s
                .devices
                .values()
                .map(|d| DeviceView {
                    settings: all.merged(d.own),
                    ..d.clone()
                })
                .collect(),
            queues,
            batches: s.batches.iter().copied().collect(),
            in_flight,
            capacity,
            all_settings: s.all,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use collab_core::split::CodecId;

    use super::*;
    use crate::wire::LinkSetting;

    fn report(split: u32, total_ms: f32, outcome: ReportOutcome) -> RequestReport {
        RequestReport {
            split: Some(split),
            codec: CodecId::plain("int8").expect("codec"),
            total_ms,
            device_ms: 10.0,
            outcome,
            deadline_ms: 100.0,
            link_mbit: 20.0,
            rtt_ms: 30.0,
        }
    }

    fn secs(s: f64) -> Duration {
        Duration::from_secs_f64(s)
    }

    #[test]
    fn reports_make_points_and_device_rows() {
        let board = Board::new("live");
        let (tx, _rx) = mpsc::channel(4);
        let _reg = board.register("d0", tx);
        let t0 = Instant::now();
        board.record_at("d0", &report(3, 50.0, ReportOutcome::Ok), t0);
        board.record_at("d0", &report(4, 150.0, ReportOutcome::Late), t0 + secs(0.2));
        let refused = report(4, 0.0, ReportOutcome::Error("deadline_missed".into()));
        board.record_at("d0", &refused, t0 + secs(0.4));
        board.record_at(
            "stranger",
            &report(1, 70.0, ReportOutcome::Ok),
            t0 + secs(0.6),
        );
        let failed_early = RequestReport {
            split: None,
            ..report(0, 5.0, ReportOutcome::Error("timeout".into()))
        };
        let snap = board.snapshot_at(vec![0, 1], 1, 64, t0 + secs(0.9));
        assert!(snap.live.points.is_empty(), "no second has passed yet");
        board.record_at("d0", &failed_early, t0 + secs(1.5));
        board.record_batch(3);
        let snap = board.snapshot_at(vec![0, 1], 1, 64, t0 + secs(2.1));
        assert_eq!(snap.live.points.len(), 2, "seconds 0 and 1 have passed");
        let first = &snap.live.points[0];
        assert_eq!(first.t, 0.0);
        assert_eq!(first.throughput, 3.0, "three results in the first second");
        assert_eq!(first.miss_rate, Some(0.5));
        assert_eq!(first.p50, Some(70.0));
        assert_eq!(first.p99, Some(150.0));
        let second = &snap.live.points[1];
        assert_eq!(
            second.throughput, 1.5,
            "the window of two seconds holds three results"
        );
        assert_eq!(second.miss_rate, Some(0.6), "a timeout is a miss");
        assert_eq!(snap.devices.len(), 1, "only registered devices get a row");
        let d = &snap.devices[0];
        assert_eq!((d.split, d.finished, d.missed), (Some(4), 4, 3));
        assert_eq!(d.codec.as_deref(), Some("int8"));
        assert_eq!(d.latency_ms, Some(50.0));
        assert_eq!(snap.batches, vec![3]);
        let later = board.snapshot_at(vec![], 0, 1, t0 + secs(10_000.0));
        assert_eq!(
            later.live.points.len(),
            MAX_POINTS,
            "bounded after a long silence"
        );
        assert_eq!(later.live.points.last().map(|p| p.throughput), Some(0.0));
    }

    #[test]
    fn settings_reach_live_sessions_and_later_ones() {
        let board = Board::new("live");
        let (tx, mut rx) = mpsc::channel(4);
        let reg = board.register("d0", tx);
        let new = DeviceSettings {
            link: Some(LinkSetting {
                mbit: 2.0,
                rtt_ms: 50.0,
            }),
            deadline_ms: Some(900.0),
            ..DeviceSettings::default()
        };
        assert_eq!(board.apply("d0", new), Ok(1));
        assert_eq!(rx.try_recv().ok(), Some(Message::Settings(new)));
        assert!(matches!(
            board.apply("nobody", new),
            Err(SettingsError::UnknownDevice(_))
        ));
        assert!(matches!(
            board.apply("d0", DeviceSettings::default()),
            Err(SettingsError::Invalid(_))
        ));
        let all = DeviceSettings {
            deadline_ms: Some(250.0),
            ..DeviceSettings::default()
        };
        assert_eq!(board.apply(ALL_DEVICES, all), Ok(1));
        let _ = rx.try_recv();
        let effective = DeviceSettings {
            deadline_ms: Some(250.0),
            ..new
        };
        assert_eq!(
            board.snapshot(vec![], 0, 1).devices[0].settings,
            effective,
            "the later setting for all replaced the device's own deadline"
        );
        drop(reg);
        assert!(!board.snapshot(vec![], 0, 1).devices[0].connected);
        let (tx, mut rx) = mpsc::channel(4);
        let _reg = board.register("d0", tx);
        assert_eq!(
            rx.try_recv().ok(),
            Some(Message::Settings(effective)),
            "a reconnecting device gets what it ran with"
        );
    }

    #[test]
    fn a_phase_keeps_the_series_as_the_comparison() {
        let board = Board::new("live");
        let (tx, _rx) = mpsc::channel(4);
        let _reg = board.register("d0", tx);
        let t0 = Instant::now();
        board.record_at("d0", &report(0, 90.0, ReportOutcome::Ok), t0);
        board.start_phase_at("collaborative", Some("server-only"), t0 + secs(1.2));
        let snap = board.snapshot_at(vec![], 0, 1, t0 + secs(5.0));
        let cmp = snap.comparison.expect("comparison");
        assert_eq!(cmp.label, "server-only");
        assert_eq!(cmp.points.len(), 1);
        assert_eq!(cmp.points[0].p50, Some(90.0));
        assert_eq!(snap.live.label, "collaborative");
        assert!(
            snap.live.points.is_empty(),
            "the new series starts at its first report"
        );
        assert_eq!(snap.devices[0].finished, 0);
    }
}
