//! The fine-tuning planner (PRODIGY, SPEC §5, Alg. 4).
//!
//! Always fine-tune `r_mid` and `r_max`; keep a list of intervals, initially
//! `[r_mid, r_max]`; then repeatedly sort the intervals by the difference of the profiled
//! accuracies at their ends, take the steepest one that can still be split (a candidate lies
//! strictly inside it), fine-tune the candidate nearest its midpoint, moved up while that
//! exceeds the time budget (larger numbers fine-tune faster: fewer tokens), split the interval
//! there and add the costs. Stop when the next model would exceed the time budget alpha or the
//! storage budget beta, or nothing can be split. Published: candidates 0..25 and
//! {30, 40, 50, 100}, `r_mid = 20`, 6 models, e.g. {20, 24, 30, 40, 50, 100}.

use collab_core::{Error, Result};
use serde::{Deserialize, Serialize};

/// What was measured about one merging number before planning.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Candidate {
    /// Tokens merged per layer.
    pub r: usize,
    /// Seconds to fine-tune a model at `r` (measured on a few steps and scaled).
    pub finetune_seconds: f64,
    /// Bytes to store the fine-tuned model.
    pub bytes: u64,
    /// Profiled accuracy at `r` (of the model the warmed ones start from).
    pub accuracy: f64,
}

/// The budgets of Alg. 4.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Budgets {
    /// Fine-tuning time, seconds (alpha).
    pub seconds: f64,
    /// Storage, bytes (beta).
    pub bytes: u64,
}

/// Why planning stopped.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Stop {
    /// The next model would exceed the time budget, even moved up.
    TimeBudget,
    /// The next model would exceed the storage budget.
    StorageBudget,
    /// No interval has a candidate strictly inside.
    NothingToSplit,
}

/// The planner's answer.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Plan {
    /// The merging numbers to fine-tune, in the order chosen (`r_mid`, `r_max`, then each
    /// split point).
    pub chosen: Vec<usize>,
    /// Their total fine-tuning time.
    pub seconds: f64,
    /// Their total storage.
    pub bytes: u64,
    /// Whether `r_mid` and `r_max` alone exceed a budget (they are always fine-tuned).
    pub mandatory_over_budget: bool,
    /// Why it stopped.
    pub stop: Stop,
}

impl Plan {
    /// The chosen numbers in ascending order.
    pub fn sorted(&self) -> Vec<usize> {
        let mut v = self.chosen.clone();
        v.sort_unstable();
        v
    }
}

