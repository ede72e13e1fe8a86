//! The live terminal view: a header with the totals, one line per device, one for the load
//! generator. On a terminal it redraws in place (indicatif); otherwise (a log, CI) it prints a
//! plain status line every few seconds.

use std::io::IsTerminal;
use std::time::{Duration, Instant};

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};

use super::fleet::Profile;
use super::stats::Tally;

/// The view.
#[derive(Debug)]
pub(crate) struct View {
    multi: MultiProgress,
    header: ProgressBar,
    rows: Vec<ProgressBar>,
    load: ProgressBar,
    tty: bool,
    last_plain: Option<Instant>,
}

impl View {
    /// A view of `profiles.len()` devices that each send `images` requests.
    pub(crate) fn new(profiles: &[Profile], images: usize) -> Self {
        let tty = std::io::stderr().is_terminal();
        let multi = MultiProgress::with_draw_target(if tty {
            ProgressDrawTarget::stderr_with_hz(8)
        } else {
            ProgressDrawTarget::hidden()
        });
        let plain =
            ProgressStyle::with_template("{msg}").unwrap_or_else(|_| ProgressStyle::default_bar());
        let header = multi.add(ProgressBar::new_spinner().with_style(plain.clone()));
        let bar = ProgressStyle::with_template("{prefix:<26} [{bar:20}] {pos:>3}/{len:<3} {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> ");
        let rows = profiles
            .iter()
            .enumerate()
            .map(|(i, p)| {
                let row = multi.add(ProgressBar::new(images as u64).with_style(bar.clone()));
                row.set_prefix(format!("device-{i} {}", p.name));
                row
            })
            .collect();
        let load = multi.add(ProgressBar::new_spinner().with_style(plain));
        Self {
            multi,
            header,
            rows,
            load,
            tty,
            last_plain: None,
        }
    }

    /// Redraws with the current tallies.
    pub(crate) fn update(
        &mut self,
        devices: &[Tally],
        load: &Tally,
        elapsed: Duration,
        deadline_ms: f64,
    ) {
        let mut total = Tally::default();
        devices.iter().for_each(|t| total.merge(t));
        let secs = elapsed.as_secs_f64().max(1e-3);
        let header = format!(
            "{:>5.1}s  {:>5.1} req/s  p50 {} ms  p95 {} ms  p99 {} ms  deadline ({deadline_ms:.0} ms) missed {:>5.1}%  accuracy {}",
            secs,
            total.ok as f64 / secs,
            ms(total.latency_quantile(0.50)),
            ms(total.latency_quantile(0.95)),
            ms(total.latency_quantile(0.99)),
            100.0 * total.misses() as f64 / total.answered.max(1) as f64,
            if total.labelled > 0 {
                format!("{:.3}", total.correct as f64 / total.labelled as f64)
            } else {
                "-".into()
            }
        );
        let rows: Vec<String> = devices
            .iter()
            .map(|t| {
                format!(
                    "p50 {} ms  missed {:>3}  splits {}  errors {}",
                    ms(t.latency_quantile(0.5)),
                    t.misses(),
                    t.split_summary(),
                    t.error_summary()
                )
            })
            .collect();
        let load_line = format!(
            "background load: {} answered, {:.1} req/s, p50 {} ms, errors {}",
            load.answered,
            load.answered as f64 / secs,
            ms(load.latency_quantile(0.5)),
            load.error_summary()
        );
        if self.tty {
            self.header.set_message(header);
            for ((row, t), msg) in self.rows.iter().zip(devices).zip(rows) {
                row.set_position(t.answered as u64);
                row.set_message(msg);
            }
            self.load.set_message(load_line);
            return;
        }
        if self
            .last_plain
            .is_some_and(|t| t.elapsed() < Duration::from_secs(5))
        {
            return;
        }
        self.last_plain = Some(Instant::now());
        eprintln!("{header}");
        for (i, (t, msg)) in devices.iter().zip(rows).enumerate() {
            eprintln!("  device-{i} {:>3} answered  {msg}", t.answered);
        }
        eprintln!("  {load_line}");
    }

    /// Removes the live lines (the summary follows on stdout).
    pub(crate) fn finish(&self) {
        let _ = self.multi.clear();
    }
}

/// Milliseconds right-aligned to six places, `-` before there is any.
fn ms(v: f64) -> String {
    if v.is_finite() {
        format!("{v:>6.1}")
    } else {
        format!("{:>6}", "-")
    }
}
