//! Shard importance: how much each shard, at each fidelity, contributes to accuracy.
//!
//! The planner maximises the summed importance of the shards it picks (SPEC §3 (a)). A value
//! is a difference of a task metric measured on a profiling split (STS-B Spearman, SST-2
//! accuracy of a linear probe, ImageNet top-1), so the table is data: measured once per model
//! and task, saved as JSON, read by the planner.

use std::path::Path;

use serde::{Deserialize, Serialize};

use super::{FIDELITIES, Fidelity, ShardKey};
use collab_core::{Error, Result};

/// The measured importance of every shard at every fidelity.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ImportanceTable {
    /// The model profiled.
    pub model: String,
    /// The metric the values are differences of (`stsb-spearman`, `sst2-accuracy`, `top1`).
    pub metric: String,
    /// The metric of the whole f32 model on the profiling split.
    pub full_metric: f64,
    /// Layers of the model.
    pub layers: usize,
    /// Shards per layer.
    pub shards: usize,
    /// `values[(layer * shards + shard) * 7 + fidelity.index()]`: the metric gained by running
    /// that shard at that fidelity rather than leaving it out.
    pub values: Vec<f64>,
}

impl ImportanceTable {
    /// A table of `layers x shards` shards with every value 0.
    pub fn zeros(
        model: &str,
        metric: &str,
        full_metric: f64,
        layers: usize,
        shards: usize,
    ) -> Self {
        Self {
            model: model.into(),
            metric: metric.into(),
            full_metric,
            layers,
            shards,
            values: vec![0.0; layers * shards * FIDELITIES.len()],
        }
    }

    fn slot(&self, key: ShardKey, fidelity: Fidelity) -> Option<usize> {
        (key.layer < self.layers && key.shard < self.shards)
            .then(|| (key.layer * self.shards + key.shard) * FIDELITIES.len() + fidelity.index())
    }

    /// The importance of `key` at `fidelity`; 0 for a shard outside the table.
    pub fn value(&self, key: ShardKey, fidelity: Fidelity) -> f64 {
        self.slot(key, fidelity)
            .and_then(|i| self.values.get(i).copied())
            .unwrap_or(0.0)
    }

    /// Sets the importance of `key` at `fidelity`.
    ///
    /// # Errors
    /// [`Error::Config`] for a shard outside the table.
    pub fn set(&mut self, key: ShardKey, fidelity: Fidelity, value: f64) -> Result<()> {
        let i = self.slot(key, fidelity).ok_or_else(|| {
            Error::Config(format!(
                "shard {key:?} is outside a table of {} layers x {} shards",
                self.layers, self.shards
            ))
        })?;
        self.values[i] = value;
        Ok(())
    }

    /// Saves the table as pretty JSON.
    ///
    /// # Errors
    /// [`Error::Io`].
    pub fn save(&self, path: &Path) -> Result<()> {
        collab_core::json::save(self, path)
    }

    /// Loads a table saved by [`ImportanceTable::save`].
    ///
    /// # Errors
    /// [`Error::Io`], or [`Error::BadFile`] if it does not parse or its size is inconsistent.
    pub fn load(path: &Path) -> Result<Self> {
        let t: Self = collab_core::json::load(path)?;
        if t.values.len() != t.layers * t.shards * FIDELITIES.len() {
            return Err(Error::BadFile {
                path: path.to_path_buf(),
                message: format!(
                    "{} values for {} layers x {} shards x {} fidelities",
                    t.values.len(),
                    t.layers,
                    t.shards,
                    FIDELITIES.len()
                ),
            });
        }
        Ok(t)
    }
}

/// The least a shard is worth, whatever its measured removal cost: data being equal, a shard
/// is worth running rather than not.
pub const IMPORTANCE_FLOOR: f64 = 1e-4;

/// The measurements an importance table is made of.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ImportanceMeasurements {
    /// Metric of the whole f32 model.
    pub full: f64,
    /// `drop[layer][shard]`: metric with that one shard left out (the rest f32).
    pub without: Vec<Vec<f64>>,
    /// `quantised[layer][fidelity index]`: metric with every shard of that layer at that
    /// fidelity (the rest f32).
    pub quantised: Vec<Vec<f64>>,
}

