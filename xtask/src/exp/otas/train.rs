//! `cargo xtask exp token-train`: iterative prompt learning (SPEC §4) on the two trained tasks
//! (digits, ImageNet animal-vs-not) on frozen DeiT-Tiny: a linear head (0 prompts), then 2, 4, 8
//! prompts per layer, each initialised from the previous (its prompts frozen, the new ones and
//! the head trained); saved to the prompt repository and scored on the held-out test splits.
//!
//! Sizes: the head-only step computes the frozen features once, so it runs many epochs over the
//! whole training split; a prompt step back-propagates through all 12 blocks (about 0.35 s per
//! image on 2 cores), so it runs `--prompt-epochs` over the first `--prompt-examples` images.

use std::io::Write;

use anyhow::{Result, bail};
use collab_backends::candle::CandleBackend;
use collab_core::fixtures;
use collab_policies::token::repo::PromptRepository;
use collab_policies::token::train::{TrainConfig, evaluate, train_prompts};

use super::backbone::{TASKS, TaskData, repo_dir};
use crate::exp::results_dir;

/// Arguments.
#[derive(clap::Args, Debug)]
pub(crate) struct Args {
    /// Prompt counts, trained in this order (each from the previous; the first must be 0).
    #[arg(long, value_delimiter = ',', default_values_t = [0usize, 2, 4, 8])]
    counts: Vec<usize>,
    /// Epochs of the head-only step (count 0) over the whole training split.
    #[arg(long, default_value_t = 30)]
    head_epochs: usize,
    /// Epochs of each prompt step.
    #[arg(long, default_value_t = 1)]
    prompt_epochs: usize,
    /// Training examples of each prompt step (the first of the training split).
    #[arg(long, default_value_t = 600)]
    prompt_examples: usize,
    /// Mini-batch size.
    #[arg(long, default_value_t = 16)]
    batch: usize,
    /// Learning rate of the prompt steps (AdamW); the head-only step uses 3x.
    #[arg(long, default_value_t = 1e-2)]
    lr: f64,
    /// Test examples per task scored after each step (the first of the test split, as
    /// `token-profile` and `otas` use them).
    #[arg(long, default_value_t = 600)]
    test_examples: usize,
    /// Tasks to train.
    #[arg(long, value_delimiter = ',', default_values_t = ["digits".to_string(), "animal".to_string()])]
    tasks: Vec<String>,
}

pub(crate) fn run(args: Args) -> Result<()> {
    if args.counts.first() != Some(&0) {
        bail!("--counts must start with 0 (the head-only step the prompts start from)");
    }
    let mut data = TaskData::load()?;
    for set in &mut data.test {
        let n = args.test_examples.min(set.len());
        *set = set.subset(&(0..n).collect::<Vec<_>>());
    }
    let repo = PromptRepository::open(repo_dir())?;
    let train_model = fixtures::deit_tiny(CandleBackend::differentiable())?;
    let eval_model = fixtures::deit_tiny(CandleBackend::cpu())?;
    let dir = results_dir()?.join("otas");
    std::fs::create_dir_all(&dir)?;
    let mut csv = std::fs::File::create(dir.join("prompt-training.csv"))?;
    writeln!(
        csv,
        "task,prompts,epochs,train_examples,train_accuracy,test_examples,test_accuracy,seconds,final_loss"
    )?;
    let mut lines = Vec::new();
    for task in &args.tasks {
        let t = TASKS
            .iter()
            .position(|n| n == task)
            .ok_or_else(|| anyhow::anyhow!("unknown task `{task}` (digits, animal)"))?;
        let Some(train) = &data.train[t] else {
            bail!("task `{task}` is not trained (it uses the checkpoint's head)");
        };
        let n = args.prompt_examples.min(train.len());
        let prompt_train = train.subset(&(0..n).collect::<Vec<_>>());
        let mut prev = None;
        for &count in &args.counts {
            let (set, cfg) = if count == 0 {
                let cfg = TrainConfig {
                    epochs: args.head_epochs,
                    batch: args.batch,
                    lr: 3.0 * args.lr,
                    weight_decay: 1e-4,
                    seed: 7,
                    progress: true,
                };
                (train, cfg)
            } else {
                let cfg = TrainConfig {
                    epochs: args.prompt_epochs,
                    batch: args.batch,
                    lr: args.lr,
                    weight_decay: 1e-4,
                    seed: 7 + count as u64,
                    progress: true,
                };
                (&prompt_train, cfg)
            };
            let (mut entry, report) =
                train_prompts(&train_model, task, set, count, prev.as_ref(), &cfg)?;
            let acc = evaluate(&eval_model, &entry, &data.test[t], 32)?;
            entry.meta.test_accuracy = Some(acc);
            repo.save(eval_model.backend(), &entry)?;
            let loss = report.losses.last().copied().unwrap_or(f64::NAN);
            let line = format!(
                "{task:<8} {count:>7} {:>6} {:>9.3} {:>9.3} {:>8.1}",
                set.len(),
                report.train_accuracy,
                acc,
                report.seconds
            );
            println!("{line}");
            lines.push(line);
            writeln!(
                csv,
                "{task},{count},{},{},{:.4},{},{acc:.4},{:.1},{loss:.4}",
                cfg.epochs,
                set.len(),
                report.train_accuracy,
                data.test[t].len(),
                report.seconds
            )?;
            prev = Some(entry);
        }
    }
    println!(
        "\n{:<8} {:>7} {:>6} {:>9} {:>9} {:>8}",
        "task", "prompts", "train", "train_acc", "test_acc", "seconds"
    );
    for l in lines {
        println!("{l}");
    }
    println!("prompts saved in {}", repo_dir().display());
    Ok(())
}
