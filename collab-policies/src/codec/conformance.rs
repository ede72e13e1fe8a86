//! The conformance suite every [`ActivationCodec`] must pass, ours and a user's alike.
//!
//! For each round and each shape of the [`CodecSpec`], an activation is drawn from the round's
//! seed (a low-rank signal plus noise, one loud token, the scale varying per round). The checks:
//!
//! - `name()` is not empty;
//! - `encode(x)` succeeds, is deterministic, and is exactly `encoded_len(tokens, features)`
//!   bytes long;
//! - `declared_shape(encode(x))` is `x`'s shape, and `decode(encode(x))` has it, with finite
//!   values, within the spec's relative error `||x - x'|| / ||x||` when it sets one;
//! - hostile bytes never panic and never come back as a malformed activation: no bytes are
//!   refused, and cut payloads, a payload with a byte appended, payloads with flipped bits and
//!   random bytes of random lengths decode to a typed error or a well-formed activation of
//!   exactly the shape `declared_shape` reads from the same bytes (what a server bounds before
//!   it decodes).
//!
//! # Using it
//!
//! `codec_conformance!(name, make, spec)` expands to a module `name` with a `#[test]` per
//! check; `make` is a closure `Fn() -> C` building the codec (`C: ActivationCodec`, a
//! `Box<dyn ActivationCodec>` too):
//!
//! ```
//! use collab_policies::codec::conformance::CodecSpec;
//! use collab_policies::svd::{PlainCodec, Precision};
//! collab_policies::codec_conformance!(
//!     int8,
//!     || PlainCodec { precision: Precision::Int8 },
//!     CodecSpec { max_relative_error: Some(0.02), ..CodecSpec::default() }
//! );
//! # fn main() {}
//! ```
//!
//! Each test runs [`DEFAULT_ROUNDS`] rounds (override with `COLLAB_CONFORMANCE_ROUNDS`) from a
//! seed taken from the clock and printed; `COLLAB_CONFORMANCE_SEED` replays a failure.
//! [`check_codec`] runs the checks once (for property tests and other harnesses).

use std::panic::{AssertUnwindSafe, catch_unwind};

use collab_core::seed::run_rounds;
use collab_core::split::{Activation, ActivationCodec};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// Rounds per test in [`codec_conformance!`](crate::codec_conformance).
pub const DEFAULT_ROUNDS: usize = 8;

/// What the suite may expect of a codec.
#[derive(Clone, Debug, PartialEq)]
pub struct CodecSpec {
    /// The activation shapes `(tokens, features)` the codec takes (a codec on a calibrated
    /// basis takes only its basis's feature width). Default: 17 x 32, 1 x 8, 64 x 16, 5 x 3.
    pub shapes: Vec<(usize, usize)>,
    /// The largest relative reconstruction error `||x - x'||_F / ||x||_F` allowed on the drawn
    /// activations; `None` checks none (a lossy codec whose error depends on its setting).
    pub max_relative_error: Option<f64>,
    /// Random byte strings decoded per round in the hostile check (default 64).
    pub random_payloads: usize,
}

impl Default for CodecSpec {
    fn default() -> Self {
        Self {
            shapes: vec![(17, 32), (1, 8), (64, 16), (5, 3)],
            max_relative_error: None,
            random_payloads: 64,
        }
    }
}

/// One check of the suite.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CodecCheck {
    /// Name, exact length, determinism, shape and error of the round trip.
    RoundTrip,
    /// Truncated, extended, flipped and random payloads.
    Hostile,
}

impl CodecCheck {
    fn name(self) -> &'static str {
        match self {
            Self::RoundTrip => "round-trip",
            Self::Hostile => "hostile",
        }
    }
}

/// Holds a codec to the conformance suite: `codec_conformance!(name, make, spec)` expands to a
/// module `name` with one `#[test]` per [`CodecCheck`] (see the [module docs](self)).
#[macro_export]
macro_rules! codec_conformance {
    ($modname:ident, $make:expr $(,)?) => {
        $crate::codec_conformance!(
            $modname,
            $make,
            $crate::codec::conformance::CodecSpec::default()
        );
    };
    ($modname:ident, $make:expr, $spec:expr $(,)?) => {
        mod $modname {
            #[allow(unused_imports)]
            use super::*;

            #[test]
            fn round_trip() {
                $crate::codec::conformance::run_test(
                    $make,
                    &$spec,
                    $crate::codec::conformance::CodecCheck::RoundTrip,
                );
            }

            #[test]
            fn hostile() {
                $crate::codec::conformance::run_test(
                    $make,
                    &$spec,
                    $crate::codec::conformance::CodecCheck::Hostile,
                );
            }
        }
    };
}

