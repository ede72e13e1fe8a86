//! The case runner: one round of one family against the reference, calls into the backend
//! under test that catch panics, and the recording and comparison of results.

use std::any::Any;
use std::fmt::Debug;
use std::panic::{AssertUnwindSafe, catch_unwind};

use collab_core::{Backend, Error};
use rand::SeedableRng;
use rand::rngs::StdRng;

use super::host::unravel;
use super::runner::Family;
use super::tolerance::{Tolerance, compare_values};
use crate::reference::{RefIndex, RefTensor, ReferenceBackend};

// ----- calling the backend under test -----

/// What a call into the backend under test gave.
pub(super) enum Got<T> {
    Ok(T),
    Err(Error),
    Panic(String),
}

pub(super) fn call<T>(f: impl FnOnce() -> collab_core::Result<T>) -> Got<T> {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(Ok(v)) => Got::Ok(v),
        Ok(Err(e)) => Got::Err(e),
        Err(payload) => Got::Panic(panic_message(payload.as_ref())),
    }
}

fn panic_message(payload: &(dyn Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "(a panic without a message)".to_string()
    }
}

pub(super) fn fmt_list<T: Debug>(v: &[T]) -> String {
    if v.len() <= 64 {
        format!("{v:?}")
    } else {
        format!("{:?} .. ({} in all)", &v[..64], v.len())
    }
}

/// A shape error is wanted, or any error will do.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum Want {
    Shape,
    Any,
}

// ----- the suite -----

pub(super) struct Suite<'a, B: Backend> {
    pub(super) b: &'a B,
    pub(super) r: ReferenceBackend,
    pub(super) tol: Tolerance,
    /// The tolerance of results that go through a weight built with
    /// [`Backend::linear_weight`] (which a backend may quantise).
    pub(super) weight_tol: Tolerance,
    pub(super) rng: StdRng,
    pub(super) checks: usize,
    pub(super) failures: Vec<(&'static str, String)>,
}

pub(super) type RefResult<T> = collab_core::Result<T>;

impl<'a, B: Backend> Suite<'a, B> {
    pub(super) fn new(b: &'a B, tol: Tolerance, weight_tol: Tolerance, seed: u64) -> Self {
        Self {
            b,
            r: ReferenceBackend::new(),
            tol,
            weight_tol,
            rng: StdRng::seed_from_u64(seed),
            checks: 0,
            failures: Vec::new(),
        }
    }

    pub(super) fn run(&mut self, family: Family) {
        match family {
            Family::Creation => self.creation(),
            Family::Layout => self.layout(),
            Family::Elementwise => self.elementwise(),
            Family::Reductions => self.reductions(),
            Family::Matmul => self.matmul(),
            Family::Nn => self.nn(),
            Family::Indexing => self.indexing(),
            Family::Errors => self.errors(),
        }
    }

    // ----- recording -----

    pub(super) fn fail(&mut self, op: &'static str, msg: String) {
        self.failures.push((op, msg));
    }

    pub(super) fn got<T>(&mut self, op: &'static str, what: &str, g: Got<T>) -> Option<T> {
        match g {
            Got::Ok(v) => Some(v),
            Got::Err(e) => {
                self.fail(op, format!("{what}: returned an error on valid input: {e}"));
                None
            }
            Got::Panic(m) => {
                self.fail(op, format!("{what}: panicked on valid input: {m}"));
                None
            }
        }
    }

    pub(super) fn reference<T>(
        &mut self,
        op: &'static str,
        what: &str,
        r: RefResult<T>,
    ) -> Option<T> {
        match r {
            Ok(v) => Some(v),
            Err(e) => {
                self.fail(
                    op,
                    format!(
                        "{what}: the REFERENCE failed ({e}); a bug in the suite or the reference"
                    ),
                );
                None
            }
        }
    }

    // ----- comparisons -----

