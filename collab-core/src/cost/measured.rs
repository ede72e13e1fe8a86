//! A cost model measured on the real model: per-stage latency over a grid of batch sizes and
//! token counts, interpolated bilinearly in between and scaled by work outside the grid.

use std::path::Path;

use serde::{Deserialize, Serialize};

use super::{CostModel, Workload, time_median};
use crate::model::{Hidden, Transformer};
use crate::{Backend, Error, Result};

/// One measurement.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct ProfilePoint {
    /// What was timed (for blocks, `layer` is the block timed).
    pub work: Workload,
    /// Median seconds over the repetitions.
    pub seconds: f64,
}

/// Which grid to time.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ProfileSpec {
    /// Batch sizes.
    pub batches: Vec<usize>,
    /// Token counts per input entering a block (must include the model's own count to profile
    /// the embedding and head, which only run at that count).
    pub tokens: Vec<usize>,
    /// Timed repetitions per point (the median is kept) after one warm-up run.
    pub repeats: usize,
    /// Time every block, or only block 0 and use it for all (blocks of a ViT/BERT are the same
    /// computation; per-layer timing only captures noise).
    pub per_layer: bool,
}

/// A measured per-stage latency profile of one model on one backend.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct MeasuredProfile {
    /// The backend it was measured on (`candle-cpu`, ...).
    pub backend: String,
    /// A model description (preset name or config summary).
    pub model: String,
    /// Number of blocks of the model.
    pub layers: usize,
    /// The measurements.
    pub points: Vec<ProfilePoint>,
    /// `None` for a profile timed on real hardware; for one derived from a model of the
    /// hardware (a roofline, a datasheet), how it was derived. Every report that uses an
    /// estimated profile must say so; [`MeasuredProfile::provenance`] gives the words.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub estimate: Option<String>,
}

/// Times `model`'s stages on `spec`'s grid with random hidden states of the right shape.
///
/// # Errors
/// Backend errors; [`Error::Config`] for an empty grid.
pub fn profile_model<B: Backend>(
    model: &Transformer<B>,
    name: &str,
    spec: &ProfileSpec,
    make_input: &dyn Fn(usize) -> Result<crate::model::Input<B>>,
) -> Result<MeasuredProfile> {
    if spec.batches.is_empty() || spec.tokens.is_empty() {
        return Err(Error::Config(
            "profile grid needs batches and tokens".into(),
        ));
    }
    let be = model.backend();
    let d = model.config().encoder().hidden;
    let mut points = vec![];
    for &batch in &spec.batches {
        let input = make_input(batch)?;
        let embedded = model.embed(&input)?;
        let native_tokens = embedded.dims3(be)?.1;
        let t = time_median(spec.repeats, || {
            model.embed(&input)?;
            be.synchronize()
        })?;
        points.push(ProfilePoint {
            work: Workload::Embed {
                batch,
                tokens: native_tokens,
            },
            seconds: t,
        });
        let t = time_median(spec.repeats, || {
            model.head(&embedded)?;
            be.synchronize()
        })?;
        points.push(ProfilePoint {
            work: Workload::Head {
                batch,
                tokens: native_tokens,
            },
            seconds: t,
        });
        for &tokens in &spec.tokens {
            let vals: Vec<f32> = (0..batch * tokens * d)
                .map(|i| ((i * 7919 % 1000) as f32 / 1000.0) - 0.5)
                .collect();
            let h = Hidden::new(be.from_vec(vals, &[batch, tokens, d])?, embedded.protected);
            let layers: Vec<usize> = if spec.per_layer {
                (0..model.num_blocks()).collect()
            } else {
                vec![0]
            };
            for layer in layers {
                let t = time_median(spec.repeats, || {
                    model.run_blocks(h.clone(), layer..layer + 1)?;
                    be.synchronize()
                })?;
                points.push(ProfilePoint {
                    work: Workload::Block {
                        layer,
                        batch,
                        tokens,
                    },
                    seconds: t,
                });
            }
        }
    }
    Ok(MeasuredProfile {
        backend: be.name(),
        model: name.into(),
        layers: model.num_blocks(),
        points,
        estimate: None,
    })
}

/// The stage of a workload with the layer removed, to group comparable points.
fn stage_key(w: &Workload) -> (u8, usize) {
    match *w {
        Workload::Embed { .. } => (0, 0),
        Workload::Block { layer, .. } => (1, layer),
        Workload::Head { .. } => (2, 0),
        Workload::Operator { .. } => (3, 0),
        Workload::Shard { bits, .. } => (4, usize::from(bits)),
    }
}

impl MeasuredProfile {
    /// Saves the profile as pretty JSON.
    ///
    /// # Errors
    /// [`Error::Io`].
    pub fn save(&self, path: &Path) -> Result<()> {
        crate::json::save(self, path)
    }

    /// Where the numbers come from, for a report's header: `measured on <backend>` or
    /// `ESTIMATE (<how>), not measured`.
    pub fn provenance(&self) -> String {
        match &self.estimate {
            None => format!("measured on {}", self.backend),
            Some(how) => format!("ESTIMATE ({how}), not measured"),
        }
    }

    /// Loads a profile saved by [`MeasuredProfile::save`].
    ///
    /// # Errors
    /// [`Error::Io`], or [`Error::BadFile`] if it does not parse.
    pub fn load(path: &Path) -> Result<Self> {
        crate::json::load(path)
    }

    /// The points for the same stage as `work` (for blocks: that layer, else layer 0).
    fn candidates(&self, work: &Workload) -> Vec<ProfilePoint> {
        let key = stage_key(work);
        let exact: Vec<ProfilePoint> = self
            .points
            .iter()
            .filter(|p| stage_key(&p.work) == key)
            .copied()
            .collect();
        if !exact.is_empty() || key.0 != 1 {
            return exact;
        }
        self.points
            .iter()
            .filter(|p| stage_key(&p.work) == (1, 0))
            .copied()
            .collect()
    }
}

