//! The conformance suite every [`Backend`] must pass.
//!
//! Each check draws fresh random inputs and random shapes (ranks 1 to 4, sizes 1 to 7, batch
//! dimensions for matmul), runs one primitive on the backend under test and on the f64
//! [`ReferenceBackend`], and compares shapes and values. Inputs reach the backend under test
//! along random *routes*: built directly with [`Backend::from_vec`], or as a permuted or a
//! narrowed view of a larger tensor (padded with NaN), so that stride handling is exercised
//! everywhere. The families:
//!
//! | family        | primitives |
//! |---------------|------------|
//! | `creation`    | `from_vec`, `to_vec`, `zeros`, scalars and empty tensors, index round trips |
//! | `layout`      | `reshape`, `permute`, `narrow`, `cat`, `index_narrow` |
//! | `elementwise` | `add`, `sub`, `mul`, `div` (broadcasting), `affine`, `exp`, `log`, `sqrt`, `tanh`, `gelu_erf`, `silu` |
//! | `reductions`  | `sum_keepdim`, `mean_keepdim`, `max_keepdim` |
//! | `matmul`      | batched and shared-right-operand `matmul`, `linear`, `linear` with a `linear_weight` weight |
//! | `nn`          | `softmax_last` (no bias, broadcast bias, `-inf` masks, large logits), `layer_norm`, `rms_norm`, `attention` |
//! | `indexing`    | `index_select`, `gather`, `index_gather`, `scatter_add` (repeated indices), `argsort_last`, `argmax_last` |
//! | `errors`      | every primitive that takes shapes rejects invalid ones with `Err`, never a panic |
//!
//! # Tolerances
//!
//! A value passes when `|got - expected| <= abs * scale + rel * |expected|` (see
//! [`Tolerance`]), with `expected` the reference's f64 result (not rounded to f32). `scale`
//! is 1 for element-wise primitives and `sqrt(k)` for those that accumulate over `k` terms:
//! `k` is the reduced length for `sum_keepdim`/`mean_keepdim`, the inner dimension for
//! `matmul`/`linear`, the normalised length for `layer_norm`/`rms_norm`, and `d + m` (head
//! size plus keys) for `attention`. Layout and indexing primitives move values without
//! arithmetic and are compared exactly, as are all indices (`argsort_last` and `argmax_last`
//! run on inputs without near-ties: distinct values from a shuffled grid, or exact ties whose
//! stable order is unique). NaN matches NaN and an infinity matches the same infinity.
//!
//! # Packed weights
//!
//! [`Backend::linear_weight`] may pack a weight (quantise it), so the `matmul` family also
//! builds a weight `[n, k]` with it (`k` a multiple of 32 from 32 to 256, `n` from 1 to 48,
//! values in `[-1, 1)`, like every input) and checks three results against the reference
//! computed from the unrounded values, at the *weight tolerance*: `linear` with it (with and
//! without bias; scale `sqrt(k)`), the weight read back with `to_vec` (scale 1), and `matmul`
//! of an input with its transpose (scale `sqrt(k)`), a packed weight used outside `linear`.
//! The weight tolerance is the macro's fourth argument, by default the value tolerance; the
//! tolerances of the quantised backends are [`Tolerance::Q8_WEIGHTS`] and
//! [`Tolerance::Q4_WEIGHTS`].
//!
//! [`Backend::linear_weight`]: collab_core::Backend::linear_weight
//!
//! # Errors
//!
//! The `errors` family checks that invalid shapes give `Err`, not a panic and not a result;
//! where the problem is a shape (a dimension out of range, shapes that do not fit) the error
//! must be [`Error::Shape`] as the trait's contract asks. An index
//! value out of range may be any error.
//!
//! # Using it
//!
//! One line holds a backend to the whole suite, one `#[test]` per family:
//!
//! ```
//! collab_backends::backend_conformance!(reference, collab_backends::reference::ReferenceBackend::new());
//! # fn main() {}
//! ```
//!
//! Each test runs [`DEFAULT_ROUNDS`] rounds (override with `COLLAB_CONFORMANCE_ROUNDS`) from a
//! seed taken from the clock and printed; set `COLLAB_CONFORMANCE_SEED` to that seed to replay
//! a failure. A failure lists every primitive that failed, with the shapes, how the inputs
//! were laid out and the worst element (index, got, expected).
//!
//! [`Backend`]: collab_core::Backend
//! [`Backend::from_vec`]: collab_core::Backend::from_vec
//! [`Error::Shape`]: collab_core::Error::Shape
//! [`ReferenceBackend`]: crate::reference::ReferenceBackend