impl ImportanceMeasurements {
    /// The metric's noise on the profiling split: the root mean square of the *improvements*
    /// that leaving single shards out shows (a shard of a trained model does not truly hurt
    /// it, so those are resolution of the split, not signal).
    pub fn noise(&self) -> f64 {
        let all: Vec<f64> = self
            .without
            .iter()
            .flatten()
            .map(|&m| self.full - m)
            .collect();
        if all.is_empty() {
            return 0.0;
        }
        (all.iter().map(|d| d.min(0.0).powi(2)).sum::<f64>() / all.len() as f64).sqrt()
    }

    /// The table: `value(l, i, f) = max(full - without[l][i], floor) - max(full -
    /// quantised[l][f], 0) / shards`, with `floor = max(noise, IMPORTANCE_FLOOR)`.
    ///
    /// A shard is worth what leaving it out costs; running it at a lower fidelity costs its
    /// share of what quantising its whole layer to that fidelity costs (quantisation loss is
    /// profiled per layer and fidelity, removal per shard: single-shard quantisation changes
    /// are below the metric's resolution on a profiling split, whole-layer ones are not).
    /// Removal costs below the split's noise are raised to the noise: they are not measured
    /// to be small, they are not measured at all, and treating them as free makes a planner
    /// drop many shards at once, whose joint cost is far above the sum of the single ones.
    pub fn table(&self, model: &str, metric: &str) -> ImportanceTable {
        let floor = self.noise().max(IMPORTANCE_FLOOR);
        let layers = self.without.len();
        let shards = self.without.first().map_or(0, Vec::len);
        let mut t = ImportanceTable::zeros(model, metric, self.full, layers, shards);
        for (layer, row) in self.without.iter().enumerate() {
            for (shard, &m) in row.iter().enumerate() {
                let base = (self.full - m).max(floor);
                for f in FIDELITIES {
                    let q = self
                        .quantised
                        .get(layer)
                        .and_then(|r| r.get(f.index()))
                        .map_or(0.0, |&mq| (self.full - mq).max(0.0) / shards as f64);
                    let i = (layer * shards + shard) * FIDELITIES.len() + f.index();
                    t.values[i] = base - q;
                }
            }
        }
        t
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)] // test code: a failed unwrap is the failed assertion

    use super::*;

    #[test]
    fn table_follows_its_formula_on_a_hand_case() {
        let m = ImportanceMeasurements {
            full: 0.8,
            without: vec![vec![0.7, 0.82]],
            quantised: vec![vec![0.6, 0.7, 0.78, 0.8, 0.8, 0.8, 0.8]],
        };
        // improvements 0 and 0.02 -> noise sqrt(0.02^2 / 2)
        let noise = (0.0004f64 / 2.0).sqrt();
        assert!((m.noise() - noise).abs() < 1e-12);
        let t = m.table("m", "top1");
        let close = |a: f64, b: f64| (a - b).abs() < 1e-12;
        let k0 = ShardKey { layer: 0, shard: 0 };
        let k1 = ShardKey { layer: 0, shard: 1 };
        // shard 0: worth 0.1; at 2 bits it costs half of the layer's 0.2 loss
        assert!(close(t.value(k0, Fidelity::F32), 0.1));
        assert!(close(t.value(k0, Fidelity::Bits(2)), 0.0));
        assert!(close(t.value(k0, Fidelity::Bits(4)), 0.09));
        // shard 1's removal "helped": it is worth the noise, and less at low widths
        assert!(close(t.value(k1, Fidelity::F32), noise));
        assert!(close(t.value(k1, Fidelity::Bits(3)), noise - 0.05));
        assert_eq!(t.value(ShardKey { layer: 3, shard: 0 }, Fidelity::F32), 0.0);
    }

    #[test]
    fn tables_round_trip_through_json_and_refuse_wrong_sizes() {
        let dir = std::env::temp_dir().join(format!("collab-importance-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let mut t = ImportanceTable::zeros("m", "top1", 0.8, 2, 3);
        t.set(ShardKey { layer: 1, shard: 2 }, Fidelity::Bits(5), 0.25)
            .unwrap();
        assert!(
            t.set(ShardKey { layer: 2, shard: 0 }, Fidelity::F32, 1.0)
                .is_err()
        );
        let p = dir.join("t.json");
        t.save(&p).unwrap();
        assert_eq!(ImportanceTable::load(&p).unwrap(), t);
        t.values.pop();
        t.save(&p).unwrap();
        assert!(matches!(
            ImportanceTable::load(&p),
            Err(Error::BadFile { .. })
        ));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
