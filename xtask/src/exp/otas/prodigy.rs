//! PRODIGY's serving scheme in `exp otas` (SPEC §5): the reduction scheduler
//! ([`ReductionScheduler`]) over a profile whose times are DeiT-Tiny's with ToMe merging a
//! constant `r` per block (measured in the run) and whose accuracies are each task's offline
//! table from `exp prodigy` ([`WarmedProfile`]); every batch runs each task's rows on the model
//! that table names for the chosen number, loaded from its checkpoint when it differs from the
//! one held (the load is timed and charged to the batch).
//!
//! Two variants: `prodigy` with the warmed repositories, `prodigy-unwarmed` with each task's
//! model fine-tuned without merging at every number (what the warm-up adds). ImageNet-1k has no
//! repository: it runs the checkpoint's own model, its accuracy per number measured here on
//! ImageNet images the traces never serve.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result};
use collab_core::Backend;
use collab_core::adaptive::{Batch, Gamma, LoadInfo, ProfileTable, TokenProfile};
use collab_core::model::{ModelConfig, Transformer};
use collab_policies::prodigy::serving::{ModelSource, WarmedProfile, WarmedRepository};
use collab_policies::prodigy::warmup::{accuracy_at, logits_at};
use collab_policies::token::serve::{BatchExecutor, BatchRun};

use super::backbone::{Backbone, Be, TASKS, TaskData};
use super::serve::{Workload, cerr};

/// Merging numbers the serving profile times (gamma = -r).
pub(crate) const SERVING_RS: [usize; 6] = [0, 5, 10, 15, 20, 25];

/// Batch sizes the serving profile times.
const BATCHES: [usize; 4] = [1, 4, 16, 64];

/// ImageNet-1k images scored per number, the first after the served ones.
const IMAGENET_SCORED: usize = 128;

/// Where `exp prodigy` leaves a task's checkpoints and tables.
pub(crate) fn task_dir(task: &str) -> PathBuf {
    collab_core::fixtures::models_dir()
        .join("prodigy")
        .join(task)
}

/// The two profiles PRODIGY serves with, and where each task's checkpoints are.
#[derive(Debug)]
pub(crate) struct Prodigy {
    /// With each task's warmed repository.
    pub(crate) warmed: WarmedProfile,
    /// With each task's model fine-tuned without merging at every number.
    pub(crate) unwarmed: WarmedProfile,
    dirs: Vec<Option<PathBuf>>,
    configs: Vec<ModelConfig>,
}

impl Prodigy {
    /// Loads the tables `exp prodigy` saved and measures the serving profile; `None` (with the
    /// reason) when a task's tables are missing. `served` ImageNet test images are the traces'.
    pub(crate) fn load(
        backbone: &Backbone,
        data: &TaskData,
        served: usize,
    ) -> Result<std::result::Result<Self, String>> {
        let mut warmed = vec![None];
        let mut unwarmed = vec![None];
        let mut dirs = vec![None];
        for name in &TASKS[1..] {
            let dir = task_dir(name);
            let (w, u) = (
                dir.join("repository.json"),
                dir.join("unwarmed-repository.json"),
            );
            if !w.exists() || !u.exists() {
                return Ok(Err(format!(
                    "no PRODIGY tables in {} (run `cargo xtask exp prodigy`)",
                    dir.display()
                )));
            }
            match (WarmedRepository::load(&w), WarmedRepository::load(&u)) {
                (Ok(w), Ok(u)) => {
                    warmed.push(Some(w));
                    unwarmed.push(Some(u));
                }
                (Err(e), _) | (_, Err(e)) => return Ok(Err(e.to_string())),
            }
            dirs.push(Some(dir));
        }
        let configs = data
            .test
            .iter()
            .map(|t| {
                let ModelConfig::Vit(mut v) = backbone.model.config().clone() else {
                    anyhow::bail!("DeiT-Tiny is a ViT");
                };
                v.num_classes = t.classes;
                Ok(ModelConfig::Vit(v))
            })
            .collect::<Result<Vec<_>>>()?;
        let times = measure(backbone, data, served, &unwarmed)?;
        Ok(Ok(Self {
            warmed: WarmedProfile::new(times.clone(), warmed)?,
            unwarmed: WarmedProfile::new(times, unwarmed)?,
            dirs,
            configs,
        }))
    }

    /// Prints each profile's accuracy per number.
    pub(crate) fn print(&self) {
        for (name, p) in [
            ("prodigy", &self.warmed),
            ("prodigy-unwarmed", &self.unwarmed),
        ] {
            for (t, task) in TASKS.iter().enumerate() {
                let accs: Vec<String> = p
                    .gammas()
                    .iter()
                    .map(|&g| {
                        let model = p
                            .model_at(t, g)
                            .map_or("model".to_string(), |r| r.source.to_string());
                        p.accuracy(t, g)
                            .map_or("-".into(), |a| format!("{}:{a:.3}({model})", -g))
                    })
                    .collect();
                println!("{name} profile, {task}: {}", accs.join(" "));
            }
        }
    }
}

