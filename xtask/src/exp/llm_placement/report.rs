//! Tables, CSV and figures of the llm-placement experiment.

use std::fmt::Write as _;
use std::path::Path;

use anyhow::Result;

use super::{POLICIES, Row};
use crate::exp::plot::{Series, line_chart};

/// Prints one line per request and policy.
pub(super) fn table(rows: &[Row]) {
    println!(
        "{:<8} {:>6} {:>6} {:<12} {:>9} {:>9} {:>12} {:>4} {:<16}",
        "group", "prompt", "decode", "policy", "ttft_ms", "tpot_ms", "cost_usd", "met", "kv"
    );
    for r in rows {
        println!(
            "{:<8} {:>6} {:>6} {:<12} {:>9.1} {:>9.1} {:>12.4e} {:>4} {:<16?}",
            r.group,
            r.prompt,
            r.decode,
            r.policy,
            r.plan.ttft * 1e3,
            r.plan.tpot * 1e3,
            r.plan.cost,
            if r.plan.met { "yes" } else { "no" },
            r.plan.kv
        );
    }
}

/// Writes every row as CSV.
pub(super) fn csv(path: &Path, rows: &[Row]) -> Result<()> {
    let mut s = String::from(
        "group,prompt,decode,policy,ttft_ms,tpot_ms,cost_usd,met,kv,prefill_cloud_ops,decode_cloud_ops,prefill_transfers,decode_transfers\n",
    );
    for r in rows {
        let cloud = |sides: &[collab_policies::operator::Side]| {
            sides
                .iter()
                .filter(|s| **s == collab_policies::operator::Side::Cloud)
                .count()
        };
        writeln!(
            s,
            "{},{},{},{},{:.4},{:.4},{:.6e},{},{:?},{},{},{},{}",
            r.group,
            r.prompt,
            r.decode,
            r.policy,
            r.plan.ttft * 1e3,
            r.plan.tpot * 1e3,
            r.plan.cost,
            r.plan.met,
            r.plan.kv,
            cloud(&r.plan.prefill.plan.sides),
            cloud(&r.plan.decode.plan.sides),
            r.plan.prefill.plan.transfers(),
            r.plan.decode.plan.transfers(),
        )?;
    }
    std::fs::write(path, s)?;
    Ok(())
}

/// Figures like the paper's Figs. 6–7: TTFT over prompt length and TPOT over decode length
/// (Fig. 6), cost per request over both (Fig. 7), one PNG per group.
pub(super) fn figures(out: &Path, rows: &[Row], fixed: usize) -> Result<()> {
    let groups: Vec<String> = {
        let mut g: Vec<String> = rows.iter().map(|r| r.group.clone()).collect();
        g.dedup();
        g
    };
    for group in &groups {
        let series = |x_prompt: bool, y: &dyn Fn(&Row) -> f64| -> Vec<Series> {
            POLICIES
                .iter()
                .map(|policy| Series {
                    label: policy.to_string(),
                    points: rows
                        .iter()
                        .filter(|r| &r.group == group && r.policy == *policy)
                        .filter(|r| {
                            if x_prompt {
                                r.decode == fixed
                            } else {
                                r.prompt == fixed
                            }
                        })
                        .map(|r| {
                            (
                                (if x_prompt { r.prompt } else { r.decode } as f64).log2(),
                                y(r),
                            )
                        })
                        .collect(),
                })
                .collect()
        };
        let ttft_ms = |r: &Row| (r.plan.ttft * 1e3).min(2000.0);
        let tpot_ms = |r: &Row| (r.plan.tpot * 1e3).min(1000.0);
        let cost = |r: &Row| r.plan.cost * 1e3;
        line_chart(
            &out.join(format!("fig6-ttft-{group}.png")),
            &format!("{group}: TTFT (ms, capped at 2000) vs prompt, decode {fixed}"),
            ("log2 prompt tokens", "TTFT ms"),
            &series(true, &ttft_ms),
        )?;
        line_chart(
            &out.join(format!("fig6-tpot-{group}.png")),
            &format!("{group}: TPOT (ms, capped at 1000) vs decode, prompt {fixed}"),
            ("log2 decode tokens", "TPOT ms"),
            &series(false, &tpot_ms),
        )?;
        for (x_prompt, x, held) in [(false, "decode", "prompt"), (true, "prompt", "decode")] {
            let cloud_paid: Vec<Series> = series(x_prompt, &cost)
                .into_iter()
                .filter(|s| s.label != "device-only")
                .collect();
            line_chart(
                &out.join(format!("fig7-cost-{x}-{group}.png")),
                &format!("{group}: cloud cost per request (milli-dollars) vs {x}, {held} {fixed}"),
                (&format!("log2 {x} tokens"), "m$ per request"),
                &cloud_paid,
            )?;
        }
    }
    Ok(())
}

/// Prints the requests where the exact planner is cheaper than greedy (or meets the SLA where
/// greedy does not).
pub(super) fn greedy_gaps(rows: &[Row], group: &str) {
    let find = |policy: &str, p: usize, d: usize| {
        rows.iter()
            .find(|r| r.group == group && r.policy == policy && r.prompt == p && r.decode == d)
    };
    for e in rows
        .iter()
        .filter(|r| r.group == group && r.policy == "exact")
    {
        let Some(g) = find("greedy", e.prompt, e.decode) else {
            continue;
        };
        if !g.plan.met && e.plan.met {
            println!(
                "  {group} prompt {} decode {}: greedy misses the SLA, exact meets it",
                e.prompt, e.decode
            );
        } else if e.plan.cost < g.plan.cost * (1.0 - 1e-3) {
            println!(
                "  {group} prompt {} decode {}: exact {:.1}% cheaper than greedy ({:?} vs {:?})",
                e.prompt,
                e.decode,
                100.0 * (1.0 - e.plan.cost / g.plan.cost),
                e.plan.kv,
                g.plan.kv
            );
        }
    }
}
