//! The schemes `exp prodigy` compares (SPEC §5, Figures 4.7 and 4.8) and the scorer that
//! measures a model's accuracy at a merging number once per image set.

use std::collections::BTreeMap;

use anyhow::Result;
use collab_core::model::Transformer;
use collab_policies::prodigy::serving::{ModelSource, WarmedRepository};
use collab_policies::prodigy::warmup::accuracy_at;
use collab_policies::token::tasks::LabelledImages;

use super::warmed::{Be, Store};

/// A scheme: which model serves each merging number.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Scheme {
    /// The task model at every number.
    Unwarmed,
    /// The model warmed at r_max at every number.
    Maxprune,
    /// At each number the model warmed there (or at the next number of its grid).
    Exhaustive,
    /// The planner's warmed models and the task model, the best by profile at each number.
    Prodigy,
    /// The same with the kept ensembles.
    ProdigyEnsembles,
}

impl Scheme {
    pub(crate) const ALL: [Scheme; 5] = [
        Scheme::Unwarmed,
        Scheme::Maxprune,
        Scheme::Exhaustive,
        Scheme::Prodigy,
        Scheme::ProdigyEnsembles,
    ];

    pub(crate) fn name(self) -> &'static str {
        match self {
            Scheme::Unwarmed => "Unwarmed",
            Scheme::Maxprune => "Maxprune",
            Scheme::Exhaustive => "Exhaustive",
            Scheme::Prodigy => "PRODIGY",
            Scheme::ProdigyEnsembles => "PRODIGY+ens",
        }
    }
}

/// One scheme on one task: its model at each number, what it cost and how it scored.
#[derive(Clone, Debug)]
pub(crate) struct Served {
    pub(crate) scheme: Scheme,
    /// Parallel to the run's merging numbers.
    pub(crate) models: Vec<ModelSource>,
    /// Fine-tuning seconds beyond the task model: its warm-ups only (PRODIGY's planning,
    /// profiling and averaging are reported apart, as overhead).
    pub(crate) seconds: f64,
    /// Checkpoints it serves from: the distinct models its table names, what a deployment
    /// keeps once the offline phase is done (the task model included where it serves).
    pub(crate) stored: usize,
    /// Test accuracy at each number.
    pub(crate) accuracy: Vec<f64>,
}

impl Served {
    pub(crate) fn mean(&self) -> f64 {
        self.accuracy.iter().sum::<f64>() / self.accuracy.len().max(1) as f64
    }
}

/// The models a scheme stores: each distinct model it serves with.
pub(crate) fn distinct(models: &[ModelSource]) -> usize {
    let mut m = models.to_vec();
    m.sort_unstable();
    m.dedup();
    m.len()
}

/// The number of `grid` that serves `r` in Exhaustive: `r` itself, else the next one above
/// (warmed for at least as much merging), else the largest.
pub(crate) fn grid_model(grid: &[usize], r: usize) -> usize {
    grid.iter()
        .copied()
        .filter(|&g| g >= r)
        .min()
        .or_else(|| grid.iter().copied().max())
        .unwrap_or(r)
}

/// Which images an accuracy is measured on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Set {
    /// Held out from fine-tuning; the planner's and the tables' inputs.
    Profile,
    /// Scored once per scheme; what the report shows.
    Test,
}

/// Accuracies of (model, number) on the profile and test images, each measured once, with
/// the models loaded once on the serving backend.
pub(crate) struct Scorer<'a> {
    store: &'a Store,
    profile: &'a LabelledImages,
    test: &'a LabelledImages,
    loaded: BTreeMap<ModelSource, Transformer<Be>>,
    cache: BTreeMap<(Set, ModelSource, usize), f64>,
    /// Seconds spent measuring on each set.
    pub(crate) seconds: BTreeMap<Set, f64>,
}

impl<'a> Scorer<'a> {
    pub(crate) fn new(
        store: &'a Store,
        profile: &'a LabelledImages,
        test: &'a LabelledImages,
    ) -> Self {
        Self {
            store,
            profile,
            test,
            loaded: BTreeMap::new(),
            cache: BTreeMap::new(),
            seconds: BTreeMap::new(),
        }
    }

    /// Adds a model built in the run (an ensemble) without a checkpoint to load.
    pub(crate) fn insert(&mut self, source: ModelSource, model: Transformer<Be>) {
        self.loaded.insert(source, model);
    }

    /// Forgets a model (an ensemble the knapsack dropped).
    pub(crate) fn remove(&mut self, source: ModelSource) {
        self.loaded.remove(&source);
    }

    /// The model of `source`, loaded once.
    pub(crate) fn model(&mut self, source: ModelSource) -> Result<&Transformer<Be>> {
        if !self.loaded.contains_key(&source) {
            let m = self.store.load(Be::cpu(), source)?;
            self.loaded.insert(source, m);
        }
        self.loaded
            .get(&source)
            .ok_or_else(|| anyhow::anyhow!("{source} was just loaded"))
    }

    /// Accuracy of `source` served at `r` on `set`.
    pub(crate) fn accuracy(&mut self, set: Set, source: ModelSource, r: usize) -> Result<f64> {
        if let Some(&a) = self.cache.get(&(set, source, r)) {
            return Ok(a);
        }
        let data = match set {
            Set::Profile => self.profile,
            Set::Test => self.test,
        };
        let start = std::time::Instant::now();
        let a = accuracy_at(self.model(source)?, data, r, 32)?;
        *self.seconds.entry(set).or_default() += start.elapsed().as_secs_f64();
        self.cache.insert((set, source, r), a);
        Ok(a)
    }

    /// Accuracies of `source` at every number of `rs` on `set`.
    pub(crate) fn curve(
        &mut self,
        set: Set,
        source: ModelSource,
        rs: &[usize],
    ) -> Result<Vec<f64>> {
        rs.iter().map(|&r| self.accuracy(set, source, r)).collect()
    }

    /// A scheme served with `models` (parallel to `rs`), scored on the test images.
    pub(crate) fn serve(
        &mut self,
        scheme: Scheme,
        rs: &[usize],
        models: Vec<ModelSource>,
        seconds: f64,
    ) -> Result<Served> {
        let accuracy = rs
            .iter()
            .zip(&models)
            .map(|(&r, &m)| self.accuracy(Set::Test, m, r))
            .collect::<Result<Vec<_>>>()?;
        Ok(Served {
            scheme,
            stored: distinct(&models),
            models,
            seconds,
            accuracy,
        })
    }
}

/// The models a repository serves at each of `rs`.
pub(crate) fn repository_models(repo: &WarmedRepository, rs: &[usize]) -> Vec<ModelSource> {
    rs.iter()
        .map(|&r| repo.best(r).map_or(ModelSource::Unwarmed, |row| row.source))
        .collect()
}
