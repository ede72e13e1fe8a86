//! `cargo xtask exp net-overhead`: the cloud server's throughput over real TCP against the
//! batch worker driven in-process, at the same load (issue: collab-net, "Throughput check").
//!
//! The same requests run three ways, interleaved round by round so that the machine's noise
//! hits each alike, with the same closed-loop load (`--concurrency` requests outstanding):
//! - `worker`: the batch worker on a plain thread, fed the encoded payloads directly: decode the
//!   codec, enqueue, step, take the top-5 (what the server does, minus the network);
//! - `pipes`: the real server and client over in-process pipes (framing, tasks, no sockets);
//! - `tcp`: the real server and client over loopback TCP.
//!
//! It prints the medians, the ratios to `worker` (goal: `tcp` at least 0.95), and a breakdown
//! of the per-request network overhead: serialisation (frame encode/decode, measured), request
//! validation with codec decode (measured), payload copies (counted on the path, memcpy timed)
//! and syscalls (read/write counts of this process from `/proc/self/io` during the TCP runs).

mod breakdown;
mod modes;

use std::time::Duration;

use anyhow::Result;
use clap::Args as ClapArgs;
use collab_backends::candle::CandleBackend;
use collab_core::cost::median;
use collab_core::fixtures;
use std::fmt::Write as _;
use std::sync::Arc;

use super::results_dir;
use modes::{Load, Mode};

/// Options.
#[derive(ClapArgs, Debug)]
pub(crate) struct Args {
    /// Requests per run.
    #[arg(long, default_value_t = 240)]
    requests: usize,
    /// Requests outstanding at once (closed loop).
    #[arg(long, default_value_t = 16)]
    concurrency: usize,
    /// Split point of every request (the server runs blocks `split..12` and the head).
    #[arg(long, default_value_t = 6)]
    split: usize,
    /// Server batch budget.
    #[arg(long, default_value_t = 8)]
    batch: usize,
    /// Interleaved rounds of the three modes (medians reported).
    #[arg(long, default_value_t = 3)]
    rounds: usize,
}

pub(crate) fn run(args: Args) -> Result<()> {
    let model = Arc::new(fixtures::deit_tiny(CandleBackend::cpu())?);
    let load = Load::new(
        model,
        args.split,
        args.requests,
        args.concurrency,
        args.batch,
    )?;
    println!(
        "net-overhead: DeiT-Tiny (real weights), split {}, int8 payload of {} bytes, {} requests x {} rounds, {} outstanding, batch {}",
        args.split,
        load.payload_len(),
        args.requests,
        args.rounds,
        args.concurrency,
        args.batch
    );
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    // Warm-up: one short run of each (allocators, kernels, connections).
    for mode in Mode::ALL {
        runtime.block_on(load.run(mode, args.requests.min(32)))?;
    }
    let mut rates: Vec<Vec<f64>> = vec![Vec::new(); Mode::ALL.len()];
    let mut syscalls = Vec::new();
    for round in 0..args.rounds {
        for (i, mode) in Mode::ALL.into_iter().enumerate() {
            let before = breakdown::syscalls();
            let run = runtime.block_on(load.run(mode, args.requests))?;
            if mode == Mode::Tcp
                && let (Some(a), Some(b)) = (before, breakdown::syscalls())
            {
                syscalls.push((b - a) as f64 / args.requests as f64);
            }
            println!(
                "  round {round} {:<6} {:>7.2} req/s ({:.2} s)",
                mode.name(),
                run.rate,
                run.elapsed.as_secs_f64()
            );
            rates[i].push(run.rate);
        }
    }
    let med: Vec<f64> = rates.iter().map(|r| median(r)).collect();
    let worker = med[0];
    let costs = breakdown::measure(&load)?;
    let per_request_gap = |rate: f64| 1.0 / rate - 1.0 / worker;

    let mut table = String::from("mode,median_rate,ratio_to_worker,extra_ms_per_request\n");
    println!(
        "\n{:<8} {:>12} {:>10} {:>14}",
        "mode", "req/s", "ratio", "extra ms/req"
    );
    for (mode, rate) in Mode::ALL.into_iter().zip(&med) {
        let extra = per_request_gap(*rate) * 1e3;
        println!(
            "{:<8} {:>12.2} {:>10.3} {:>14.3}",
            mode.name(),
            rate,
            rate / worker,
            extra
        );
        writeln!(
            table,
            "{},{rate:.3},{:.4},{extra:.4}",
            mode.name(),
            rate / worker
        )?;
    }
    let compute_ms = 1e3 / worker;
    let sys = median(&syscalls);
    println!(
        "\nper-request overhead breakdown (compute alone: {compute_ms:.3} ms/request at this load):"
    );
    let rows = [
        (
            "serialise request+response (encode+decode)",
            costs.serialise,
        ),
        ("validate + codec decode (also in worker)", costs.validate),
        (
            &*format!("payload copies ({} on the path)", costs.copies),
            costs.copy_time,
        ),
    ];
    for (what, d) in rows {
        println!(
            "  {what:<46} {:>9.1} us  ({:.2}% of compute)",
            micros(d),
            100.0 * d.as_secs_f64() * 1e3 / compute_ms
        );
        writeln!(table, "breakdown:{what},{:.3},,", micros(d))?;
    }
    println!("  syscalls per request (client + server, TCP)  {sys:>9.1}");
    writeln!(table, "syscalls_per_request,{sys:.2},,")?;
    let dir = results_dir()?.join("net-overhead");
    std::fs::create_dir_all(&dir)?;
    std::fs::write(dir.join("overhead.csv"), table)?;
    println!(
        "net-overhead tcp/in-process={:.3} pipes/in-process={:.3} (goal >= 0.95)",
        med[2] / worker,
        med[1] / worker
    );
    Ok(())
}

fn micros(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}
