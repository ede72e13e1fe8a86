//! Ensembles in weight space (PRODIGY, SPEC §5, Alg. 5): for a serving merging number `r`,
//! each warmed model weighs by its profiled accuracy at `r`, normalised, and the ensemble is
//! the weighted average of their parameters: one ordinary model, no extra inference time. A
//! knapsack keeps the ensembles whose accuracy gain is worth their storage.

use collab_core::model::NamedTensor;
use collab_core::{Error, Result};

/// The weights of warmed models at one serving number: `accuracy_m / sum(accuracy)`.
///
/// # Errors
/// [`Error::InvalidInput`] for no models, or an accuracy that is negative or not finite, or
/// all zero.
pub fn ensemble_weights(accuracies: &[f64]) -> Result<Vec<f64>> {
    let sum: f64 = accuracies.iter().sum();
    if accuracies.is_empty() || accuracies.iter().any(|a| !a.is_finite() || *a < 0.0) || sum <= 0.0
    {
        return Err(Error::InvalidInput(format!(
            "ensemble weights need non-negative, finite accuracies that are not all zero: \
             {accuracies:?}"
        )));
    }
    Ok(accuracies.iter().map(|a| a / sum).collect())
}

/// The weighted average of models' parameters (each a `Transformer::named_parameters` list):
/// the ensemble's parameters, which `NamedTensors` turns back into a model.
///
/// # Errors
/// [`Error::InvalidInput`] for no models, a weight count that differs from the model count,
/// or models whose parameter names, shapes or orders differ.
pub fn average(models: &[Vec<NamedTensor>], weights: &[f64]) -> Result<Vec<NamedTensor>> {
    let Some(first) = models.first() else {
        return Err(Error::InvalidInput("averaging no models".into()));
    };
    if weights.len() != models.len() || weights.iter().any(|w| !w.is_finite()) {
        return Err(Error::InvalidInput(format!(
            "{} weights for {} models",
            weights.len(),
            models.len()
        )));
    }
    let mut out: Vec<NamedTensor> = first
        .iter()
        .map(|t| NamedTensor {
            name: t.name.clone(),
            shape: t.shape.clone(),
            values: vec![0.0; t.values.len()],
        })
        .collect();
    for (model, &w) in models.iter().zip(weights) {
        if model.len() != out.len() {
            return Err(Error::InvalidInput(format!(
                "a model of {} parameters among models of {}",
                model.len(),
                out.len()
            )));
        }
        for (acc, t) in out.iter_mut().zip(model) {
            if t.name != acc.name || t.shape != acc.shape || t.values.len() != acc.values.len() {
                return Err(Error::InvalidInput(format!(
                    "parameter `{}` {:?} does not match `{}` {:?}",
                    t.name, t.shape, acc.name, acc.shape
                )));
            }
            for (a, v) in acc.values.iter_mut().zip(&t.values) {
                *a += (w as f32) * v;
            }
        }
    }
    Ok(out)
}