mod creation;
mod elementwise;
mod errors;
mod harness;
mod host;
mod indexing;
mod inputs;
mod layout;
mod matmul;
mod nn;
mod reductions;
mod runner;
mod tolerance;

#[cfg(test)]
mod tests;

pub use runner::{
    DEFAULT_ROUNDS, Family, ROUNDS_ENV, Report, SEED_ENV, check_all, check_creation,
    check_elementwise, check_errors, check_family, check_indexing, check_layout, check_matmul,
    check_nn, check_reductions, check_rounds, check_rounds_with, rounds_from_env, run_test,
    run_test_with, seed_from_env_or_time,
};
pub use tolerance::Tolerance;

/// Holds a backend to the conformance suite: `backend_conformance!(name, constructor)` (or
/// `backend_conformance!(name, constructor, tolerance)`, or
/// `backend_conformance!(name, constructor, tolerance, weight_tolerance)`) expands to a module
/// `name` with one `#[test]` per [`Family`], each running [`DEFAULT_ROUNDS`] rounds of fresh
/// random cases against the f64 reference. The constructor is evaluated once per test.
/// `weight_tolerance` (default: `tolerance`) applies to results that go through a weight
/// built with `linear_weight`, which a backend may quantise (see "Packed weights" in the
/// [module documentation](crate::conformance)).
///
/// ```
/// use collab_backends::backend_conformance;
/// use collab_backends::conformance::Tolerance;
/// use collab_backends::reference::ReferenceBackend;
///
/// backend_conformance!(reference_strict, ReferenceBackend::new(), Tolerance { abs: 1e-5, rel: 1e-5 });
/// # fn main() {}
/// ```
#[macro_export]
macro_rules! backend_conformance {
    ($modname:ident, $ctor:expr $(,)?) => {
        $crate::backend_conformance!($modname, $ctor, $crate::conformance::Tolerance::F32);
    };
    ($modname:ident, $ctor:expr, $tol:expr $(,)?) => {
        $crate::backend_conformance!($modname, $ctor, $tol, $tol);
    };
    ($modname:ident, $ctor:expr, $tol:expr, $weight_tol:expr $(,)?) => {
        mod $modname {
            #[allow(unused_imports)]
            use super::*;

            fn run(family: $crate::conformance::Family) {
                let backend = $ctor;
                $crate::conformance::run_test_with(&backend, $tol, $weight_tol, family);
            }

            #[test]
            fn creation() {
                run($crate::conformance::Family::Creation);
            }

            #[test]
            fn layout() {
                run($crate::conformance::Family::Layout);
            }

            #[test]
            fn elementwise() {
                run($crate::conformance::Family::Elementwise);
            }

            #[test]
            fn reductions() {
                run($crate::conformance::Family::Reductions);
            }

            #[test]
            fn matmul() {
                run($crate::conformance::Family::Matmul);
            }

            #[test]
            fn nn() {
                run($crate::conformance::Family::Nn);
            }

            #[test]
            fn indexing() {
                run($crate::conformance::Family::Indexing);
            }

            #[test]
            fn errors() {
                run($crate::conformance::Family::Errors);
            }
        }
    };
}
