//! The conformance suite every [`SplitStrategy`] must pass, ours and a user's alike.
//!
//! Each round draws conditions from the seed: ordinary ones (bandwidth 10 kB/s to 10 GB/s,
//! RTT 0 to 200 ms, queue 0 to 1 s, deadline 10 ms to 2 s, loss limit 0 to 0.1) and hostile
//! ones (zero, negative, NaN and infinite values in any field). The checks, per condition:
//!
//! - `choose` never panics, and answers the same for the same conditions (asked twice);
//! - an answer names a split point `0..=L`, [`CodecId::raw`] exactly at split 0,
//!   [`CodecId::none`] exactly at `L`, and in between a codec the spec's registry builds at
//!   that split (so a server with that registry decodes it);
//! - an answer's loss is within a usable (finite, non-negative) loss limit when the spec says
//!   the strategy respects it.
//!
//! # Using it
//!
//! ```
//! use std::sync::Arc;
//! use collab_policies::split::conformance::SplitSpec;
//! use collab_policies::split::{Fallback, FastestWithinLoss, Hysteresis};
//! # fn selector() -> Arc<collab_policies::split::SplitSelector> {
//! #     use collab_policies::split::*;
//! #     use collab_core::cost::{CostModel, Workload};
//! #     #[derive(Debug)] struct Flat;
//! #     impl CostModel for Flat {
//! #         fn name(&self) -> String { "flat".into() }
//! #         fn seconds(&self, _: &Workload) -> collab_core::Result<f64> { Ok(0.001) }
//! #     }
//! #     let table = AccuracyTable { model: "m".into(), metric: "top1".into(), baseline: 1.0,
//! #         tokens: 17, features: 32, layers: 3, entries: vec![] };
//! #     let config = SelectorConfig { layers: 3, tokens: 17, features: 32,
//! #         raw_input_bytes: 3072, response_bytes: 64, device_codec_scale: 1.0,
//! #         allow_device_only: true };
//! #     Arc::new(SplitSelector::new(Arc::new(Flat), Arc::new(Flat), table, config).unwrap())
//! # }
//! collab_policies::split_strategy_conformance!(
//!     selector_with_fallback,
//!     || Hysteresis::new(Fallback::new(selector(), FastestWithinLoss::new(selector()))),
//!     SplitSpec::new(3)
//! );
//! # fn main() {}
//! ```
//!
//! Each test runs [`DEFAULT_ROUNDS`] rounds (override with `COLLAB_CONFORMANCE_ROUNDS`) from a
//! seed taken from the clock and printed; `COLLAB_CONFORMANCE_SEED` replays a failure.

use std::panic::{AssertUnwindSafe, catch_unwind};

use collab_core::seed::run_rounds;
use collab_core::split::{CodecId, Conditions, SplitChoice, SplitStrategy};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::codec::{CodecContext, CodecRegistry};

/// Rounds per test in [`split_strategy_conformance!`](crate::split_strategy_conformance).
pub const DEFAULT_ROUNDS: usize = 8;

/// Conditions drawn per round.
pub const PER_ROUND: usize = 64;

/// What the suite may expect of a strategy.
#[derive(Clone, Debug)]
pub struct SplitSpec {
    /// The model's blocks `L`.
    pub layers: usize,
    /// The codecs the deployment's server decodes (default: [`CodecRegistry::builtin`]); a
    /// choice between 0 and `L` must name one that builds at its split without bases.
    pub registry: CodecRegistry,
    /// Whether an answer's loss must be within the conditions' loss limit (default true).
    pub respects_loss_limit: bool,
}

impl SplitSpec {
    /// A spec for a model of `layers` blocks, with the built-in codecs.
    pub fn new(layers: usize) -> Self {
        Self {
            layers,
            registry: CodecRegistry::builtin(),
            respects_loss_limit: true,
        }
    }
}

/// Holds a split strategy to the conformance suite: `split_strategy_conformance!(name, make,
/// spec)` expands to a module `name` with a `#[test]` for ordinary and one for hostile
/// conditions; `make` is a closure `Fn() -> S` (see the [module docs](self)).
#[macro_export]
macro_rules! split_strategy_conformance {
    ($modname:ident, $make:expr, $spec:expr $(,)?) => {
        mod $modname {
            #[allow(unused_imports)]
            use super::*;

            #[test]
            fn ordinary() {
                $crate::split::conformance::run_test($make, &$spec, false);
            }

            #[test]
            fn hostile() {
                $crate::split::conformance::run_test($make, &$spec, true);
            }
        }
    };
}