/// 0/1 knapsack: the items (gain, bytes) to keep within `budget` bytes that maximise the
/// total gain, by dynamic programming over sizes rounded up to `unit` bytes. Items without a
/// positive gain are never kept. Returns their indices, ascending.
///
/// # Errors
/// [`Error::InvalidInput`] for `unit = 0`, a non-finite gain, or a table larger than 10^8
/// cells (raise `unit`).
pub fn knapsack(items: &[(f64, u64)], budget: u64, unit: u64) -> Result<Vec<usize>> {
    if unit == 0 || items.iter().any(|(g, _)| !g.is_finite()) {
        return Err(Error::InvalidInput(
            "knapsack needs a unit > 0 and finite gains".into(),
        ));
    }
    let cap = usize::try_from(budget / unit).unwrap_or(usize::MAX);
    if cap.saturating_mul(items.len().max(1)) > 100_000_000 {
        return Err(Error::InvalidInput(format!(
            "knapsack of {} items over {cap} units is too large; raise the unit",
            items.len()
        )));
    }
    let cost: Vec<usize> = items
        .iter()
        .map(|&(_, b)| usize::try_from(b.div_ceil(unit)).unwrap_or(usize::MAX))
        .collect();
    // best[i][c]: the best gain with the first i items in c units.
    let mut best = vec![vec![0.0f64; cap + 1]; items.len() + 1];
    for (i, &(gain, _)) in items.iter().enumerate() {
        for c in 0..=cap {
            let skip = best[i][c];
            let take = if gain > 0.0 && cost[i] <= c {
                best[i][c - cost[i]] + gain
            } else {
                f64::NEG_INFINITY
            };
            best[i + 1][c] = skip.max(take);
        }
    }
    let mut kept = vec![];
    let mut c = cap;
    for i in (0..items.len()).rev() {
        if best[i + 1][c] != best[i][c] {
            kept.push(i);
            c -= cost[i];
        }
    }
    kept.reverse();
    Ok(kept)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use proptest::prelude::*;

    use super::*;

    fn model(v: f32) -> Vec<NamedTensor> {
        vec![
            NamedTensor {
                name: "a".into(),
                shape: vec![2],
                values: vec![v, 2.0 * v],
            },
            NamedTensor {
                name: "b".into(),
                shape: vec![1],
                values: vec![-v],
            },
        ]
    }

    #[test]
    fn weights_follow_accuracy_and_the_average_is_weighted() {
        let w = ensemble_weights(&[0.6, 0.2]).unwrap();
        assert!((w[0] - 0.75).abs() < 1e-12 && (w[1] - 0.25).abs() < 1e-12);
        let avg = average(&[model(1.0), model(5.0)], &w).unwrap();
        assert_eq!(avg[0].values, vec![2.0, 4.0]);
        assert_eq!(avg[1].values, vec![-2.0]);
        assert!(ensemble_weights(&[0.0, 0.0]).is_err());
        assert!(ensemble_weights(&[]).is_err());
        assert!(ensemble_weights(&[0.5, f64::NAN]).is_err());
        let mut other = model(1.0);
        other[1].name = "c".into();
        assert!(average(&[model(1.0), other], &[0.5, 0.5]).is_err());
        assert!(average(&[model(1.0)], &[0.5, 0.5]).is_err());
    }

    #[test]
    fn the_knapsack_keeps_what_is_worth_its_storage() {
        // Budget 10: {0: 6 for 5, 1: 5 for 5, 2: 8 for 9, 3: -1 for 1}: keep 0 and 1 (11 > 8).
        let items = [(6.0, 5), (5.0, 5), (8.0, 9), (-1.0, 1)];
        assert_eq!(knapsack(&items, 10, 1).unwrap(), vec![0, 1]);
        assert_eq!(knapsack(&items, 9, 1).unwrap(), vec![2]);
        assert!(knapsack(&items, 4, 1).unwrap().is_empty());
        assert!(knapsack(&items, 10, 0).is_err());
    }

    proptest! {
        #[test]
        fn the_knapsack_is_within_budget_and_as_good_as_brute_force(
            items in proptest::collection::vec((-1.0f64..10.0, 1u64..20), 0..8),
            budget in 0u64..60,
        ) {
            let kept = knapsack(&items, budget, 1).unwrap();
            let size: u64 = kept.iter().map(|&i| items[i].1).sum();
            prop_assert!(size <= budget);
            let gain: f64 = kept.iter().map(|&i| items[i].0).sum();
            let mut best = 0.0f64;
            for mask in 0u32..(1 << items.len()) {
                let pick: Vec<usize> = (0..items.len()).filter(|i| mask & (1 << i) != 0).collect();
                if pick.iter().map(|&i| items[i].1).sum::<u64>() <= budget {
                    best = best.max(pick.iter().map(|&i| items[i].0).sum());
                }
            }
            prop_assert!((gain - best).abs() < 1e-9, "{gain} vs {best}");
        }
    }
}
