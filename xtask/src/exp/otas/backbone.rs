//! One frozen DeiT-Tiny serving every task (SPEC §4): per task its prompt sets (by prompt count)
//! and its heads, the merge schedule of each gamma < 0, and real execution of a mixed-task
//! batch at one gamma.

use std::collections::BTreeMap;
use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use collab_backends::candle::CandleBackend;
use collab_core::Backend;
use collab_core::adaptive::Gamma;
use collab_core::fixtures;
use collab_core::model::{Head, Hidden, Input, Transformer};
use collab_core::token::{IdentityAdapter, TokenAdapter};
use collab_policies::token::prompt::{PromptAdapter, PromptSet};
use collab_policies::token::repo::{PromptRepository, task_head};
use collab_policies::token::schedule::MergeSchedule;
use collab_policies::token::tasks::{self, LabelledImages};
use collab_policies::token::tome::ToMe;

pub(crate) type Be = CandleBackend;

/// The three query tasks of the experiment, in task-id order (A, B, C of SPEC §4).
pub(crate) const TASKS: [&str; 3] = ["imagenet1k", "digits", "animal"];

/// Where trained prompts live (`cargo xtask exp token-train` writes them).
pub(crate) fn repo_dir() -> PathBuf {
    fixtures::models_dir().join("otas").join("prompts")
}

/// The task data: test splits per task, and the training splits of the trained tasks.
#[derive(Debug)]
pub(crate) struct TaskData {
    /// Test split per task id.
    pub(crate) test: Vec<LabelledImages>,
    /// Training split per task id (None for ImageNet-1k, which is not trained).
    pub(crate) train: Vec<Option<LabelledImages>>,
}

/// Split sizes and seed of the trained tasks (train; the rest is test).
pub(crate) const DIGITS_TRAIN: usize = 600;
pub(crate) const ANIMAL_TRAIN: usize = 500;
pub(crate) const SPLIT_SEED: u64 = 2024;

impl TaskData {
    pub(crate) fn load() -> Result<Self> {
        let digits = tasks::digits(DIGITS_TRAIN, SPLIT_SEED)?;
        // The animal task relabels the same 1000 images: decode them once.
        let imagenet = tasks::imagenet1k()?;
        let animal = tasks::imagenet_animal_from(imagenet.clone(), ANIMAL_TRAIN, SPLIT_SEED)?;
        Ok(Self {
            test: vec![imagenet, digits.test, animal.test],
            train: vec![None, Some(digits.train), Some(animal.train)],
        })
    }
}

/// Heads and prompts of one task.
#[derive(Debug)]
struct TaskState {
    /// Head used at gamma <= 0.
    base_head: Head<Be>,
    /// Per prompt count > 0: prompts and their head.
    prompted: BTreeMap<usize, (PromptSet<Be>, Head<Be>)>,
}

/// The shared backbone with every task's prompts and heads.
#[derive(Debug)]
pub(crate) struct Backbone {
    pub(crate) model: Transformer<Be>,
    tasks: Vec<TaskState>,
    /// The merge schedule of each gamma < 0.
    pub(crate) schedules: BTreeMap<Gamma, MergeSchedule>,
}

impl Backbone {
    /// DeiT-Tiny on the fast CPU backend with the prompts found in `repo` (ImageNet-1k uses the
    /// checkpoint's head; the other tasks need at least their count-0 head).
    pub(crate) fn load(repo: &PromptRepository) -> Result<Self> {
        let be = CandleBackend::cpu();
        let model = fixtures::deit_tiny(be.clone())?;
        let mut states = Vec::new();
        for (t, name) in TASKS.iter().enumerate() {
            if t == 0 {
                states.push(TaskState {
                    base_head: model.head_stage().clone(),
                    prompted: BTreeMap::new(),
                });
                continue;
            }
            let base = repo.load(&be, name, 0).with_context(|| {
                format!("no trained head for task `{name}`: run `cargo xtask exp token-train`")
            })?;
            let mut prompted = BTreeMap::new();
            for count in repo.counts(name)? {
                if count == 0 {
                    continue;
                }
                let e = repo.load(&be, name, count)?;
                let Some(p) = e.prompts.clone() else {
                    bail!("entry ({name}, {count}) has no prompts");
                };
                prompted.insert(count, (p, task_head(&model, e.fc.clone())?));
            }
            states.push(TaskState {
                base_head: task_head(&model, base.fc.clone())?,
                prompted,
            });
        }
        Ok(Self {
            model,
            tasks: states,
            schedules: BTreeMap::new(),
        })
    }

