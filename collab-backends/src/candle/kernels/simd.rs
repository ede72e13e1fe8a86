//! Run-time choice of the instruction set, and the arithmetic the kernels share.
//!
//! A kernel body is an `#[inline(always)]` generic function over `const FMA: bool`; [`dispatch`]
//! calls it through a function compiled with `#[target_feature(enable = "avx,fma")]` when the
//! CPU has both (so its loops become 8-wide AVX with fused multiply-adds), else through a plain
//! function (4-wide SSE2 on x86-64, NEON with FMA on aarch64).

use std::sync::OnceLock;

/// The instruction set a kernel runs with. Only [`Isa::detect`] and [`Isa::available`] make a
/// value other than [`Isa::BASELINE`], after checking the CPU, so a kernel can never be asked
/// to run instructions the CPU lacks.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Isa(pub(crate) IsaKind);

/// What an [`Isa`] holds (private: values come from detection only).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum IsaKind {
    /// The target's baseline: SSE2 on x86-64 (no FMA), NEON with FMA on aarch64.
    Baseline,
    /// x86-64 with AVX and FMA, detected at run time.
    AvxFma,
}

impl std::fmt::Debug for Isa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self.0 {
            IsaKind::Baseline => "Baseline",
            IsaKind::AvxFma => "AvxFma",
        })
    }
}

impl Isa {
    /// The target's baseline, which every CPU of the target runs.
    pub const BASELINE: Self = Isa(IsaKind::Baseline);

    /// The best instruction set this CPU has, detected once.
    pub fn detect() -> Self {
        static ISA: OnceLock<Isa> = OnceLock::new();
        *ISA.get_or_init(|| {
            #[cfg(target_arch = "x86_64")]
            if std::arch::is_x86_feature_detected!("avx")
                && std::arch::is_x86_feature_detected!("fma")
            {
                return Isa(IsaKind::AvxFma);
            }
            Isa::BASELINE
        })
    }

    /// Every instruction set this CPU can run, for tests and benches that compare them.
    pub fn available() -> Vec<Self> {
        match Self::detect().0 {
            IsaKind::AvxFma => vec![Isa::BASELINE, Isa(IsaKind::AvxFma)],
            IsaKind::Baseline => vec![Isa::BASELINE],
        }
    }
}

/// Whether the baseline build fuses multiply-adds (aarch64 has FMA in its baseline; x86-64's
/// baseline does not, where `f32::mul_add` would be a library call).
pub const BASELINE_FMA: bool = cfg!(target_arch = "aarch64");

/// Calls `$body::<FMA>($args)` compiled for the instruction set `$isa` (an [`Isa`]).
macro_rules! dispatch {
    ($isa:expr, $body:ident ( $($arg:ident : $ty:ty),* $(,)? )) => {{
        #[cfg(target_arch = "x86_64")]
        #[target_feature(enable = "avx,fma")]
        fn avx_fma($($arg: $ty),*) {
            $body::<true>($($arg),*)
        }
        fn baseline($($arg: $ty),*) {
            $body::<{ $crate::candle::kernels::simd::BASELINE_FMA }>($($arg),*)
        }
        let isa: $crate::candle::kernels::simd::Isa = $isa;
        match isa.0 {
            #[cfg(target_arch = "x86_64")]
            $crate::candle::kernels::simd::IsaKind::AvxFma => {
                #[allow(unsafe_code)]
                // SAFETY: an `Isa` holding `AvxFma` is only built by `Isa::detect` (and
                // `Isa::available`, from it) after `is_x86_feature_detected!` found both AVX and
                // FMA on this CPU; its field is private to this crate, where nothing else
                // builds one. So the instructions `avx_fma` is compiled with exist.
                unsafe { avx_fma($($arg),*) }
            }
            _ => baseline($($arg),*),
        }
    }};
}
pub(crate) use dispatch;

/// `a * b + c`, fused where `FMA` (one rounding), else two operations.
#[inline(always)]
pub(crate) fn madd<const FMA: bool>(a: f32, b: f32, c: f32) -> f32 {
    if FMA { a.mul_add(b, c) } else { a * b + c }
}

/// 1.5 * 2^23: adding it to an `f32` of magnitude below 2^22 rounds to an integer, which then
/// sits in the low mantissa bits.
const ROUND_MAGIC: f32 = 12_582_912.0;

/// Values per step of the block kernels. Each step of a kernel (one Horner term, say) runs over
/// a whole block, so its 8 AVX vectors are independent and overlap in the pipeline; one vector
/// at a time, every step would wait on the previous one's latency.
pub(crate) const BLOCK: usize = 64;

