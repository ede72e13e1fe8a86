//! Tables, CSV files, plots and the summary line of `cargo xtask exp prodigy`.

use std::fmt::Write as _;
use std::io::Write;

use anyhow::Result;
use collab_policies::prodigy::planner::Plan;
use collab_policies::prodigy::serving::WarmedRepository;

use super::schemes::{Scheme, Served};
use crate::exp::plot::{Series, line_chart};
use crate::exp::results_dir;

/// One ensemble candidate (Alg. 5).
#[derive(Clone, Debug)]
pub(crate) struct EnsembleRow {
    pub(crate) r: usize,
    /// Weights of the plan's models, ascending in their numbers.
    pub(crate) weights: Vec<f64>,
    /// Profiled accuracy at `r`.
    pub(crate) accuracy: f64,
    /// The best single model's profiled accuracy at `r`.
    pub(crate) best_single: f64,
    /// Whether the knapsack kept it.
    pub(crate) kept: bool,
}

/// One warmed model.
#[derive(Clone, Debug)]
pub(crate) struct ModelRowCsv {
    pub(crate) r: usize,
    /// Measured fine-tuning seconds (or those of the reused checkpoint).
    pub(crate) seconds: f64,
    /// The planner's estimate, for candidates.
    pub(crate) estimated: Option<f64>,
    pub(crate) chosen: bool,
    pub(crate) exhaustive: bool,
}

/// Everything one task's comparison produced.
#[derive(Debug)]
pub(crate) struct TaskReport {
    pub(crate) task: String,
    pub(crate) plan: Plan,
    pub(crate) served: Vec<Served>,
    pub(crate) models: Vec<ModelRowCsv>,
    pub(crate) ensembles: Vec<EnsembleRow>,
    pub(crate) repository: WarmedRepository,
    /// Bytes of one checkpoint.
    pub(crate) bytes: u64,
    pub(crate) task_seconds: f64,
    /// PRODIGY's planning and profiling seconds (probes, profiles, ensembles).
    pub(crate) overhead_seconds: f64,
}

impl TaskReport {
    fn scheme(&self, s: Scheme) -> Option<&Served> {
        self.served.iter().find(|x| x.scheme == s)
    }
}

/// Writes every file and prints the tables and the summary line.
pub(crate) fn write_all(reports: &[TaskReport], rs: &[usize]) -> Result<()> {
    let dir = results_dir()?.join("prodigy");
    std::fs::create_dir_all(&dir)?;
    let mut schemes = std::fs::File::create(dir.join("schemes.csv"))?;
    writeln!(
        schemes,
        "task,scheme,mean_accuracy,finetune_seconds,checkpoints,bytes"
    )?;
    for rep in reports {
        let t = &rep.task;
        // Accuracy per number.
        let mut csv = String::from("r");
        for s in &rep.served {
            write!(csv, ",{}", s.scheme.name())?;
        }
        csv.push_str(",prodigy_model\n");
        println!("\n{t}: test accuracy per merging number");
        let mut head = format!("{:>4}", "r");
        for s in &rep.served {
            write!(head, " {:>11}", s.scheme.name())?;
        }
        println!("{head}  PRODIGY+ens model");
        for (i, &r) in rs.iter().enumerate() {
            let mut line = format!("{r:>4}");
            write!(csv, "{r}")?;
            for s in &rep.served {
                write!(line, " {:>11.3}", s.accuracy[i])?;
                write!(csv, ",{:.4}", s.accuracy[i])?;
            }
            let model = rep
                .scheme(Scheme::ProdigyEnsembles)
                .map_or(String::new(), |s| s.models[i].to_string());
            println!("{line}  {model}");
            writeln!(csv, ",{model}")?;
        }
        std::fs::write(dir.join(format!("{t}-accuracy.csv")), csv)?;
        println!(
            "{:>4} {:>11} {:>10} {:>11} {:>10}",
            "", "scheme", "mean acc", "finetune s", "checkpts"
        );
        for s in &rep.served {
            println!(
                "{:>4} {:>11} {:>10.3} {:>11.0} {:>10}",
                "",
                s.scheme.name(),
                s.mean(),
                s.seconds,
                s.stored
            );
            writeln!(
                schemes,
                "{t},{},{:.4},{:.1},{},{}",
                s.scheme.name(),
                s.mean(),
                s.seconds,
                s.stored,
                s.stored as u64 * rep.bytes
            )?;
        }
        println!(
            "{t}: task model {:.0} s; PRODIGY planning and profiling {:.0} s; plan {:?} ({:?})",
            rep.task_seconds,
            rep.overhead_seconds,
            rep.plan.sorted(),
            rep.plan.stop
        );
        let series: Vec<Series> = rep
            .served
            .iter()
            .map(|s| Series {
                label: s.scheme.name().to_string(),
                points: rs
                    .iter()
                    .zip(&s.accuracy)
                    .map(|(&r, &a)| (r as f64, a))
                    .collect(),
            })
            .collect();
        line_chart(
            &dir.join(format!("{t}-accuracy.png")),
            &format!("{t}: DeiT-Tiny test accuracy per merging number"),
            ("tokens merged per block (r)", "accuracy"),
            &series,
        )?;
        let mut models =
            String::from("r,finetune_seconds,estimated_seconds,prodigy_chosen,exhaustive\n");
        for m in &rep.models {
            writeln!(
                models,
                "{},{:.1},{},{},{}",
                m.r,
                m.seconds,
                m.estimated.map_or(String::new(), |e| format!("{e:.1}")),
                m.chosen,
                m.exhaustive
            )?;
        }
        std::fs::write(dir.join(format!("{t}-models.csv")), models)?;
        let mut ens = String::from("r,profiled_accuracy,best_single,gain,kept,weights\n");
        for e in &rep.ensembles {
            let w: Vec<String> = e.weights.iter().map(|w| format!("{w:.3}")).collect();
            writeln!(
                ens,
                "{},{:.4},{:.4},{:.4},{},{}",
                e.r,
                e.accuracy,
                e.best_single,
                e.accuracy - e.best_single,
                e.kept,
                w.join(" ")
            )?;
        }
        std::fs::write(dir.join(format!("{t}-ensembles.csv")), ens)?;
        let kept = rep.ensembles.iter().filter(|e| e.kept).count();
        let better = rep
            .ensembles
            .iter()
            .filter(|e| e.accuracy > e.best_single)
            .count();
        println!(
            "{t}: {} ensembles profiled, {better} beat the best single model, {kept} kept",
            rep.ensembles.len()
        );
        rep.repository
            .save(&dir.join(format!("{t}-repository.json")))?;
    }
    summary(reports, rs);
    Ok(())
}