/// The body of each test of [`codec_conformance!`](crate::codec_conformance): picks and
/// prints the seed, runs the rounds, and panics with the failure report.
pub fn run_test<C: ActivationCodec>(make: impl Fn() -> C, spec: &CodecSpec, check: CodecCheck) {
    let codec = make();
    let what = format!("codec conformance / {} `{}`", check.name(), codec.name());
    run_rounds(&what, check as u64, DEFAULT_ROUNDS, |seed| {
        check_codec(&codec, spec, check, seed)
    });
}

/// Runs `check` once on `codec` for every shape of `spec`, drawing from `seed`.
///
/// # Errors
/// What failed, with the shape.
pub fn check_codec<C: ActivationCodec + ?Sized>(
    codec: &C,
    spec: &CodecSpec,
    check: CodecCheck,
    seed: u64,
) -> Result<(), String> {
    if codec.name().is_empty() {
        return Err("name() is empty".into());
    }
    let mut rng = StdRng::seed_from_u64(seed);
    for &(tokens, features) in &spec.shapes {
        let x = draw(&mut rng, tokens, features);
        let at = |e: String| format!("{tokens} x {features}: {e}");
        match check {
            CodecCheck::RoundTrip => round_trip(codec, spec, &x).map_err(at)?,
            CodecCheck::Hostile => hostile(codec, spec, &x, &mut rng).map_err(at)?,
        }
    }
    Ok(())
}

/// A low-rank signal plus noise at a random scale, with one token ten times louder.
fn draw(rng: &mut StdRng, tokens: usize, features: usize) -> Activation {
    let rank = 3.min(tokens).min(features).max(1);
    let scale = 10f32.powf(rng.random_range(-1.0..2.0));
    let mut normal = || {
        // Box-Muller from two uniforms: no extra dependency.
        let (u, v): (f32, f32) = (rng.random_range(1e-6..1.0), rng.random());
        (-2.0 * u.ln()).sqrt() * (std::f32::consts::TAU * v).cos()
    };
    let left: Vec<f32> = (0..tokens * rank).map(|_| normal()).collect();
    let right: Vec<f32> = (0..rank * features).map(|_| normal()).collect();
    let loud = (tokens > 1).then_some(tokens / 2);
    let mut values = Vec::with_capacity(tokens * features);
    for i in 0..tokens {
        let gain = if Some(i) == loud { 10.0 } else { 1.0 };
        for j in 0..features {
            let signal: f32 = (0..rank)
                .map(|r| left[i * rank + r] * right[r * features + j])
                .sum();
            values.push(scale * gain * (signal + 0.1 * normal()));
        }
    }
    Activation {
        tokens,
        features,
        values,
    }
}

/// `f` with a panic turned into an error naming `what`.
fn no_panic<T>(what: &str, f: impl FnOnce() -> T) -> Result<T, String> {
    catch_unwind(AssertUnwindSafe(f)).map_err(|p| {
        let message = p
            .downcast_ref::<&str>()
            .map(|s| (*s).to_owned())
            .or_else(|| p.downcast_ref::<String>().cloned())
            .unwrap_or_default();
        format!("{what} panicked: {message}")
    })
}

