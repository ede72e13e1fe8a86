//! The suite's entry points: families, rounds, seeds and the failure report.

use std::collections::BTreeMap;

use collab_core::Backend;

use super::harness::Suite;
use super::tolerance::Tolerance;

pub use collab_core::seed::{ROUNDS_ENV, SEED_ENV, seed_from_env_or_time};

/// Rounds of fresh random cases per family in [`backend_conformance!`](crate::backend_conformance).
pub const DEFAULT_ROUNDS: usize = 20;
/// Failures shown per failing primitive (each from a different round).
const EXAMPLES: usize = 3;

/// A family of primitives checked together (one `#[test]` each in
/// [`backend_conformance!`](crate::backend_conformance)).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Family {
    /// Creation and host transfer.
    Creation,
    /// Reshape, permute, narrow, cat.
    Layout,
    /// Broadcasting arithmetic and unary functions.
    Elementwise,
    /// Keepdim reductions.
    Reductions,
    /// Matrix products and linear layers.
    Matmul,
    /// Softmax, normalisations, attention.
    Nn,
    /// Selection, gather/scatter, sorting.
    Indexing,
    /// Invalid arguments give errors, not panics.
    Errors,
}

impl Family {
    /// Every family, in the order `check_all` runs them.
    pub const ALL: [Self; 8] = [
        Self::Creation,
        Self::Layout,
        Self::Elementwise,
        Self::Reductions,
        Self::Matmul,
        Self::Nn,
        Self::Indexing,
        Self::Errors,
    ];

    /// The family's name, as in the test names.
    pub fn name(self) -> &'static str {
        match self {
            Self::Creation => "creation",
            Self::Layout => "layout",
            Self::Elementwise => "elementwise",
            Self::Reductions => "reductions",
            Self::Matmul => "matmul",
            Self::Nn => "nn",
            Self::Indexing => "indexing",
            Self::Errors => "errors",
        }
    }
}

/// What a passing run of the suite covered.
#[derive(Clone, Debug)]
pub struct Report {
    /// The backend's name.
    pub backend: String,
    /// The seed every round's inputs were derived from.
    pub seed: u64,
    /// Rounds per family.
    pub rounds: usize,
    /// The families run.
    pub families: Vec<Family>,
    /// Comparisons made (values, indices, shapes or expected errors).
    pub checks: usize,
}

/// Checks creation and host transfer for one round of inputs drawn from `seed`; returns the
/// number of comparisons made, or a description of every failure.
pub fn check_creation<B: Backend>(backend: &B, tol: Tolerance, seed: u64) -> Result<usize, String> {
    check_family(backend, tol, Family::Creation, seed)
}

/// Checks the layout primitives for one round (see [`check_creation`]).
pub fn check_layout<B: Backend>(backend: &B, tol: Tolerance, seed: u64) -> Result<usize, String> {
    check_family(backend, tol, Family::Layout, seed)
}

/// Checks the element-wise primitives for one round (see [`check_creation`]).
pub fn check_elementwise<B: Backend>(
    backend: &B,
    tol: Tolerance,
    seed: u64,
) -> Result<usize, String> {
    check_family(backend, tol, Family::Elementwise, seed)
}

/// Checks the reductions for one round (see [`check_creation`]).
pub fn check_reductions<B: Backend>(
    backend: &B,
    tol: Tolerance,
    seed: u64,
) -> Result<usize, String> {
    check_family(backend, tol, Family::Reductions, seed)
}

/// Checks `matmul` and `linear` for one round (see [`check_creation`]).
pub fn check_matmul<B: Backend>(backend: &B, tol: Tolerance, seed: u64) -> Result<usize, String> {
    check_family(backend, tol, Family::Matmul, seed)
}

/// Checks softmax, the normalisations and attention for one round (see [`check_creation`]).
pub fn check_nn<B: Backend>(backend: &B, tol: Tolerance, seed: u64) -> Result<usize, String> {
    check_family(backend, tol, Family::Nn, seed)
}

/// Checks the indexing and sorting primitives for one round (see [`check_creation`]).
pub fn check_indexing<B: Backend>(backend: &B, tol: Tolerance, seed: u64) -> Result<usize, String> {
    check_family(backend, tol, Family::Indexing, seed)
}

/// Checks that invalid arguments give errors for one round (see [`check_creation`]).
pub fn check_errors<B: Backend>(backend: &B, tol: Tolerance, seed: u64) -> Result<usize, String> {
    check_family(backend, tol, Family::Errors, seed)
}

/// Runs one round of `family` on inputs drawn from `seed`; returns the number of comparisons
/// made, or one line per failure (`primitive: details`).
pub fn check_family<B: Backend>(
    backend: &B,
    tol: Tolerance,
    family: Family,
    seed: u64,
) -> Result<usize, String> {
    let mut suite = Suite::new(backend, tol, tol, seed);
    suite.run(family);
    if suite.failures.is_empty() {
        Ok(suite.checks)
    } else {
        let lines: Vec<String> = suite
            .failures
            .iter()
            .map(|(op, msg)| format!("{op}: {msg}"))
            .collect();
        Err(lines.join("\n"))
    }
}

