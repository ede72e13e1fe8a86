//! The server's Prometheus metrics (prometheus-client, OpenMetrics text).
//!
//! | family | kind | what |
//! | --- | --- | --- |
//! | `collab_queue_length{split}` | gauge | requests queued in the worker per entry position |
//! | `collab_batch_size` | histogram | requests per pass: the batch that ran the head |
//! | `collab_request_latency_seconds{outcome}` | histogram | server time, receipt to answer |
//! | `collab_requests_total{outcome}` | counter | answers by outcome (`done`, `deadline_missed`, `failed`, `invalid`, `overloaded`, `shutting_down`) |
//! | `collab_deadline_misses_total` | counter | requests answered `DeadlineMissed` |
//! | `collab_overloaded_total` | counter | requests refused by admission control |
//! | `collab_in_flight` | gauge | requests accepted and not yet answered |
//! | `collab_connections` | gauge | open device connections |
//! | `collab_handshaking` | gauge | connections open that have not yet had their `Hello` accepted |
//! | `collab_connections_refused_total{limit}` | counter | connections refused, by the limit that refused them |
//! | `collab_handshakes_refused_total` | counter | handshakes refused (version, credential, model, no `Hello` in time) |
//! | `collab_protocol_errors_total` | counter | sessions closed for a protocol violation (bad frame, stall, slow frame) |
//! | `collab_warnings_suppressed_total` | counter | warning lines left out by the log rate limit |
//! | `collab_position_seconds{position}` | gauge | recent seconds of one pass at a position |
//! | `collab_passes_total{gamma}` | counter | passes that ran the head, by the token plan's gamma (0: no merging) |

use std::sync::atomic::AtomicU64;

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::{Registry, Unit};

