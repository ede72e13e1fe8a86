//! Element-wise sums of equal-shaped tensors (the residual connections of every block), split
//! across rayon's pool for large inputs. candle's own binary kernel runs on one thread.

use rayon::prelude::*;

/// Elements per rayon task, below which the work stays on the calling thread.
const CHUNK: usize = 1 << 16;

/// `out[i] = a[i] + b[i]` over the common length.
pub fn add(a: &[f32], b: &[f32], out: &mut [f32]) {
    let n = a.len().min(b.len()).min(out.len());
    let serial = |(o, (a, b)): (&mut [f32], (&[f32], &[f32]))| {
        for ((o, a), b) in o.iter_mut().zip(a).zip(b) {
            *o = a + b;
        }
    };
    if n <= CHUNK {
        serial((&mut out[..n], (&a[..n], &b[..n])));
    } else {
        out[..n]
            .par_chunks_mut(CHUNK)
            .zip(a[..n].par_chunks(CHUNK).zip(b[..n].par_chunks(CHUNK)))
            .for_each(serial);
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn adds_exactly_at_every_size() {
        for n in [0, 1, 7, CHUNK, 3 * CHUNK + 5] {
            let a: Vec<f32> = (0..n).map(|i| i as f32 * 0.5).collect();
            let b: Vec<f32> = (0..n).map(|i| (i as f32).sin()).collect();
            let mut out = vec![f32::NAN; n];
            add(&a, &b, &mut out);
            for i in 0..n {
                assert_eq!(out[i], a[i] + b[i]);
            }
        }
    }
}
