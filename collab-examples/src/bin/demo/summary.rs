//! The summary printed when the demo ends, and what it reads from the server's metrics.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use super::fleet::Profile;
use super::orchestrate::DemoArgs;
use super::stats::Tally;

/// `GET path` on the metrics port; empty on failure (the summary then says so).
pub(crate) fn http_get(addr: SocketAddr, path: &str) -> String {
    let Ok(mut s) = TcpStream::connect_timeout(&addr, Duration::from_secs(2)) else {
        return String::new();
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
    let _ = write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
    );
    let mut body = String::new();
    let _ = s.read_to_string(&mut body);
    body
}

/// `POST path` with a JSON body and the operator's bearer token on the dashboard port.
///
/// # Errors
/// A connection that fails, or an answer other than `200`.
pub(crate) fn http_post(
    addr: SocketAddr,
    path: &str,
    token: &str,
    body: &serde_json::Value,
) -> anyhow::Result<String> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    let body = body.to_string();
    write!(
        s,
        "POST {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\
         Authorization: Bearer {token}\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\n\r\n{body}",
        body.len()
    )?;
    let mut answer = String::new();
    s.read_to_string(&mut answer)?;
    anyhow::ensure!(
        answer.starts_with("HTTP/1.1 200"),
        "POST {path}: {}",
        answer.lines().next().unwrap_or("no answer")
    );
    Ok(answer)
}

/// The server-only run's line: what the dashboard shows as the comparison trace.
pub(crate) fn print_comparison(tallies: &[Tally], wall: Duration, deadline_ms: f64) {
    let mut total = Tally::default();
    tallies.iter().for_each(|t| total.merge(t));
    let secs = wall.as_secs_f64().max(1e-3);
    println!(
        "server-only devices={} requests={} ok={} throughput={:.2}/s p50={:.1}ms p95={:.1}ms deadline_miss_rate={:.3} (deadline {deadline_ms:.0} ms)",
        tallies.len(),
        total.answered,
        total.ok,
        total.ok as f64 / secs,
        total.latency_quantile(0.5),
        total.latency_quantile(0.95),
        total.misses() as f64 / total.answered.max(1) as f64,
    );
}

/// The value of an unlabelled sample `name` in Prometheus text.
fn metric(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
}

pub(crate) fn print(
    a: &DemoArgs,
    profiles: &[Profile],
    tallies: &[Tally],
    load: &Tally,
    wall: Duration,
    metrics: &str,
    health: &str,
) {
    println!("\n== collab demo summary ({:.1} s) ==", wall.as_secs_f64());
    println!(
        "{:<28} {:>8} {:>4} {:>5} {:>8} {:>8} {:>8} {:>8} {:>7}  splits / errors",
        "device", "link", "n", "ok", "accuracy", "p50 ms", "p95 ms", "p99 ms", "missed"
    );
    let mut total = Tally::default();
    for (i, (p, t)) in profiles.iter().zip(tallies).enumerate() {
        total.merge(t);
        println!(
            "{:<28} {:>8} {:>4} {:>5} {:>8} {:>8.1} {:>8.1} {:>8.1} {:>7}  {} / {}",
            format!("device-{i} {} x{}", p.name, p.slowdown),
            format!("{}Mb {}ms", p.mbit, p.rtt_ms),
            t.answered,
            t.ok,
            ratio(t.correct, t.labelled),
            t.latency_quantile(0.5),
            t.latency_quantile(0.95),
            t.latency_quantile(0.99),
            t.misses(),
            t.split_summary(),
            t.error_summary()
        );
        println!(
            "{:<28} codecs {}, {:.1} kB sent per answered request",
            "",
            t.codec_summary(),
            t.mean_kb()
        );
    }
    println!(
        "background load: {} answered ({} ok), errors {}",
        load.answered,
        load.ok,
        load.error_summary()
    );
    let batches = match (
        metric(metrics, "collab_batch_size_sum"),
        metric(metrics, "collab_batch_size_count"),
    ) {
        (Some(s), Some(c)) if c > 0.0 => format!("{:.2}", s / c),
        _ => "n/a".into(),
    };
    println!(
        "server: mean batch {batches}, health before shutdown: {}",
        if health.contains(" 200 ") {
            "ok"
        } else {
            "not reachable"
        }
    );
    let secs = wall.as_secs_f64().max(1e-3);
    println!(
        "demo devices={} requests={} ok={} accuracy={} throughput={:.2}/s p50={:.1}ms p95={:.1}ms p99={:.1}ms deadline_miss_rate={:.3} kb_per_request={:.1}",
        a.devices,
        total.answered,
        total.ok,
        ratio(total.correct, total.labelled),
        total.ok as f64 / secs,
        total.latency_quantile(0.5),
        total.latency_quantile(0.95),
        total.latency_quantile(0.99),
        total.misses() as f64 / total.answered.max(1) as f64,
        total.mean_kb()
    );
}

fn ratio(a: usize, b: usize) -> String {
    if b == 0 {
        "-".into()
    } else {
        format!("{:.3}", a as f64 / b as f64)
    }
}