    /// Compares a tensor result with the reference's at `tol` and `scale`.
    pub(super) fn check(
        &mut self,
        op: &'static str,
        what: &str,
        got: Got<B::Tensor>,
        want: RefResult<RefTensor>,
        tol: Tolerance,
        scale: f64,
    ) -> Option<()> {
        self.checks += 1;
        let want = self.reference(op, what, want)?;
        let got = self.got(op, what, got)?;
        let b = self.b;
        let shape = b.dims(&got);
        let want_shape = want.array().shape();
        if shape != want_shape {
            self.fail(
                op,
                format!("{what}: result shape {shape:?}, expected {want_shape:?}"),
            );
            return None;
        }
        let g = call(|| b.to_vec(&got));
        let values = self.got("to_vec", &format!("reading the result of {what}"), g)?;
        let expected: Vec<f64> = want.array().iter().copied().collect();
        if values.len() != expected.len() {
            self.fail(
                op,
                format!(
                    "{what}: to_vec gave {} values for shape {shape:?}",
                    values.len()
                ),
            );
            return None;
        }
        match compare_values(&values, &expected, tol, scale) {
            None => Some(()),
            Some(w) => {
                let mismatch = format!(
                    "{what}: {} of {} values out of tolerance; worst at {:?}: got {:e}, \
                     expected {:e}, |diff| {:.3e} > allowed {:.3e} (abs {:e} x scale {:.3} + \
                     rel {:e} x |expected|)",
                    w.bad,
                    values.len(),
                    unravel(w.flat, &shape),
                    values[w.flat],
                    expected[w.flat],
                    w.diff,
                    w.allowed,
                    tol.abs,
                    scale,
                    tol.rel
                );
                self.fail(op, mismatch);
                None
            }
        }
    }

    /// Compares an index result with the reference's, exactly.
    pub(super) fn check_index(
        &mut self,
        op: &'static str,
        what: &str,
        got: Got<B::Index>,
        want: RefResult<RefIndex>,
    ) -> Option<()> {
        self.checks += 1;
        let want = self.reference(op, what, want)?;
        let got = self.got(op, what, got)?;
        let b = self.b;
        let shape = b.index_dims(&got);
        let want_shape = want.array().shape();
        if shape != want_shape {
            self.fail(
                op,
                format!("{what}: result shape {shape:?}, expected {want_shape:?}"),
            );
            return None;
        }
        let g = call(|| b.index_to_vec(&got));
        let values = self.got("index_to_vec", &format!("reading the result of {what}"), g)?;
        let expected: Vec<u32> = want.array().iter().copied().collect();
        self.check_index_values(op, what, &shape, &values, &expected)
    }

    pub(super) fn check_index_values(
        &mut self,
        op: &'static str,
        what: &str,
        shape: &[usize],
        values: &[u32],
        expected: &[u32],
    ) -> Option<()> {
        if values.len() != expected.len() {
            self.fail(
                op,
                format!("{what}: {} indices for shape {shape:?}", values.len()),
            );
            return None;
        }
        let Some(first) = values.iter().zip(expected).position(|(g, e)| g != e) else {
            return Some(());
        };
        let bad = values.iter().zip(expected).filter(|(g, e)| g != e).count();
        let last = shape.last().copied().unwrap_or(1).max(1);
        let row = first - first % last;
        self.fail(
            op,
            format!(
                "{what}: {bad} of {} indices differ; first at {:?}: got {}, expected {}; that \
                 row: got {}, expected {}",
                values.len(),
                unravel(first, shape),
                values[first],
                expected[first],
                fmt_list(&values[row..row + last]),
                fmt_list(&expected[row..row + last]),
            ),
        );
        None
    }

    /// Checks that an invalid call is rejected: by the reference (a self-check of the suite)
    /// and by the backend under test, with [`Error::Shape`] when `want` asks for it.
    pub(super) fn reject<T, R: Debug>(
        &mut self,
        op: &'static str,
        what: &str,
        want: Want,
        r: RefResult<R>,
        g: Got<T>,
    ) {
        self.checks += 1;
        match r {
            Ok(v) => {
                let v = format!("{v:?}");
                let v: String = v.chars().take(200).collect();
                self.fail(
                    op,
                    format!("{what}: the REFERENCE accepted this invalid input ({v}); a bug in the suite"),
                );
                return;
            }
            Err(e) if want == Want::Shape && !matches!(e, Error::Shape { .. }) => {
                self.fail(
                    op,
                    format!(
                        "{what}: the REFERENCE gave a non-shape error ({e}); a bug in the suite"
                    ),
                );
                return;
            }
            Err(_) => {}
        }
        match g {
            Got::Panic(m) => self.fail(
                op,
                format!("{what}: panicked instead of returning an error: {m}"),
            ),
            Got::Ok(_) => self.fail(op, format!("{what}: accepted invalid input (returned Ok)")),
            Got::Err(e) if want == Want::Shape && !matches!(e, Error::Shape { .. }) => self.fail(
                op,
                format!("{what}: returned `{e}`, but the contract asks for Error::Shape here"),
            ),
            Got::Err(_) => {}
        }
    }
}