/// The serving profile: per-sample times at each `-r` of [`SERVING_RS`] and batch size of
/// [`BATCHES`] (best of two runs; the task models share the checkpoint's architecture, so one
/// time serves every task), ImageNet-1k's accuracy on images after the served ones, and the
/// other tasks' unwarmed table accuracy (what `WarmedProfile` replaces by each table's).
fn measure(
    backbone: &Backbone,
    data: &TaskData,
    served: usize,
    unwarmed: &[Option<WarmedRepository>],
) -> Result<ProfileTable> {
    let be = backbone.model.backend().clone();
    let image = &data.test[0];
    let scored = image.subset(&(served..served + IMAGENET_SCORED).collect::<Vec<_>>());
    let mut imagenet = Vec::new();
    let mut times = Vec::new();
    for &r in &SERVING_RS {
        let acc = if scored.is_empty() {
            anyhow::bail!("no ImageNet-1k images left after the {served} served");
        } else {
            accuracy_at(&backbone.model, &scored, r, 32)?
        };
        imagenet.push(acc);
        let mut row = Vec::new();
        for &b in &BATCHES {
            let idx: Vec<usize> = (0..b).map(|i| i % image.len()).collect();
            let (x, _) = image.batch(&be, &idx)?;
            let mut best = f64::INFINITY;
            for _ in 0..2 {
                let t0 = Instant::now();
                let logits = logits_at(&backbone.model, &x, r)?;
                be.to_vec(&logits)?;
                best = best.min(t0.elapsed().as_secs_f64());
            }
            row.push(best / b as f64);
        }
        println!(
            "prodigy serving profile r={r}: ImageNet-1k accuracy {acc:.3}, per-sample ms {:?}",
            row.iter()
                .map(|t| (t * 1e4).round() / 10.0)
                .collect::<Vec<_>>()
        );
        times.push(row);
    }
    // Gammas ascending: -25 .. 0.
    let gammas: Vec<Gamma> = SERVING_RS.iter().rev().map(|&r| -(r as Gamma)).collect();
    let at = |g: Gamma| {
        SERVING_RS
            .iter()
            .position(|&r| r as Gamma == -g)
            .unwrap_or(0)
    };
    Ok(ProfileTable::from_fn(
        gammas,
        BATCHES.to_vec(),
        TASKS.len(),
        |t, g| {
            let r = usize::try_from(-g).ok()?;
            match unwarmed.get(t).and_then(Option::as_ref) {
                Some(repo) => repo.best(r).map(|row| row.accuracy),
                None => Some(imagenet[at(g)]),
            }
        },
        |_, g, b| {
            let i = BATCHES.iter().position(|&x| x == b)?;
            Some(times[at(g)][i])
        },
    )?)
}

/// Runs batches on the model each task's table names at the batch's number.
#[derive(Debug)]
pub(crate) struct ProdigyExecutor<'a> {
    pub(crate) backbone: &'a Backbone,
    pub(crate) data: &'a TaskData,
    pub(crate) work: &'a Workload,
    pub(crate) prodigy: &'a Prodigy,
    pub(crate) profile: &'a WarmedProfile,
    loaded: Vec<Option<(ModelSource, Transformer<Be>)>>,
    /// Seconds spent loading checkpoints.
    pub(crate) load_seconds: f64,
    /// Checkpoints loaded.
    pub(crate) loads: usize,
}

impl<'a> ProdigyExecutor<'a> {
    pub(crate) fn new(
        backbone: &'a Backbone,
        data: &'a TaskData,
        work: &'a Workload,
        prodigy: &'a Prodigy,
        profile: &'a WarmedProfile,
    ) -> Self {
        Self {
            backbone,
            data,
            work,
            prodigy,
            profile,
            loaded: (0..TASKS.len()).map(|_| None).collect(),
            load_seconds: 0.0,
            loads: 0,
        }
    }

    /// The model `task` runs at `gamma`, loaded if another one is held.
    fn model(&mut self, task: usize, gamma: Gamma) -> Result<&Transformer<Be>> {
        let (Some(row), Some(Some(dir))) = (
            self.profile.model_at(task, gamma),
            self.prodigy.dirs.get(task),
        ) else {
            return Ok(&self.backbone.model);
        };
        let source = row.source;
        let held = matches!(&self.loaded[task], Some((s, _)) if *s == source);
        if !held {
            let t0 = Instant::now();
            let m = load(dir, source, &self.prodigy.configs[task])?;
            self.load_seconds += t0.elapsed().as_secs_f64();
            self.loads += 1;
            self.loaded[task] = Some((source, m));
        }
        self.loaded[task]
            .as_ref()
            .map(|(_, m)| m)
            .context("loaded above")
    }
}

fn load(dir: &Path, source: ModelSource, config: &ModelConfig) -> Result<Transformer<Be>> {
    let path = WarmedRepository::path_of(dir, source);
    Transformer::from_safetensors(Be::cpu(), config.clone(), &path)
        .with_context(|| format!("loading {}", path.display()))
}

impl BatchExecutor for ProdigyExecutor<'_> {
    fn run(&mut self, batch: &Batch, gamma: Gamma, _: &LoadInfo) -> collab_core::Result<BatchRun> {
        let r = usize::try_from(-gamma.min(0)).unwrap_or(0);
        let be = self.backbone.model.backend().clone();
        let t0 = Instant::now();
        let mut correct = vec![false; batch.len()];
        for (task, _) in batch.task_counts() {
            let rows: Vec<usize> = (0..batch.len())
                .filter(|&i| batch.queries[i].task == task)
                .collect();
            let samples: Vec<usize> = rows
                .iter()
                .map(|&i| self.work.samples[batch.queries[i].id as usize])
                .collect();
            let (x, labels) = self.data.test[task].batch(&be, &samples)?;
            let model = self.model(task, gamma).map_err(cerr)?;
            let logits = logits_at(model, &x, r)?;
            let preds = be.index_to_vec(&be.argmax_last(&logits)?)?;
            for (k, &i) in rows.iter().enumerate() {
                correct[i] = preds[k] as usize == labels[k];
            }
        }
        Ok(BatchRun {
            correct,
            seconds: t0.elapsed().as_secs_f64(),
        })
    }
}
