//! The `indexing` family: `index_select`, `gather`, `index_gather`, `scatter_add`,
//! `argsort_last`, `argmax_last`.

use collab_core::Backend;
use rand::Rng;
use rand::seq::SliceRandom;

use super::harness::{Got, Suite, call, fmt_list};
use super::host::{Host, strides};
use super::tolerance::Tolerance;

impl<B: Backend> Suite<'_, B> {
    pub(super) fn indexing(&mut self) {
        self.index_select_case();
        self.gather_case(false);
        self.gather_case(true);
        self.scatter_add_case(false);
        self.argsort_case();
        self.argsort_ties_case();
        self.argmax_case();
    }

    fn index_select_case(&mut self) -> Option<()> {
        let b = self.b;
        let shape = self.shape(1..=4);
        let h = self.host(&shape, -5.0, 5.0);
        let (x, xr, dx) = self.input("t", &h)?;
        let dim = self.below(shape.len());
        let len = self.size();
        let hi = self.indices(&[len], shape[dim]);
        let (i, ir, di) = self.index_input("idx", &hi)?;
        let what = format!("index_select dim {dim} of {dx} at {di} = {:?}", hi.data);
        let g = call(|| b.index_select(&x, dim, &i));
        let want = self.r.index_select(&xr, dim, &ir);
        self.check("index_select", &what, g, want, Tolerance::EXACT, 1.0)
    }

    /// The shape of a gather/scatter index for `shape` along `dim`: any length along `dim`,
    /// and the input's sizes elsewhere or, if `smaller`, sizes up to them.
    pub(super) fn gather_index_shape(
        &mut self,
        shape: &[usize],
        dim: usize,
        smaller: bool,
    ) -> Vec<usize> {
        (0..shape.len())
            .map(|d| {
                if d == dim {
                    self.size()
                } else if smaller {
                    self.rng.random_range(1..=shape[d])
                } else {
                    shape[d]
                }
            })
            .collect()
    }

    fn gather_case(&mut self, on_index: bool) -> Option<()> {
        let b = self.b;
        let shape = self.shape(1..=4);
        let dim = self.below(shape.len());
        let smaller = self.chance(0.5);
        let ishape = self.gather_index_shape(&shape, dim, smaller);
        let hi = self.indices(&ishape, shape[dim]);
        let (i, ir, di) = self.index_input("idx", &hi)?;
        let note = if smaller_than(&ishape, &shape, dim) {
            " (idx smaller than t outside dim)"
        } else {
            ""
        };
        if on_index {
            let ht = self.indices(&shape, 100_000);
            let (t, tr, dt) = self.index_input("t", &ht)?;
            let what = format!("index_gather dim {dim} of {dt} at {di}{note}");
            let g = call(|| b.index_gather(&t, dim, &i));
            let want = self.r.index_gather(&tr, dim, &ir);
            self.check_index("index_gather", &what, g, want)
        } else {
            let ht = self.host(&shape, -5.0, 5.0);
            let (t, tr, dt) = self.input("t", &ht)?;
            let what = format!("gather dim {dim} of {dt} at {di}{note}");
            let g = call(|| b.gather(&t, dim, &i));
            let want = self.r.gather(&tr, dim, &ir);
            self.check("gather", &what, g, want, Tolerance::EXACT, 1.0)
        }
    }

    fn scatter_add_case(&mut self, smaller: bool) -> Option<()> {
        let b = self.b;
        let shape = self.shape(1..=4);
        let dim = self.below(shape.len());
        let ishape = self.gather_index_shape(&shape, dim, smaller);
        // Few distinct targets, so that indices repeat.
        let bound = if self.chance(0.5) {
            shape[dim].div_ceil(2)
        } else {
            shape[dim]
        };
        let mut hi = self.indices(&ishape, bound);
        if ishape[dim] >= 2 {
            // At least one repeated target along `dim`.
            hi.data[strides(&ishape)[dim]] = hi.data[0];
        }
        let ht = self.host(&shape, -1.0, 1.0);
        let hs = self.host(&ishape, -1.0, 1.0);
        let (t, tr, dt) = self.input("t", &ht)?;
        let (i, ir, di) = self.index_input("idx", &hi)?;
        let (s, sr, ds) = self.input("src", &hs)?;
        let note = if smaller_than(&ishape, &shape, dim) {
            " (idx, src smaller than t outside dim)"
        } else {
            ""
        };
        let what = format!(
            "scatter_add dim {dim} into {dt} at {di} of {ds}{note}; idx {}",
            fmt_list(&hi.data)
        );
        let g = call(|| b.scatter_add(&t, dim, &i, &s));
        let want = self.r.scatter_add(&tr, dim, &ir, &sr);
        let tol = self.tol;
        self.check("scatter_add", &what, g, want, tol, 1.0)?;
        // The input is not modified.
        let what = format!("{dt} after being the target of scatter_add (results must not alias)");
        self.check(
            "scatter_add",
            &what,
            Got::Ok(t),
            Ok(tr),
            Tolerance::EXACT,
            1.0,
        )
    }

    /// Rows of distinct values: each row a shuffled grid `j / 4 - n / 8`.
    fn distinct_rows(&mut self, shape: &[usize]) -> Host<f32> {
        let n = shape.last().copied().unwrap_or(1);
        let rows = shape.iter().product::<usize>() / n.max(1);
        let mut data = Vec::with_capacity(rows * n);
        for _ in 0..rows {
            let mut grid: Vec<f32> = (0..n).map(|j| j as f32 / 4.0 - n as f32 / 8.0).collect();
            grid.shuffle(&mut self.rng);
            data.extend(grid);
        }
        Host {
            data,
            shape: shape.to_vec(),
        }
    }

    /// Rows from a grid of four values, so that exact ties abound.
    fn tied_rows(&mut self, shape: &[usize]) -> Host<f32> {
        let grid = [-1.0f32, 0.0, 0.5, 2.0];
        let n: usize = shape.iter().product();
        let data = (0..n)
            .map(|_| grid[self.rng.random_range(0..grid.len())])
            .collect();
        Host {
            data,
            shape: shape.to_vec(),
        }
    }

    fn argsort_case(&mut self) -> Option<()> {
        let b = self.b;
        let shape = self.shape(1..=4);
        let h = self.distinct_rows(&shape);
        let (x, xr, dx) = self.input("x", &h)?;
        for descending in [false, true] {
            let what = format!("argsort_last (descending {descending}) of {dx}, distinct values");
            let g = call(|| b.argsort_last(&x, descending));
            let want = self.r.argsort_last(&xr, descending);
            self.check_index("argsort_last", &what, g, want);
        }
        Some(())
    }

    fn argsort_ties_case(&mut self) -> Option<()> {
        let b = self.b;
        let shape = self.shape(1..=4);
        let h = self.tied_rows(&shape);
        let (x, xr, dx) = self.input("x", &h)?;
        for descending in [false, true] {
            let what = format!(
                "argsort_last (descending {descending}) of {dx}, values from {{-1, 0, 0.5, 2}} \
                 (ties must keep their order)"
            );
            let g = call(|| b.argsort_last(&x, descending));
            let want = self.r.argsort_last(&xr, descending);
            self.check_index("argsort_last", &what, g, want);
        }
        // All-equal rows: the identity permutation, both ways (checked without the reference).
        let shape = self.shape(1..=3);
        let c = self.rng.random_range(-2.0f32..2.0);
        let n: usize = shape.iter().product();
        let h = Host {
            data: vec![c; n],
            shape: shape.clone(),
        };
        let (x, _, dx) = self.input("x", &h)?;
        let last = shape.last().copied().unwrap_or(1);
        let identity: Vec<u32> = (0..n).map(|f| (f % last) as u32).collect();
        for descending in [false, true] {
            let what = format!("argsort_last (descending {descending}) of {dx}, all values equal");
            let g = call(|| b.argsort_last(&x, descending));
            let Some(got) = self.got("argsort_last", &what, g) else {
                continue;
            };
            self.checks += 1;
            let dims = b.index_dims(&got);
            if dims != shape {
                self.fail(
                    "argsort_last",
                    format!("{what}: result shape {dims:?}, expected {shape:?}"),
                );
                continue;
            }
            let g = call(|| b.index_to_vec(&got));
            if let Some(values) = self.got("index_to_vec", &what, g) {
                self.check_index_values("argsort_last", &what, &shape, &values, &identity);
            }
        }
        Some(())
    }

    fn argmax_case(&mut self) -> Option<()> {
        let b = self.b;
        for ties in [false, true] {
            let shape = self.shape(1..=4);
            let h = if ties {
                self.tied_rows(&shape)
            } else {
                self.distinct_rows(&shape)
            };
            let (x, xr, dx) = self.input("x", &h)?;
            let kind = if ties {
                "values from {-1, 0, 0.5, 2} (the first maximum wins)"
            } else {
                "distinct values"
            };
            let what = format!("argmax_last of {dx}, {kind}");
            let g = call(|| b.argmax_last(&x));
            let want = self.r.argmax_last(&xr);
            self.check_index("argmax_last", &what, g, want);
        }
        Some(())
    }
}

/// Whether `idx` is smaller than `t` in some dimension other than `dim`.
fn smaller_than(idx: &[usize], t: &[usize], dim: usize) -> bool {
    idx.iter()
        .zip(t)
        .enumerate()
        .any(|(d, (i, t))| d != dim && i < t)
}
