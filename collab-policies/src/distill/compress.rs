//! Compression modules for a personalised student's features (SPEC §6, "Bandwidth"): the
//! device projects its student's features onto `k < f` values and sends those; the cloud
//! classifies them with a head trained for that projection. One module per compression ratio
//! `f / k`, each trained on the selected public data with the student frozen; at run time the
//! device takes the least compressed module whose upload fits the measured bandwidth.

use collab_core::{Error, Result};
use serde::{Deserialize, Serialize};

use super::train::{FusionHead, affine, check_labelled, fit_linear_stack};
use crate::train::TrainConfig;

/// One compression ratio: the device's projection `[k, f]` and the cloud's head over `k`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CompressionModule {
    /// Feature size in.
    pub features: usize,
    /// Values sent per inference.
    pub code: usize,
    /// `[code, features]`, row-major.
    pub weight: Vec<f32>,
    /// `[code]`.
    pub bias: Vec<f32>,
    /// The cloud's classifier of the code.
    pub head: FusionHead,
}

impl CompressionModule {
    /// The compression ratio `features / code`.
    pub fn ratio(&self) -> f64 {
        self.features as f64 / self.code.max(1) as f64
    }

    /// Bytes sent per inference (the code as `f32`).
    pub fn bytes_per_inference(&self) -> usize {
        4 * self.code
    }

    /// Device side: the code of one feature vector.
    ///
    /// # Errors
    /// [`Error::InvalidInput`] for a vector of another size than `features`.
    pub fn encode(&self, f: &[f32]) -> Result<Vec<f32>> {
        if f.len() != self.features || self.weight.len() != self.code * self.features {
            return Err(Error::InvalidInput(format!(
                "compression module of {} features got a vector of {}",
                self.features,
                f.len()
            )));
        }
        Ok(affine(&self.weight, &self.bias, f))
    }

    /// Device and cloud together: the class of one feature vector after compression.
    ///
    /// # Errors
    /// As [`encode`](Self::encode) and [`FusionHead::predict`].
    pub fn predict(&self, f: &[f32]) -> Result<usize> {
        self.head.predict(&self.encode(f)?)
    }

    /// The share of `features` whose class after compression is its label.
    ///
    /// # Errors
    /// [`Error::InvalidInput`] for no samples or unequal lengths; as [`predict`](Self::predict).
    pub fn accuracy(&self, features: &[Vec<f32>], labels: &[usize]) -> Result<f64> {
        let codes = features
            .iter()
            .map(|f| self.encode(f))
            .collect::<Result<Vec<_>>>()?;
        self.head.accuracy(&codes, labels)
    }

    /// Trains the projection onto `code` values and its head together on labelled student
    /// features (the student frozen: its features are inputs), by AdamW on the head's
    /// cross-entropy.
    ///
    /// # Errors
    /// [`Error::InvalidInput`] for `code` of 0 or above the feature size, bad features or
    /// labels (as [`FusionHead::fit`]), or a configuration that cannot train.
    pub fn fit(
        features: &[Vec<f32>],
        labels: &[usize],
        classes: usize,
        code: usize,
        cfg: &TrainConfig,
    ) -> Result<Self> {
        let f = check_labelled(features, labels, classes)?;
        if code == 0 || code > f {
            return Err(Error::InvalidInput(format!(
                "a code of {code} values for {f} features (need 1..={f})"
            )));
        }
        let mut layers = fit_linear_stack(features, labels, &[f, code, classes], cfg)?;
        let (hw, hb) = layers
            .pop()
            .ok_or_else(|| Error::InvalidInput("no head".into()))?;
        let (weight, bias) = layers
            .pop()
            .ok_or_else(|| Error::InvalidInput("no projection".into()))?;
        Ok(Self {
            features: f,
            code,
            weight,
            bias,
            head: FusionHead {
                classes,
                features: code,
                weight: hw,
                bias: hb,
            },
        })
    }
}