/// A label set of one label.
pub(crate) type Label<V> = [(&'static str, V); 1];

/// How a request ended, as a metric label.
pub(crate) type OutcomeLabel = Label<&'static str>;

/// Bucket bounds of `collab_batch_size`.
const BATCH_BUCKETS: [f64; 9] = [1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0];

fn latency_histogram() -> Histogram {
    // 1 ms .. 32 s.
    Histogram::new(exponential_buckets(0.001, 2.0, 16))
}

/// The metric handles the server updates, and the registry that renders them.
#[derive(Debug)]
pub(crate) struct Metrics {
    registry: Registry,
    pub(crate) batch_size: Histogram,
    pub(crate) latency: Family<OutcomeLabel, Histogram, fn() -> Histogram>,
    pub(crate) requests: Family<OutcomeLabel, Counter>,
    pub(crate) deadline_misses: Counter,
    pub(crate) overloaded: Counter,
    pub(crate) in_flight: Gauge,
    pub(crate) connections: Gauge,
    pub(crate) handshaking: Gauge,
    pub(crate) connections_refused: Family<Label<&'static str>, Counter>,
    pub(crate) handshakes_refused: Counter,
    pub(crate) protocol_errors: Counter,
    pub(crate) warnings_suppressed: Counter,
    /// Passes that ran the head, by gamma.
    pub(crate) passes: Family<Label<i64>, Counter>,
    /// `queue_length` per position, by index.
    queue_gauges: Vec<Gauge>,
    /// `position_seconds` per position, by index.
    position_gauges: Vec<Gauge<f64, AtomicU64>>,
}

impl Metrics {
    /// The metrics of a server over a model of `layers` blocks (positions `0..=layers`).
    pub(crate) fn new(layers: usize) -> Self {
        let mut registry = Registry::default();
        let queue_length = Family::<Label<String>, Gauge>::default();
        let position_seconds = Family::<Label<String>, Gauge<f64, _>>::default();
        // Every series exists from the start, so an idle position reads 0 rather than missing.
        let queue_gauges = (0..=layers)
            .map(|p| queue_length.get_or_create_owned(&[("split", p.to_string())]))
            .collect();
        let position_gauges = (0..=layers)
            .map(|p| position_seconds.get_or_create_owned(&[("position", p.to_string())]))
            .collect();
        let batch_size = Histogram::new(BATCH_BUCKETS);
        let latency = Family::<OutcomeLabel, Histogram, fn() -> Histogram>::new_with_constructor(
            latency_histogram,
        );
        let requests = Family::<OutcomeLabel, Counter>::default();
        let (deadline_misses, overloaded) = (Counter::default(), Counter::default());
        let (in_flight, connections) = (Gauge::default(), Gauge::default());
        registry.register(
            "collab_queue_length",
            "Requests queued in the worker, per entry position (split point)",
            queue_length.clone(),
        );
        registry.register(
            "collab_batch_size",
            "Requests per pass of the worker (the batch that ran the head)",
            batch_size.clone(),
        );
        registry.register_with_unit(
            "collab_request_latency",
            "Server time of a request, from receipt to answer, by outcome",
            Unit::Seconds,
            latency.clone(),
        );
        registry.register(
            "collab_requests",
            "Requests answered, by outcome",
            requests.clone(),
        );
        registry.register(
            "collab_deadline_misses",
            "Requests answered DeadlineMissed (not computed: the deadline could not be met)",
            deadline_misses.clone(),
        );
        registry.register(
            "collab_overloaded",
            "Requests refused by admission control (answered Overloaded)",
            overloaded.clone(),
        );
        registry.register(
            "collab_in_flight",
            "Requests accepted and not yet answered",
            in_flight.clone(),
        );
        registry.register(
            "collab_connections",
            "Open device connections",
            connections.clone(),
        );
        let handshaking = Gauge::default();
        let connections_refused = Family::<Label<&'static str>, Counter>::default();
        let (handshakes_refused, protocol_errors, warnings_suppressed) =
            (Counter::default(), Counter::default(), Counter::default());
        registry.register(
            "collab_handshaking",
            "Connections open that have not yet had their Hello accepted",
            handshaking.clone(),
        );
        registry.register(
            "collab_connections_refused",
            "Connections refused, by the limit that refused them",
            connections_refused.clone(),
        );
        registry.register(
            "collab_handshakes_refused",
            "Handshakes refused: version, credential, model, or no Hello in time",
            handshakes_refused.clone(),
        );
        registry.register(
            "collab_protocol_errors",
            "Sessions closed for a protocol violation: bad frame, stall, too slow a frame",
            protocol_errors.clone(),
        );
        registry.register(
            "collab_warnings_suppressed",
            "Warning lines left out by the log rate limit",
            warnings_suppressed.clone(),
        );
        let passes = Family::<Label<i64>, Counter>::default();
        registry.register(
            "collab_passes",
            "Passes that ran the head, by the gamma of their token plan (0: no merging)",
            passes.clone(),
        );
        registry.register(
            "collab_position_seconds",
            "Recent seconds of one pass at a position (block p, or the head at L)",
            position_seconds.clone(),
        );
        Self {
            registry,
            batch_size,
            latency,
            requests,
            deadline_misses,
            overloaded,
            in_flight,
            connections,
            handshaking,
            connections_refused,
            handshakes_refused,
            protocol_errors,
            warnings_suppressed,
            passes,
            queue_gauges,
            position_gauges,
        }
    }

    /// Sets the queue length of `position` (ignored out of range).
    pub(crate) fn set_queue(&self, position: usize, len: usize) {
        if let Some(g) = self.queue_gauges.get(position) {
            g.set(i64::try_from(len).unwrap_or(i64::MAX));
        }
    }

    /// Sets the recent pass seconds of `position` (ignored out of range).
    pub(crate) fn set_position_seconds(&self, position: usize, seconds: f64) {
        if let Some(g) = self.position_gauges.get(position) {
            g.set(seconds);
        }
    }

    /// Counts one answer with outcome `outcome` after `seconds` in the server.
    pub(crate) fn answered(&self, outcome: &'static str, seconds: f64) {
        let label = [("outcome", outcome)];
        self.requests.get_or_create(&label).inc();
        self.latency.get_or_create(&label).observe(seconds);
    }

    /// The OpenMetrics text exposition of every metric.
    pub(crate) fn render(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail; an encoder error would leave the text partial.
        if encode(&mut out, &self.registry).is_err() {
            out.push_str("# error: metrics encoding failed\n");
        }
        out
    }
}