/// Runs `rounds` rounds of `family`, each on fresh inputs derived from `seed`, and reports
/// every primitive that failed: in how many rounds, and in full its failures in the first
/// few of them. Results through weights built with `linear_weight` are held to `tol` too
/// (see [`check_rounds_with`]).
pub fn check_rounds<B: Backend>(
    backend: &B,
    tol: Tolerance,
    family: Family,
    seed: u64,
    rounds: usize,
) -> Result<usize, String> {
    check_rounds_with(backend, tol, tol, family, seed, rounds)
}

/// [`check_rounds`] with a separate tolerance `weight_tol` for the results that go through a
/// weight built with [`Backend::linear_weight`] (which a backend may quantise): the packed
/// `linear`, the weight read back with `to_vec`, and the weight used in `matmul`.
pub fn check_rounds_with<B: Backend>(
    backend: &B,
    tol: Tolerance,
    weight_tol: Tolerance,
    family: Family,
    seed: u64,
    rounds: usize,
) -> Result<usize, String> {
    let mut checks = 0;
    // primitive -> (rounds failed, up to EXAMPLES (round, failures) from different rounds)
    type Failed = BTreeMap<&'static str, (usize, Vec<(usize, String)>)>;
    let mut failed = Failed::new();
    for round in 0..rounds {
        let mut suite = Suite::new(backend, tol, weight_tol, round_seed(seed, family, round));
        suite.run(family);
        checks += suite.checks;
        // Every failure of a primitive in this round, as one example.
        let mut this_round: BTreeMap<&'static str, Vec<String>> = BTreeMap::new();
        for (op, msg) in suite.failures {
            this_round.entry(op).or_default().push(msg);
        }
        for (op, msgs) in this_round {
            let entry = failed.entry(op).or_default();
            entry.0 += 1;
            if entry.1.len() < EXAMPLES {
                entry.1.push((round, msgs.join("\n    and: ")));
            }
        }
    }
    if failed.is_empty() {
        return Ok(checks);
    }
    let mut out = format!(
        "backend `{}` fails the conformance family `{}` in {} primitive(s) (seed {seed}, {rounds} \
         rounds; replay with {SEED_ENV}={seed}):",
        backend.name(),
        family.name(),
        failed.len()
    );
    for (op, (count, examples)) in failed {
        out.push_str(&format!("\n- `{op}` failed in {count} of {rounds} rounds:"));
        for (round, msg) in examples {
            out.push_str(&format!("\n  - round {round}: {msg}"));
        }
    }
    Err(out)
}

/// Runs every family for `rounds` rounds from `seed`; a failure lists every failing primitive
/// of every family.
pub fn check_all<B: Backend>(
    backend: &B,
    tol: Tolerance,
    seed: u64,
    rounds: usize,
) -> Result<Report, String> {
    let mut checks = 0;
    let mut errors = Vec::new();
    for family in Family::ALL {
        match check_rounds(backend, tol, family, seed, rounds) {
            Ok(n) => checks += n,
            Err(e) => errors.push(e),
        }
    }
    if errors.is_empty() {
        Ok(Report {
            backend: backend.name(),
            seed,
            rounds,
            families: Family::ALL.to_vec(),
            checks,
        })
    } else {
        Err(errors.join("\n"))
    }
}

/// The number of rounds from [`ROUNDS_ENV`] if set, else [`DEFAULT_ROUNDS`].
///
/// # Errors
/// When the variable is set but is not a count.
pub fn rounds_from_env() -> Result<usize, String> {
    collab_core::seed::rounds_from_env(DEFAULT_ROUNDS)
}

/// The body of each test generated by [`backend_conformance!`](crate::backend_conformance):
/// picks and prints the seed, runs the rounds, and panics with the failure report.
pub fn run_test<B: Backend>(backend: &B, tol: Tolerance, family: Family) {
    run_test_with(backend, tol, tol, family);
}

/// [`run_test`] with a separate tolerance for results through `linear_weight` weights (see
/// [`check_rounds_with`]); the body of the 4-argument form of
/// [`backend_conformance!`](crate::backend_conformance).
pub fn run_test_with<B: Backend>(
    backend: &B,
    tol: Tolerance,
    weight_tol: Tolerance,
    family: Family,
) {
    let (seed, rounds) = match (seed_from_env_or_time(), rounds_from_env()) {
        (Ok(s), Ok(r)) => (s, r),
        (Err(e), _) | (_, Err(e)) => panic!("{e}"),
    };
    println!(
        "conformance `{}` / {}: seed {seed}, {rounds} rounds (replay with {SEED_ENV}={seed})",
        backend.name(),
        family.name()
    );
    match check_rounds_with(backend, tol, weight_tol, family, seed, rounds) {
        Ok(checks) => println!(
            "conformance `{}` / {}: {checks} checks passed",
            backend.name(),
            family.name()
        ),
        Err(report) => panic!("{report}"),
    }
}

fn round_seed(seed: u64, family: Family, round: usize) -> u64 {
    collab_core::seed::round_seed(seed, family as u64, round)
}