/// Plans which merging numbers to fine-tune (see the module docs).
///
/// # Errors
/// [`Error::InvalidInput`] for candidates not strictly ascending in `r`, a non-finite or
/// negative time or accuracy, `r_mid` or `r_max` not among the candidates, `r_mid >= r_max`,
/// or a negative or non-finite time budget.
pub fn plan(
    candidates: &[Candidate],
    r_mid: usize,
    r_max: usize,
    budgets: Budgets,
) -> Result<Plan> {
    let bad = |m: String| Err(Error::InvalidInput(format!("fine-tuning planner: {m}")));
    if candidates.windows(2).any(|w| w[0].r >= w[1].r) {
        return bad("candidates must be strictly ascending in r".into());
    }
    if let Some(c) = candidates.iter().find(|c| {
        !(c.finetune_seconds.is_finite() && c.finetune_seconds >= 0.0 && c.accuracy.is_finite())
    }) {
        return bad(format!(
            "candidate r = {} has a time or accuracy that is not usable",
            c.r
        ));
    }
    if !(budgets.seconds.is_finite() && budgets.seconds >= 0.0) {
        return bad(format!("time budget {} s", budgets.seconds));
    }
    if r_mid >= r_max {
        return bad(format!("r_mid {r_mid} must be below r_max {r_max}"));
    }
    let at = |r: usize| candidates.iter().position(|c| c.r == r);
    let (Some(mid), Some(max)) = (at(r_mid), at(r_max)) else {
        return bad(format!(
            "r_mid {r_mid} and r_max {r_max} must be candidates"
        ));
    };
    let mut chosen = vec![mid, max];
    let mut seconds = candidates[mid].finetune_seconds + candidates[max].finetune_seconds;
    let mut bytes = candidates[mid].bytes.saturating_add(candidates[max].bytes);
    let mandatory_over_budget = seconds > budgets.seconds || bytes > budgets.bytes;
    // Intervals as candidate indices (lo, hi), lo < hi.
    let mut intervals = vec![(mid, max)];
    let stop = loop {
        let steepness =
            |&(lo, hi): &(usize, usize)| (candidates[hi].accuracy - candidates[lo].accuracy).abs();
        // Steepest first; ties by the lower end, so the plan is deterministic.
        intervals.sort_by(|a, b| steepness(b).total_cmp(&steepness(a)).then(a.0.cmp(&b.0)));
        let Some(pos) = intervals.iter().position(|&(lo, hi)| hi - lo >= 2) else {
            break Stop::NothingToSplit;
        };
        let (lo, hi) = intervals[pos];
        // The candidate nearest the interval's midpoint in r (ties: the larger, cheaper one).
        let centre = (candidates[lo].r + candidates[hi].r) as f64 / 2.0;
        let mut split = (lo + 1..hi)
            .min_by(|&a, &b| {
                let da = (candidates[a].r as f64 - centre).abs();
                let db = (candidates[b].r as f64 - centre).abs();
                da.total_cmp(&db).then(b.cmp(&a))
            })
            .unwrap_or(lo + 1);
        while seconds + candidates[split].finetune_seconds > budgets.seconds && split + 1 < hi {
            split += 1;
        }
        if seconds + candidates[split].finetune_seconds > budgets.seconds {
            break Stop::TimeBudget;
        }
        if bytes.saturating_add(candidates[split].bytes) > budgets.bytes {
            break Stop::StorageBudget;
        }
        seconds += candidates[split].finetune_seconds;
        bytes = bytes.saturating_add(candidates[split].bytes);
        chosen.push(split);
        intervals.splice(pos..=pos, [(lo, split), (split, hi)]);
    };
    Ok(Plan {
        chosen: chosen.into_iter().map(|i| candidates[i].r).collect(),
        seconds,
        bytes,
        mandatory_over_budget,
        stop,
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use proptest::prelude::*;

    use super::*;

    /// The paper's candidates with a synthetic accuracy surface: flat up to 20, then falling
    /// ever faster; fine-tuning time falls with r (fewer tokens), 100 MB each.
    fn paper_candidates() -> Vec<Candidate> {
        (0..=25)
            .chain([30, 40, 50, 100])
            .map(|r| Candidate {
                r,
                finetune_seconds: 100.0 * (1.0 - r as f64 / 200.0),
                bytes: 100 << 20,
                accuracy: if r <= 20 {
                    0.80
                } else {
                    0.80 - ((r - 20) as f64 / 80.0).powf(0.5) * 0.6
                },
            })
            .collect()
    }

    #[test]
    fn the_steepest_interval_is_split_first_within_the_budgets() {
        let c = paper_candidates();
        let p = plan(
            &c,
            20,
            100,
            Budgets {
                seconds: 600.0,
                bytes: 6 * (100 << 20),
            },
        )
        .unwrap();
        assert_eq!(&p.chosen[..2], &[20, 100]);
        // [20, 100] is split near 60: the nearest candidate is 50; then [20, 50] (the steeper
        // half) near 35: 40 and 30 tie at 5 away, the larger is taken.
        assert_eq!(p.chosen[2], 50);
        assert_eq!(p.chosen[3], 40);
        assert_eq!(p.chosen.len(), 6, "{p:?}");
        assert_eq!(p.stop, Stop::StorageBudget);
        assert!(p.seconds <= 600.0 && p.bytes <= 6 * (100 << 20));
        assert!(!p.mandatory_over_budget);
    }

    #[test]
    fn of_two_splittable_intervals_the_steeper_is_split() {
        // Flat to 60, then a cliff: after 60, [60, 100] is split (at 80), not [20, 60].
        let c: Vec<Candidate> = (0..=10)
            .map(|i| Candidate {
                r: 10 * i,
                finetune_seconds: 10.0,
                bytes: 1,
                accuracy: if i <= 6 {
                    0.8
                } else {
                    0.8 - 0.175 * (i - 6) as f64
                },
            })
            .collect();
        let b = Budgets {
            seconds: 40.0,
            bytes: 10,
        };
        let p = plan(&c, 20, 100, b).unwrap();
        assert_eq!(p.chosen, vec![20, 100, 60, 80]);
        assert_eq!(p.stop, Stop::TimeBudget);
    }

    #[test]
    fn the_midpoint_moves_up_while_it_costs_too_much() {
        let mut c = paper_candidates();
        // Fine-tuning at 50 (the candidate nearest 60) is slow, and no candidate lies between
        // 50 and 100 to move up to.
        for x in &mut c {
            if x.r == 50 {
                x.finetune_seconds = 1000.0;
            }
        }
        let p = plan(
            &c,
            20,
            100,
            Budgets {
                seconds: 100.0 + 50.0 + 80.0,
                bytes: u64::MAX,
            },
        )
        .unwrap();
        // 20 (90 s) + 100 (50 s) = 140 s; 50 costs 1000 s and cannot move up: stop on time.
        assert_eq!(p.chosen, vec![20, 100]);
        assert_eq!(p.stop, Stop::TimeBudget);
    }

    #[test]
    fn bad_inputs_are_refused() {
        let c = paper_candidates();
        let b = Budgets {
            seconds: 1e9,
            bytes: u64::MAX,
        };
        assert!(plan(&c, 20, 20, b).is_err());
        assert!(plan(&c, 20, 99, b).is_err());
        let mut unsorted = c.clone();
        unsorted.swap(0, 1);
        assert!(plan(&unsorted, 20, 100, b).is_err());
        let mut nan = c.clone();
        nan[3].accuracy = f64::NAN;
        assert!(plan(&nan, 20, 100, b).is_err());
        let all = plan(&c, 20, 100, b).unwrap();
        assert_eq!(all.stop, Stop::NothingToSplit);
        assert_eq!(
            all.sorted(),
            (20..=25).chain([30, 40, 50, 100]).collect::<Vec<_>>()
        );
    }

    proptest! {
        #[test]
        fn plans_keep_their_budgets_and_choose_each_candidate_once(
            accs in proptest::collection::vec(0.0f64..1.0, 30),
            times in proptest::collection::vec(1.0f64..100.0, 30),
            sizes in proptest::collection::vec(1u64..100, 30),
            alpha in 0.0f64..2000.0,
            beta in 0u64..1500,
        ) {
            let rs: Vec<usize> = (0..=25).chain([30, 40, 50, 100]).collect();
            let c: Vec<Candidate> = rs.iter().enumerate().map(|(i, &r)| Candidate {
                r, finetune_seconds: times[i], bytes: sizes[i], accuracy: accs[i],
            }).collect();
            let p = plan(&c, 20, 100, Budgets { seconds: alpha, bytes: beta }).unwrap();
            prop_assert_eq!(&p.chosen[..2], &[20, 100]);
            let mut seen = p.chosen.clone();
            seen.sort_unstable();
            seen.dedup();
            prop_assert_eq!(seen.len(), p.chosen.len());
            prop_assert!(p.chosen.iter().all(|&r| (20..=100).contains(&r) && rs.contains(&r)));
            let cost = |r: usize| c.iter().find(|x| x.r == r).unwrap();
            let t: f64 = p.chosen.iter().map(|&r| cost(r).finetune_seconds).sum();
            let s: u64 = p.chosen.iter().map(|&r| cost(r).bytes).sum();
            prop_assert!((t - p.seconds).abs() < 1e-6 && s == p.bytes);
            if p.chosen.len() > 2 {
                prop_assert!(p.seconds <= alpha + 1e-9 && p.bytes <= beta);
            }
            prop_assert_eq!(p.mandatory_over_budget, {
                let m = cost(20).finetune_seconds + cost(100).finetune_seconds;
                m > alpha || cost(20).bytes + cost(100).bytes > beta
            });
        }
    }
}