fn round_trip<C: ActivationCodec + ?Sized>(
    codec: &C,
    spec: &CodecSpec,
    x: &Activation,
) -> Result<(), String> {
    let bytes = no_panic("encode", || codec.encode(x))?.map_err(|e| format!("encode: {e}"))?;
    let want = codec.encoded_len(x.tokens, x.features);
    if bytes.len() != want {
        return Err(format!(
            "encode gave {} bytes, encoded_len says {want}",
            bytes.len()
        ));
    }
    let again = no_panic("encode", || codec.encode(x))?.map_err(|e| format!("encode: {e}"))?;
    if again != bytes {
        return Err("encode is not deterministic".into());
    }
    let declared = no_panic("declared_shape", || codec.declared_shape(&bytes))?
        .map_err(|e| format!("declared_shape of its own payload: {e}"))?;
    if declared != (x.tokens, x.features) {
        return Err(format!(
            "declared_shape of its own payload is {} x {}",
            declared.0, declared.1
        ));
    }
    let y = no_panic("decode", || codec.decode(&bytes))?
        .map_err(|e| format!("decode of its own payload: {e}"))?;
    if (y.tokens, y.features) != (x.tokens, x.features) {
        return Err(format!("decode gave {} x {}", y.tokens, y.features));
    }
    if y.values.len() != x.values.len() || y.values.iter().any(|v| !v.is_finite()) {
        return Err("decoded values are missing or not finite".into());
    }
    if let Some(limit) = spec.max_relative_error {
        let norm = |v: &mut dyn Iterator<Item = f64>| v.map(|a| a * a).sum::<f64>().sqrt();
        let err = norm(
            &mut x
                .values
                .iter()
                .zip(&y.values)
                .map(|(a, b)| f64::from(a - b)),
        );
        let size = norm(&mut x.values.iter().map(|&a| f64::from(a)));
        let rel = err / size.max(f64::MIN_POSITIVE);
        if rel > limit {
            return Err(format!("relative error {rel:.4} over the limit {limit}"));
        }
    }
    Ok(())
}

/// Decodes `bytes`: a typed error, or an activation whose sizes agree with its values and
/// with the shape the bytes declare.
fn tolerated<C: ActivationCodec + ?Sized>(
    codec: &C,
    bytes: &[u8],
    what: &str,
) -> Result<(), String> {
    let declared = no_panic(what, || codec.declared_shape(bytes))?;
    match no_panic(what, || codec.decode(bytes))? {
        Err(_) => Ok(()),
        Ok(a) if declared.as_ref().ok() != Some(&(a.tokens, a.features)) => Err(format!(
            "{what}: decoded {} x {}, but declared_shape says {declared:?}",
            a.tokens, a.features
        )),
        Ok(a) if a.tokens > 0 && a.features > 0 && a.values.len() == a.tokens * a.features => {
            Ok(())
        }
        Ok(a) => Err(format!(
            "{what}: decoded a malformed activation ({} x {} with {} values)",
            a.tokens,
            a.features,
            a.values.len()
        )),
    }
}

fn hostile<C: ActivationCodec + ?Sized>(
    codec: &C,
    spec: &CodecSpec,
    x: &Activation,
    rng: &mut StdRng,
) -> Result<(), String> {
    let bytes = codec.encode(x).map_err(|e| format!("encode: {e}"))?;
    if no_panic("decode of no bytes", || codec.decode(&[]))?.is_ok() {
        return Err("decode of no bytes succeeded".into());
    }
    // Cut payloads: at most 64 cuts spread over the payload, and the last bytes one by one. A
    // codec whose payload length tells its rank may read a cut as a lower rank, so a cut need
    // not fail; it must not panic or come back malformed.
    let cuts = bytes.len().min(64);
    for i in 0..cuts {
        let spread = i * bytes.len() / cuts.max(1);
        for cut in [spread, bytes.len().saturating_sub(i + 1)] {
            let what = format!("decode of the first {cut} of {} bytes", bytes.len());
            tolerated(codec, &bytes[..cut], &what)?;
        }
    }
    let mut longer = bytes.clone();
    longer.push(0);
    tolerated(codec, &longer, "decode of the payload with a byte appended")?;
    for _ in 0..spec.random_payloads {
        let mut flipped = bytes.clone();
        if !flipped.is_empty() {
            for _ in 0..rng.random_range(1..=3) {
                let i = rng.random_range(0..flipped.len());
                flipped[i] ^= 1 << rng.random_range(0..8);
            }
        }
        tolerated(codec, &flipped, "decode of a payload with flipped bits")?;
        let len = rng.random_range(0..=2 * bytes.len().min(512));
        let random: Vec<u8> = (0..len).map(|_| rng.random()).collect();
        tolerated(codec, &random, "decode of random bytes")?;
    }
    Ok(())
}

#[cfg(test)]
mod tests;
