//! Invalid arguments to the indexing and sorting primitives.

use collab_core::Backend;
use rand::Rng;

use crate::conformance::harness::{Suite, Want, call};

impl<B: Backend> Suite<'_, B> {
    pub(super) fn indexing_errors(&mut self) -> Option<()> {
        let b = self.b;
        let mut shape = self.shape(1..=3);
        shape.push(self.rng.random_range(2..=7));
        let rank = shape.len();
        let dim = self.below(rank);
        let size = shape[dim];
        let (t, tr) = self.plain(&shape)?;
        let (ti, tir) = self.plain_index(&shape, 50)?;

        // index_select
        let (i2, i2r) = self.plain_index(&[2, 2], size)?;
        let what = format!("index_select of {shape:?} dim {dim} with a 2-D index [2, 2]");
        let g = call(|| b.index_select(&t, dim, &i2));
        let r = self.r.index_select(&tr, dim, &i2r);
        self.reject("index_select", &what, Want::Shape, r, g);
        let (i1, i1r) = self.plain_index(&[3], size)?;
        let what = format!("index_select of {shape:?} dim {rank} (out of range)");
        let g = call(|| b.index_select(&t, rank, &i1));
        let r = self.r.index_select(&tr, rank, &i1r);
        self.reject("index_select", &what, Want::Shape, r, g);
        let over = call(|| b.index_from_vec(vec![0, size as u32], &[2]));
        let over = self.got("index_from_vec", "building an index", over)?;
        let overr = self.r.index_from_vec(vec![0, size as u32], &[2]).ok()?;
        let what = format!("index_select of {shape:?} dim {dim} at index {size} (out of range)");
        let g = call(|| b.index_select(&t, dim, &over));
        let r = self.r.index_select(&tr, dim, &overr);
        self.reject("index_select", &what, Want::Any, r, g);

        // gather / index_gather / scatter_add
        let ishape = self.gather_index_shape(&shape, dim, true);
        let (idx, idxr) = self.plain_index(&ishape, size)?;
        let mut lower = ishape.clone();
        lower.pop();
        let (idx_low, idx_lowr) = self.plain_index(&lower, 1)?;
        let other = (dim + 1) % rank;
        let mut larger = ishape.clone();
        larger[other] = shape[other] + 1;
        let (idx_big, idx_bigr) = self.plain_index(&larger, size)?;
        let mut bad_data = vec![0u32; ishape.iter().product()];
        let last = bad_data.len() - 1;
        bad_data[last] = size as u32 + self.below(3) as u32;
        let g = call(|| b.index_from_vec(bad_data.clone(), &ishape));
        let idx_oob = self.got("index_from_vec", "building an index", g)?;
        let idx_oobr = self.r.index_from_vec(bad_data, &ishape).ok()?;
        let low_shape = self.r.index_dims(&idx_lowr);
        let cases = [
            (
                &idx,
                &idxr,
                rank,
                Want::Shape,
                format!("dim {rank} (out of range) with index {ishape:?}"),
            ),
            (
                &idx_low,
                &idx_lowr,
                dim,
                Want::Shape,
                format!("dim {dim} with an index of another rank {low_shape:?}"),
            ),
            (
                &idx_big,
                &idx_bigr,
                dim,
                Want::Shape,
                format!("dim {dim} with index {larger:?} larger in dim {other}"),
            ),
            (
                &idx_oob,
                &idx_oobr,
                dim,
                Want::Any,
                format!("dim {dim} with index {ishape:?} holding a value >= {size}"),
            ),
        ];
        for (i, ir, d, want, why) in cases {
            let what = format!("gather of {shape:?} {why}");
            let g = call(|| b.gather(&t, d, i));
            let r = self.r.gather(&tr, d, ir);
            self.reject("gather", &what, want, r, g);
            let what = format!("index_gather of {shape:?} {why}");
            let g = call(|| b.index_gather(&ti, d, i));
            let r = self.r.index_gather(&tir, d, ir);
            self.reject("index_gather", &what, want, r, g);
            let si = self.r.index_dims(ir);
            let (src, srcr) = self.plain(&si)?;
            let what = format!("scatter_add into {shape:?} {why}");
            let g = call(|| b.scatter_add(&t, d, i, &src));
            let r = self.r.scatter_add(&tr, d, ir, &srcr);
            self.reject("scatter_add", &what, want, r, g);
        }
        let mut src_shape = ishape.clone();
        src_shape[dim] += 1;
        let (src, srcr) = self.plain(&src_shape)?;
        let what = format!(
            "scatter_add into {shape:?} dim {dim} with index {ishape:?} and src {src_shape:?}"
        );
        let g = call(|| b.scatter_add(&t, dim, &idx, &src));
        let r = self.r.scatter_add(&tr, dim, &idxr, &srcr);
        self.reject("scatter_add", &what, Want::Shape, r, g);

        // argsort / argmax of a scalar
        let (s, sr) = self.plain(&[])?;
        let g = call(|| b.argsort_last(&s, false));
        let r = self.r.argsort_last(&sr, false);
        self.reject(
            "argsort_last",
            "argsort_last of a scalar (shape [])",
            Want::Shape,
            r,
            g,
        );
        let g = call(|| b.argmax_last(&s));
        let r = self.r.argmax_last(&sr);
        self.reject(
            "argmax_last",
            "argmax_last of a scalar (shape [])",
            Want::Shape,
            r,
            g,
        );
        Some(())
    }
}