    /// Whether `task` can run at `gamma` (prompts trained for gamma > 0, a schedule for < 0).
    pub(crate) fn runnable(&self, task: usize, gamma: Gamma) -> bool {
        match gamma {
            g if g > 0 => self.tasks[task].prompted.contains_key(&(g as usize)),
            g if g < 0 => self.schedules.contains_key(&g),
            _ => true,
        }
    }

    /// Tokens of the backbone (class token included).
    pub(crate) fn tokens(&self) -> usize {
        match self.model.config() {
            collab_core::model::ModelConfig::Vit(v) => (v.image_size / v.patch_size).pow(2) + 1,
            collab_core::model::ModelConfig::Bert(_) => 0,
        }
    }

    /// Runs one batch at `gamma` for real: row i is `images[i]` of task `tasks[i]`. Returns the
    /// predicted class of every row.
    pub(crate) fn predict(&self, rows: &[(usize, &[f32])], gamma: Gamma) -> Result<Vec<usize>> {
        let be = self.model.backend().clone();
        let n = rows.len();
        if n == 0 {
            return Ok(Vec::new());
        }
        let mut data = Vec::with_capacity(n * rows[0].1.len());
        for (_, img) in rows {
            data.extend_from_slice(img);
        }
        let x = be.from_vec(data, &[n, 3, 224, 224])?;
        let hidden = self.model.embed(&Input::Images(x))?;
        let tome;
        let prompts;
        let adapter: &dyn TokenAdapter<Be> = match gamma {
            g if g < 0 => {
                let s = self
                    .schedules
                    .get(&g)
                    .with_context(|| format!("no merge schedule for gamma {g}"))?;
                tome = ToMe::new(s.clone());
                &tome
            }
            g if g > 0 => {
                let sets = rows
                    .iter()
                    .map(|(t, _)| {
                        self.tasks[*t]
                            .prompted
                            .get(&(g as usize))
                            .map(|(p, _)| p)
                            .with_context(|| format!("task {} has no {g} prompts", TASKS[*t]))
                    })
                    .collect::<Result<Vec<_>>>()?;
                prompts = PromptAdapter::for_rows(&be, &sets)?;
                &prompts
            }
            _ => &IdentityAdapter,
        };
        let layers = self.model.config().encoder().layers;
        let out = self.model.run_blocks_with(hidden, 0..layers, adapter)?;
        let mut preds = vec![0usize; n];
        for task in 0..self.tasks.len() {
            let idx: Vec<u32> = (0..n as u32)
                .filter(|&i| rows[i as usize].0 == task)
                .collect();
            if idx.is_empty() {
                continue;
            }
            let head = if gamma > 0 {
                &self.tasks[task]
                    .prompted
                    .get(&(gamma as usize))
                    .context("checked above")?
                    .1
            } else {
                &self.tasks[task].base_head
            };
            let sel = be.index_from_vec(idx.clone(), &[idx.len()])?;
            let x = be.index_select(&out.x, 0, &sel)?;
            let logits = head.forward(&be, &Hidden::new(x, out.protected))?;
            let arg = be.index_to_vec(&be.argmax_last(&logits)?)?;
            for (k, &i) in idx.iter().enumerate() {
                preds[i as usize] = arg[k] as usize;
            }
        }
        Ok(preds)
    }
}