fn summary(reports: &[TaskReport], rs: &[usize]) {
    let served: Vec<&Served> = reports.iter().flat_map(|r| &r.served).collect();
    let mean_of = |s: Scheme| -> f64 {
        let v: Vec<f64> = reports
            .iter()
            .filter_map(|r| r.scheme(s).map(Served::mean))
            .collect();
        v.iter().sum::<f64>() / v.len().max(1) as f64
    };
    let unwarmed = mean_of(Scheme::Unwarmed);
    for s in Scheme::ALL {
        println!(
            "mean over tasks and numbers: {:<11} {:.3} ({:+.3} vs Unwarmed)",
            s.name(),
            mean_of(s),
            mean_of(s) - unwarmed
        );
    }
    // No scheme can do better at a number than the task model does unmerged (unless a warm-up
    // also helps at r = 0): the gain's ceiling on our data.
    let zero = rs.iter().position(|&r| r == 0);
    let bound: Vec<f64> = reports
        .iter()
        .filter_map(|r| {
            let u = r.scheme(Scheme::Unwarmed)?;
            Some(u.accuracy.get(zero?)? - u.mean())
        })
        .collect();
    if !bound.is_empty() {
        println!(
            "gain ceiling (Unwarmed at r=0 minus its mean, over tasks): {:.3}",
            bound.iter().sum::<f64>() / bound.len() as f64
        );
    }
    // Sums over every task of one scheme's seconds or checkpoints.
    let total = |scheme: Scheme, f: fn(&Served) -> f64| -> f64 {
        served
            .iter()
            .filter(|s| s.scheme == scheme)
            .map(|s| f(s))
            .sum()
    };
    let seconds = |s: &Served| s.seconds;
    let (prodigy, exhaustive) = (
        total(Scheme::ProdigyEnsembles, seconds),
        total(Scheme::Exhaustive, seconds),
    );
    let time = prodigy / exhaustive;
    let storage = total(Scheme::ProdigyEnsembles, |s| s.stored as f64)
        / total(Scheme::Exhaustive, |s| s.stored as f64);
    let overhead: f64 = reports.iter().map(|r| r.overhead_seconds).sum();
    println!(
        "PRODIGY fine-tuning {prodigy:.0} s + planning and profiling {overhead:.0} s against Exhaustive {exhaustive:.0} s: {:.3} with the overhead",
        (prodigy + overhead) / exhaustive
    );
    let models = reports
        .iter()
        .map(|r| r.plan.chosen.len())
        .max()
        .unwrap_or(0);
    println!(
        "prodigy mean_gain={:.3} models={models} time_vs_exhaustive={time:.3} storage_vs_exhaustive={storage:.3}",
        mean_of(Scheme::ProdigyEnsembles) - unwarmed
    );
}
