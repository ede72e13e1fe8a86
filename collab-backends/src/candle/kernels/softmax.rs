//! Softmax over rows, in place, with the vectorised `exp` of [`super::simd`].
//!
//! Numerically stable: each row's maximum is subtracted first, so every exponent is at most 0
//! (the range [`super::simd`]'s `exp` covers). A row whose maximum is `-inf` (every key masked)
//! becomes NaN, as `exp(-inf - -inf)` is in the f64 reference.

use rayon::prelude::*;

use super::simd::{BLOCK, Isa, dispatch, exp_nonpositive, max, sum};

/// Elements per rayon task (whole rows), below which the work stays on the calling thread.
const CHUNK: usize = 1 << 14;

#[inline(always)]
fn rows<const FMA: bool>(x: &mut [f32], width: usize) {
    for row in x.chunks_exact_mut(width) {
        let top = max(row);
        let (full, tail) = row.as_chunks_mut::<BLOCK>();
        for b in full {
            for v in b.iter_mut() {
                *v -= top;
            }
            exp_nonpositive::<FMA>(b);
        }
        if !tail.is_empty() {
            let mut b = [f32::NEG_INFINITY; BLOCK];
            for (s, v) in b.iter_mut().zip(tail.iter()) {
                *s = v - top;
            }
            exp_nonpositive::<FMA>(&mut b);
            tail.copy_from_slice(&b[..tail.len()]);
        }
        let inv = 1.0 / sum(row);
        for v in row.iter_mut() {
            *v *= inv;
        }
    }
}

/// Softmax of each row of `width` values of `x`, in place, on one thread with the instruction
/// set `isa` (from [`Isa::detect`] or [`Isa::available`]). A trailing partial row is left as
/// it is; `width == 0` does nothing.
pub fn softmax_rows_with(isa: Isa, x: &mut [f32], width: usize) {
    if width == 0 {
        return;
    }
    dispatch!(isa, rows(x: &mut [f32], width: usize))
}

/// [`softmax_rows_with`] with the best instruction set of this CPU, rows split across rayon's
/// pool for large inputs.
pub fn softmax_rows(x: &mut [f32], width: usize) {
    if width == 0 {
        return;
    }
    let isa = Isa::detect();
    let per_task = (CHUNK / width).max(1) * width;
    if x.len() <= per_task {
        softmax_rows_with(isa, x, width);
    } else {
        x.par_chunks_mut(per_task)
            .for_each(|c| softmax_rows_with(isa, c, width));
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn matches_f64_on_every_path() {
        for width in [1, 7, 8, 197, 300] {
            let x: Vec<f32> = (0..4 * width)
                .map(|i| (i as f32 * 0.37).sin() * 20.0)
                .collect();
            for isa in Isa::available() {
                let mut got = x.clone();
                softmax_rows_with(isa, &mut got, width);
                for (r, row) in x.chunks(width).enumerate() {
                    let max = row.iter().map(|v| f64::from(*v)).fold(f64::MIN, f64::max);
                    let total: f64 = row.iter().map(|v| (f64::from(*v) - max).exp()).sum();
                    for (i, v) in row.iter().enumerate() {
                        let want = (f64::from(*v) - max).exp() / total;
                        let got = f64::from(got[r * width + i]);
                        assert!(
                            (got - want).abs() < 1e-6 * want + 1e-12,
                            "{isa:?} width {width}: {got} vs {want}"
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn masked_keys_get_zero_and_a_fully_masked_row_is_nan() {
        let mut x = vec![
            0.0,
            f32::NEG_INFINITY,
            1.0,
            f32::NEG_INFINITY,
            f32::NEG_INFINITY,
            f32::NEG_INFINITY,
        ];
        softmax_rows(&mut x, 3);
        assert_eq!(x[1], 0.0);
        assert!((x[0] + x[2] - 1.0).abs() < 1e-6);
        assert!(x[3..].iter().all(|v| v.is_nan()));
    }

    #[test]
    fn the_threaded_entry_point_equals_the_single_thread_one() {
        let x: Vec<f32> = (0..100 * 197)
            .map(|i| (i as f32 * 0.011).cos() * 5.0)
            .collect();
        let mut threaded = x.clone();
        softmax_rows(&mut threaded, 197);
        let mut single = x;
        softmax_rows_with(Isa::detect(), &mut single, 197);
        assert_eq!(threaded, single);
    }
}
