//! Matrix products.

use collab_core::{Error, Result};
use ndarray::{Array2, Array3, ArrayView2, Axis};

use super::RefTensor;
use super::shapes::{array_from_vec, backend_err, row_major};

/// The (batched) product `a x b`: `[.., m, k] x [.., k, n]`, or `[.., m, k] x [k, n]` with the
/// right operand shared by every batch.
pub(super) fn matmul(a: &RefTensor, b: &RefTensor) -> Result<RefTensor> {
    let op = "matmul";
    let (sa, sb) = (a.0.shape(), b.0.shape());
    let bad = |why: &str| Error::shape(op, format!("{sa:?} x {sb:?}: {why}"));
    if sa.len() < 2 || sb.len() < 2 {
        return Err(bad("both operands need rank >= 2"));
    }
    let (lead, m, k) = (&sa[..sa.len() - 2], sa[sa.len() - 2], sa[sa.len() - 1]);
    let (kb, n) = (sb[sb.len() - 2], sb[sb.len() - 1]);
    if k != kb {
        return Err(bad("inner dimensions differ"));
    }
    let shared_rhs = sb.len() == 2;
    if !shared_rhs && &sb[..sb.len() - 2] != lead {
        return Err(bad(
            "leading dimensions must be equal (or the right operand 2-D)",
        ));
    }
    let batch: usize = lead.iter().product();
    let mut out_shape = lead.to_vec();
    out_shape.extend([m, n]);
    let to_shape_err = |e: ndarray::ShapeError| backend_err(op, e.to_string());

    let out = if shared_rhs {
        // One product [batch * m, k] x [k, n].
        let a2 = a.0.to_shape((batch * m, k)).map_err(to_shape_err)?;
        let b2 = b.0.to_shape((k, n)).map_err(to_shape_err)?;
        let c: Array2<f64> = a2.dot(&b2);
        // `dot` may return a column-major array: read it in logical order.
        c.iter().copied().collect()
    } else {
        let a3 = a.0.to_shape((batch, m, k)).map_err(to_shape_err)?;
        let b3 = b.0.to_shape((batch, k, n)).map_err(to_shape_err)?;
        let mut c = Array3::<f64>::zeros((batch, m, n));
        for i in 0..batch {
            let ai: ArrayView2<'_, f64> = a3.index_axis(Axis(0), i);
            let bi: ArrayView2<'_, f64> = b3.index_axis(Axis(0), i);
            c.index_axis_mut(Axis(0), i).assign(&ai.dot(&bi));
        }
        row_major(&c.into_dyn())
    };
    Ok(RefTensor(array_from_vec(op, out, &out_shape)?))
}