/// The body of each test of [`split_strategy_conformance!`](crate::split_strategy_conformance):
/// picks and prints the seed, runs the rounds, and panics with the failure report.
pub fn run_test<S: SplitStrategy>(make: impl Fn() -> S, spec: &SplitSpec, hostile: bool) {
    let strategy = make();
    let kind = if hostile { "hostile" } else { "ordinary" };
    let what = format!("split strategy conformance / {kind} `{}`", strategy.name());
    run_rounds(&what, u64::from(hostile), DEFAULT_ROUNDS, |seed| {
        check_strategy(&strategy, spec, hostile, seed)
    });
}

/// Runs the checks on [`PER_ROUND`] conditions drawn from `seed`.
///
/// # Errors
/// What failed, with the conditions.
pub fn check_strategy<S: SplitStrategy + ?Sized>(
    strategy: &S,
    spec: &SplitSpec,
    hostile: bool,
    seed: u64,
) -> Result<(), String> {
    if strategy.name().is_empty() {
        return Err("name() is empty".into());
    }
    let mut rng = StdRng::seed_from_u64(seed);
    for _ in 0..PER_ROUND {
        let c = if hostile {
            hostile_conditions(&mut rng)
        } else {
            ordinary(&mut rng)
        };
        let ask = || {
            catch_unwind(AssertUnwindSafe(|| strategy.choose(&c)))
                .map_err(|_| format!("choose panicked on {c:?}"))
        };
        let (first, second) = (ask()?, ask()?);
        match (&first, &second) {
            (Ok(a), Ok(b)) if a != b => {
                return Err(format!("two answers for {c:?}: {a:?} and {b:?}"));
            }
            (Ok(_), Err(e)) | (Err(e), Ok(_)) => {
                return Err(format!("an answer and an error ({e}) for {c:?}"));
            }
            _ => {}
        }
        if let Ok(choice) = first {
            check_choice(&choice, spec, &c).map_err(|e| format!("{e} for {c:?}: {choice:?}"))?;
        }
    }
    Ok(())
}

fn check_choice(choice: &SplitChoice, spec: &SplitSpec, c: &Conditions) -> Result<(), String> {
    let (k, l) = (choice.split, spec.layers);
    if k > l {
        return Err(format!("split {k} is past the model's {l} blocks"));
    }
    let raw = choice.codec == CodecId::raw();
    let none = choice.codec == CodecId::none();
    if (k == 0) != raw {
        return Err("the raw input is sent exactly at split 0".into());
    }
    if (k == l) != none {
        return Err("nothing is sent exactly at split L".into());
    }
    if k > 0 && k < l {
        let context = CodecContext {
            split: k,
            bases: None,
        };
        spec.registry
            .build(&choice.codec, &context)
            .map_err(|e| format!("the registry cannot build the codec: {e}"))?;
    }
    // A negative or non-finite limit is hostile input: a strategy may refuse it or answer.
    let usable_limit = c.max_loss.is_finite() && c.max_loss >= 0.0;
    if spec.respects_loss_limit && usable_limit && choice.loss > c.max_loss {
        return Err(format!("loss {} over the limit", choice.loss));
    }
    Ok(())
}

fn ordinary(rng: &mut StdRng) -> Conditions {
    let log = |rng: &mut StdRng, lo: f64, hi: f64| 10f64.powf(rng.random_range(lo..hi));
    Conditions {
        bandwidth: log(rng, 4.0, 10.0),
        rtt: rng.random_range(0.0..0.2),
        server_queue: rng.random_range(0.0..1.0),
        deadline: log(rng, -2.0, 0.3),
        max_loss: rng.random_range(0.0..0.1),
    }
}

fn hostile_conditions(rng: &mut StdRng) -> Conditions {
    const ODD: [f64; 7] = [
        0.0,
        -1.0,
        f64::NAN,
        f64::INFINITY,
        f64::NEG_INFINITY,
        1e300,
        -0.0,
    ];
    let mut c = ordinary(rng);
    for field in [
        &mut c.bandwidth,
        &mut c.rtt,
        &mut c.server_queue,
        &mut c.deadline,
        &mut c.max_loss,
    ] {
        if rng.random_bool(0.4) {
            *field = ODD[rng.random_range(0..ODD.len())];
        }
    }
    c
}