/// The code size for a compression ratio: `round(features / ratio)`, at least 1.
pub fn code_size(features: usize, ratio: f64) -> usize {
    ((features as f64 / ratio).round() as usize).clamp(1, features.max(1))
}

/// Chooses the least compressed module whose upload of one inference takes at most
/// `budget_s` at `bandwidth_bytes_per_s`, or the most compressed one when none fits
/// (SPEC §6: "chosen at run time from the measured bandwidth").
///
/// # Errors
/// [`Error::InvalidInput`] for no modules, or a bandwidth or budget that is not positive.
pub fn choose(
    modules: &[CompressionModule],
    bandwidth_bytes_per_s: f64,
    budget_s: f64,
) -> Result<&CompressionModule> {
    if !(bandwidth_bytes_per_s > 0.0 && budget_s > 0.0) {
        return Err(Error::InvalidInput(format!(
            "bandwidth {bandwidth_bytes_per_s} B/s and budget {budget_s} s must be positive"
        )));
    }
    let fits =
        |m: &&CompressionModule| m.bytes_per_inference() as f64 / bandwidth_bytes_per_s <= budget_s;
    modules
        .iter()
        .filter(fits)
        .max_by_key(|m| m.code)
        .or_else(|| modules.iter().min_by_key(|m| m.code))
        .ok_or_else(|| Error::InvalidInput("no compression modules to choose from".into()))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};

    use super::*;

    fn separable(n: usize, f: usize, classes: usize, seed: u64) -> (Vec<Vec<f32>>, Vec<usize>) {
        let mut rng = StdRng::seed_from_u64(seed);
        (0..n)
            .map(|i| {
                let class = i % classes;
                let mut v: Vec<f32> = (0..f).map(|_| rng.random_range(-0.3..0.3)).collect();
                v[class] += 2.0;
                (v, class)
            })
            .unzip()
    }

    fn cfg() -> TrainConfig {
        TrainConfig {
            epochs: 40,
            batch: 16,
            lr: 1e-2,
            weight_decay: 0.0,
            seed: 1,
            progress: false,
        }
    }

    #[test]
    fn a_code_as_wide_as_the_classes_keeps_separable_features_apart() {
        let (x, y) = separable(120, 24, 4, 2);
        let m = CompressionModule::fit(&x, &y, 4, 4, &cfg()).unwrap();
        assert_eq!((m.code, m.ratio()), (4, 6.0));
        assert_eq!(m.bytes_per_inference(), 16);
        assert_eq!(m.encode(&x[0]).unwrap().len(), 4);
        assert_eq!(m.accuracy(&x, &y).unwrap(), 1.0);
        assert!(m.encode(&[0.0; 23]).is_err());
        assert!(CompressionModule::fit(&x, &y, 4, 0, &cfg()).is_err());
        assert!(CompressionModule::fit(&x, &y, 4, 25, &cfg()).is_err());
    }

    #[test]
    fn the_least_compressed_module_that_fits_the_link_is_chosen() {
        let (x, y) = separable(40, 12, 2, 3);
        let quick = TrainConfig { epochs: 1, ..cfg() };
        let modules: Vec<CompressionModule> = [12, 6, 2]
            .iter()
            .map(|&k| CompressionModule::fit(&x, &y, 2, k, &quick).unwrap())
            .collect();
        // 48, 24 and 8 bytes; a budget of 1 s.
        assert_eq!(choose(&modules, 100.0, 1.0).unwrap().code, 12);
        assert_eq!(choose(&modules, 30.0, 1.0).unwrap().code, 6);
        assert_eq!(choose(&modules, 10.0, 1.0).unwrap().code, 2);
        assert_eq!(choose(&modules, 1.0, 1.0).unwrap().code, 2, "none fits");
        assert!(choose(&modules, 0.0, 1.0).is_err());
        assert!(choose(&[], 10.0, 1.0).is_err());
        assert_eq!(code_size(192, 1.5), 128);
        assert_eq!(code_size(192, 9.0), 21);
        assert_eq!(code_size(4, 100.0), 1);
    }
}