/// `e^x` in place for `x <= 0` (and a little above), branch-free: `x = n ln2 + r` with
/// `|r| <= ln2/2`, `e^r` by its Taylor polynomial to degree 7 (truncation below 1e-8
/// relative), `2^n` built in the exponent bits. Below -87 the result is 0 (the true value is
/// under 1.7e-38); NaN stays NaN. Relative error about 2 ulp.
#[inline(always)]
pub(crate) fn exp_nonpositive<const FMA: bool>(x: &mut [f32; BLOCK]) {
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    const TAYLOR: [f32; 7] = [
        1.0 / 720.0,
        1.0 / 120.0,
        1.0 / 24.0,
        1.0 / 6.0,
        0.5,
        1.0,
        1.0,
    ];
    let mut shifted = [0f32; BLOCK];
    let mut r = [0f32; BLOCK];
    for i in 0..BLOCK {
        let clamped = if x[i] < -87.0 { -87.0 } else { x[i] };
        shifted[i] = madd::<FMA>(clamped, std::f32::consts::LOG2_E, ROUND_MAGIC);
        let n = shifted[i] - ROUND_MAGIC;
        r[i] = madd::<FMA>(n, -LN2_LO, madd::<FMA>(n, -LN2_HI, clamped));
    }
    let mut p = [1.0 / 5040.0; BLOCK];
    for c in TAYLOR {
        for i in 0..BLOCK {
            p[i] = madd::<FMA>(p[i], r[i], c);
        }
    }
    for i in 0..BLOCK {
        // n in [-126, 1] sits in the low bits of `shifted`; its biased exponent makes 2^n.
        let n_bits = shifted[i]
            .to_bits()
            .wrapping_sub(ROUND_MAGIC.to_bits())
            .wrapping_add(127);
        let scale = f32::from_bits(n_bits << 23);
        x[i] = if x[i] < -87.0 { 0.0 } else { p[i] * scale };
    }
}

/// The sum of `x`, in 8 independent lanes (vectorisable), then across them.
#[inline(always)]
pub(crate) fn sum(x: &[f32]) -> f32 {
    let mut acc = [0f32; 8];
    let chunks = x.chunks_exact(8);
    let rest = chunks.remainder();
    for c in chunks {
        for (a, v) in acc.iter_mut().zip(c) {
            *a += v;
        }
    }
    let lanes = ((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7]));
    lanes + rest.iter().sum::<f32>()
}

/// The largest value of `x` (`-inf` when empty), in 8 lanes. NaN values may be skipped: callers
/// whose results must carry NaN get it from their later arithmetic on the values.
#[inline(always)]
pub(crate) fn max(x: &[f32]) -> f32 {
    let mut acc = [f32::NEG_INFINITY; 8];
    let chunks = x.chunks_exact(8);
    let rest = chunks.remainder();
    for c in chunks {
        for (a, v) in acc.iter_mut().zip(c) {
            *a = if *v > *a { *v } else { *a };
        }
    }
    acc.iter()
        .chain(rest)
        .copied()
        .fold(f32::NEG_INFINITY, f32::max)
}

/// The sum of `(x - mean)^2`, vectorised as [`sum`].
#[inline(always)]
pub(crate) fn sum_squared_deviations<const FMA: bool>(x: &[f32], mean: f32) -> f32 {
    let mut acc = [0f32; 8];
    let chunks = x.chunks_exact(8);
    let rest = chunks.remainder();
    for c in chunks {
        for (a, v) in acc.iter_mut().zip(c) {
            let d = v - mean;
            *a = madd::<FMA>(d, d, *a);
        }
    }
    let lanes = ((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7]));
    lanes + rest.iter().map(|v| (v - mean) * (v - mean)).sum::<f32>()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn exp_with(isa: Isa, x: &[f32], out: &mut [f32]) {
        #[inline(always)]
        fn body<const FMA: bool>(x: &[f32], out: &mut [f32]) {
            for (x, o) in x.chunks(BLOCK).zip(out.chunks_mut(BLOCK)) {
                let mut b = [0f32; BLOCK];
                b[..x.len()].copy_from_slice(x);
                exp_nonpositive::<FMA>(&mut b);
                o.copy_from_slice(&b[..o.len()]);
            }
        }
        dispatch!(isa, body(x: &[f32], out: &mut [f32]))
    }

    #[test]
    fn exp_matches_f64_to_a_few_ulp_over_its_range() {
        let x: Vec<f32> = (0..=200_000).map(|i| -90.0 + i as f32 * 4.5e-4).collect();
        for isa in Isa::available() {
            let mut out = vec![0f32; x.len()];
            exp_with(isa, &x, &mut out);
            for (v, got) in x.iter().zip(&out) {
                let want = f64::from(*v).exp();
                if *v < -87.0 {
                    assert_eq!(*got, 0.0, "{isa:?} exp({v})");
                } else {
                    let rel = (f64::from(*got) - want).abs() / want;
                    assert!(
                        rel < 5e-7,
                        "{isa:?} exp({v}) = {got}, want {want}, rel {rel:e}"
                    );
                }
            }
        }
    }

    #[test]
    fn exp_keeps_nan_and_sends_minus_infinity_to_zero() {
        for isa in Isa::available() {
            let mut out = [1f32; 3];
            exp_with(isa, &[f32::NAN, f32::NEG_INFINITY, 0.0], &mut out);
            assert!(out[0].is_nan(), "{isa:?}");
            assert_eq!(out[1], 0.0, "{isa:?}");
            assert_eq!(out[2], 1.0, "{isa:?}");
        }
    }

    #[test]
    fn sums_match_f64_at_every_length() {
        for len in 0..40 {
            let x: Vec<f32> = (0..len).map(|i| (i as f32 * 0.37).sin()).collect();
            let want: f64 = x.iter().map(|v| f64::from(*v)).sum();
            assert!((f64::from(sum(&x)) - want).abs() < 1e-5, "len {len}");
            let mean = if len == 0 { 0.0 } else { want / len as f64 };
            let want_sq: f64 = x.iter().map(|v| (f64::from(*v) - mean).powi(2)).sum();
            let got = sum_squared_deviations::<false>(&x, mean as f32);
            assert!((f64::from(got) - want_sq).abs() < 1e-5, "len {len}");
            let want_max = x.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            assert_eq!(max(&x), want_max, "len {len}");
        }
    }
}
