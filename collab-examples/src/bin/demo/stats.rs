//! What the demo learns from the device processes' JSON lines, and the numbers it shows.

use std::collections::BTreeMap;

use collab_core::cost::quantile;
use serde_json::Value;

/// One device's (or the load generator's) tally.
#[derive(Clone, Debug, Default)]
pub(crate) struct Tally {
    /// Requests answered so far (results and errors).
    pub(crate) answered: usize,
    /// Results.
    pub(crate) ok: usize,
    /// Results whose top-1 class matched the label.
    pub(crate) correct: usize,
    /// Results that came with a label.
    pub(crate) labelled: usize,
    /// Results that arrived after the deadline.
    pub(crate) late: usize,
    /// End-to-end milliseconds of the results.
    pub(crate) latencies: Vec<f64>,
    /// Split points chosen, with counts.
    pub(crate) splits: BTreeMap<u64, usize>,
    /// Codecs chosen, with counts.
    pub(crate) codecs: BTreeMap<String, usize>,
    /// Errors by kind.
    pub(crate) errors: BTreeMap<String, usize>,
    /// Bytes sent.
    pub(crate) bytes: u64,
    /// Whether the process reported it is done.
    pub(crate) done: bool,
}

impl Tally {
    /// Folds one JSON line of a device process in; `deadline_ms` decides lateness.
    pub(crate) fn record(&mut self, line: &Value, deadline_ms: f64) {
        if line.get("done").and_then(Value::as_bool) == Some(true) {
            self.done = true;
            return;
        }
        let Some(ok) = line.get("ok").and_then(Value::as_bool) else {
            return;
        };
        self.answered += 1;
        if !ok {
            let kind = line
                .get("error")
                .and_then(Value::as_str)
                .unwrap_or("unknown");
            *self.errors.entry(kind.to_owned()).or_default() += 1;
            return;
        }
        self.ok += 1;
        let num = |k: &str| line.get(k).and_then(Value::as_f64);
        let total = num("total_ms").unwrap_or(f64::NAN);
        self.latencies.push(total);
        if total > deadline_ms {
            self.late += 1;
        }
        if let (Some(label), Some(top1)) = (
            line.get("label").and_then(Value::as_u64),
            line.get("top1").and_then(Value::as_u64),
        ) {
            self.labelled += 1;
            if label == top1 {
                self.correct += 1;
            }
        }
        if let Some(split) = line.get("split").and_then(Value::as_u64) {
            *self.splits.entry(split).or_default() += 1;
        }
        if let Some(codec) = line.get("codec").and_then(Value::as_str) {
            *self.codecs.entry(codec.to_owned()).or_default() += 1;
        }
        self.bytes += num("bytes").unwrap_or(0.0) as u64;
    }

    /// Requests that missed the deadline: answered late, or refused for it.
    pub(crate) fn misses(&self) -> usize {
        self.late + self.errors.get("deadline_missed").copied().unwrap_or(0)
    }

    /// Adds another tally (for the totals).
    pub(crate) fn merge(&mut self, other: &Tally) {
        self.answered += other.answered;
        self.ok += other.ok;
        self.correct += other.correct;
        self.labelled += other.labelled;
        self.late += other.late;
        self.latencies.extend(&other.latencies);
        for (k, v) in &other.splits {
            *self.splits.entry(*k).or_default() += v;
        }
        for (k, v) in &other.codecs {
            *self.codecs.entry(k.clone()).or_default() += v;
        }
        for (k, v) in &other.errors {
            *self.errors.entry(k.clone()).or_default() += v;
        }
        self.bytes += other.bytes;
    }

    /// The `q`-quantile of the results' latency (nearest rank), NaN when there are none.
    pub(crate) fn latency_quantile(&self, q: f64) -> f64 {
        quantile(&self.latencies, q)
    }

    /// `k:count` pairs of the splits chosen, most used first.
    pub(crate) fn split_summary(&self) -> String {
        most_used_first(&self.splits, |k| format!("k={k}"))
    }

    /// `codec x count` pairs of the codecs answered requests used, most used first.
    pub(crate) fn codec_summary(&self) -> String {
        most_used_first(&self.codecs, |c| c.clone())
    }

    /// Mean payload kilobytes (1000 bytes) per answered request (0 with none).
    pub(crate) fn mean_kb(&self) -> f64 {
        self.bytes as f64 / 1e3 / self.ok.max(1) as f64
    }

    /// Errors as `kind:count`.
    pub(crate) fn error_summary(&self) -> String {
        if self.errors.is_empty() {
            return "none".into();
        }
        self.errors
            .iter()
            .map(|(k, n)| format!("{k}:{n}"))
            .collect::<Vec<_>>()
            .join(" ")
    }
}

/// `<label>x<count>` for each key, most used first (ties in key order).
fn most_used_first<K: Ord>(counts: &BTreeMap<K, usize>, label: impl Fn(&K) -> String) -> String {
    let mut v: Vec<_> = counts.iter().collect();
    v.sort_by(|a, b| b.1.cmp(a.1).then(a.0.cmp(b.0)));
    v.iter()
        .map(|(k, n)| format!("{}x{n}", label(k)))
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn tallies_results_errors_and_lateness() {
        let mut t = Tally::default();
        t.record(&json!({"ok": true, "total_ms": 50.0, "label": 3, "top1": 3, "split": 4, "codec": "int8-r192", "bytes": 100}), 100.0);
        t.record(
            &json!({"ok": true, "total_ms": 150.0, "label": 3, "top1": 2, "split": 4}),
            100.0,
        );
        t.record(&json!({"ok": false, "error": "deadline_missed"}), 100.0);
        t.record(&json!({"ok": false, "error": "overloaded"}), 100.0);
        t.record(&json!({"done": true}), 100.0);
        assert_eq!(
            (t.answered, t.ok, t.correct, t.labelled, t.late),
            (4, 2, 1, 2, 1)
        );
        assert_eq!(t.misses(), 2);
        assert!(t.done);
        assert_eq!(t.split_summary(), "k=4x2");
        assert_eq!(t.codec_summary(), "int8-r192x1");
        assert_eq!(t.mean_kb(), 0.05);
        assert_eq!(t.error_summary(), "deadline_missed:1 overloaded:1");
        assert_eq!(t.latency_quantile(0.5), 50.0);
    }
}