/// Linear interpolation of `f` between the grid values bracketing `x`; outside the grid, the
/// nearest grid value scaled proportionally (`f(x) = f(edge) * x / edge`).
fn interp1(grid: &[usize], x: usize, f: &dyn Fn(usize) -> f64) -> f64 {
    let (lo, hi) = (grid[0], grid[grid.len() - 1]);
    if x <= lo {
        // The ratio first, so that `x == lo` returns the grid value exactly.
        return f(lo) * (x as f64 / lo as f64);
    }
    if x >= hi {
        return f(hi) * (x as f64 / hi as f64);
    }
    let i = grid.partition_point(|&g| g <= x);
    let (a, b) = (grid[i - 1], grid[i]);
    let t = (x - a) as f64 / (b - a) as f64;
    f(a) * (1.0 - t) + f(b) * t
}

impl CostModel for MeasuredProfile {
    fn name(&self) -> String {
        match self.estimate {
            None => format!("measured {} on {}", self.model, self.backend),
            Some(_) => format!("estimated {} on {}", self.model, self.backend),
        }
    }

    fn seconds(&self, work: &Workload) -> Result<f64> {
        let pts = self.candidates(work);
        let none = |reason: &str| Error::NoPrediction {
            model: self.name(),
            workload: work.to_string(),
            reason: reason.into(),
        };
        if let Workload::Block { layer, .. } = work
            && *layer >= self.layers
        {
            return Err(none("the model has no such block"));
        }
        if pts.is_empty() {
            return Err(none("nothing of this stage was measured"));
        }
        let mut batches: Vec<usize> = pts.iter().map(|p| p.work.batch()).collect();
        let mut tokens: Vec<usize> = pts.iter().map(|p| p.work.tokens()).collect();
        batches.sort_unstable();
        batches.dedup();
        tokens.sort_unstable();
        tokens.dedup();
        let at = |b: usize, t: usize| -> f64 {
            pts.iter()
                .find(|p| p.work.batch() == b && p.work.tokens() == t)
                .map_or(f64::NAN, |p| p.seconds)
        };
        let v = interp1(&batches, work.batch(), &|b| {
            interp1(&tokens, work.tokens(), &|t| at(b, t))
        });
        if v.is_finite() {
            Ok(v)
        } else {
            Err(none("the measured grid is incomplete around this point"))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn profile() -> MeasuredProfile {
        let mut points = vec![];
        for b in [1usize, 4] {
            for t in [10usize, 20] {
                points.push(ProfilePoint {
                    work: Workload::Block {
                        layer: 0,
                        batch: b,
                        tokens: t,
                    },
                    seconds: (b * t) as f64 * 1e-3,
                });
            }
        }
        MeasuredProfile {
            backend: "test".into(),
            model: "m".into(),
            layers: 2,
            points,
            estimate: None,
        }
    }

    /// Grid points come back bit for bit, at the grid's edges too (a CI run once saw
    /// `0.012621965999999998` for a measured `0.012621966` at 197 tokens: `f * x / hi` rounds
    /// twice where `f * (x / hi)` multiplies by exactly 1).
    #[test]
    fn grid_points_are_returned_exactly() {
        for seconds in [0.012621966, 0.1, 1.0 / 3.0, 7.77e-5] {
            let point = |batch, tokens| ProfilePoint {
                work: Workload::Block {
                    layer: 0,
                    batch,
                    tokens,
                },
                seconds: if (batch, tokens) == (2, 197) {
                    seconds
                } else {
                    seconds * (batch * tokens) as f64 / 394.0
                },
            };
            let p = MeasuredProfile {
                backend: "test".into(),
                model: "m".into(),
                layers: 1,
                points: vec![point(1, 99), point(1, 197), point(2, 99), point(2, 197)],
                estimate: None,
            };
            for q in &p.points {
                assert_eq!(p.seconds(&q.work).expect("predicts"), q.seconds);
            }
        }
    }

    #[test]
    fn interpolates_inside_and_scales_outside_the_grid() {
        let p = profile();
        let s = |layer, batch, tokens| {
            p.seconds(&Workload::Block {
                layer,
                batch,
                tokens,
            })
            .expect("predicts")
        };
        assert!((s(0, 1, 10) - 0.010).abs() < 1e-12);
        assert!((s(0, 4, 15) - 0.060).abs() < 1e-12);
        assert!(
            (s(1, 2, 10) - 0.020).abs() < 1e-12,
            "layer 1 uses layer 0's points"
        );
        assert!(
            (s(0, 8, 20) - 0.160).abs() < 1e-12,
            "scaled past the largest batch"
        );
    }

    #[test]
    fn unknown_stage_or_layer_is_a_typed_error() {
        let p = profile();
        let e = p
            .seconds(&Workload::Head {
                batch: 1,
                tokens: 10,
            })
            .expect_err("no head points");
        assert!(matches!(e, Error::NoPrediction { .. }), "{e}");
        assert!(
            p.seconds(&Workload::Block {
                layer: 5,
                batch: 1,
                tokens: 10
            })
            .is_err()
        );
    }

    #[test]
    fn json_round_trip() {
        let p = profile();
        let dir = std::env::temp_dir().join(format!("collab-profile-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("tmp");
        let f = dir.join("p.json");
        p.save(&f).expect("save");
        assert_eq!(MeasuredProfile::load(&f).expect("load"), p);
        let _ = std::fs::remove_dir_all(dir);
    }
}
