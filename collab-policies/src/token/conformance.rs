//! The `TokenAdapter` conformance suite (OTAS, SPEC §4): every token adapter (ToMe merging,
//! prompt tokens) runs [`check_adapter`], which drives it through the hook points of a stack of
//! blocks on seeded random hidden states and keys and checks the contract of
//! [`TokenAdapter`] at every hook:
//! - `x` stays `[batch, n', hidden]` with the batch and hidden size unchanged;
//! - the token count changes by exactly `gamma(layer)`: `before_attention` adds `gamma` when
//!   `gamma > 0`, `before_mlp` removes `|gamma|` when `gamma < 0`, the other hook changes
//!   nothing;
//! - `protected` is unchanged and the first `protected` tokens keep their values;
//! - `mask` and `sizes` are `None` or `[batch, n']`;
//! - with `sizes`, every row's size sum equals the previous one (tokens count 1 when there were
//!   no sizes) plus the tokens added;
//! - every value is finite.
//!
//! [`check_pass_policy`] is the suite of a live server's per-pass merge policy.

use collab_core::model::Hidden;
use collab_core::token::TokenAdapter;
use collab_core::{Backend, Error, Result};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// The shape of one conformance run.
#[derive(Clone, Copy, Debug)]
pub struct AdapterCase {
    /// Rows of the batch.
    pub batch: usize,
    /// Tokens at the first block's input (protected ones included).
    pub tokens: usize,
    /// Hidden size (a multiple of `heads`).
    pub hidden: usize,
    /// Attention heads of the random keys.
    pub heads: usize,
    /// Leading tokens the adapter must keep (1 for a ViT class token).
    pub protected: usize,
    /// Blocks to run through.
    pub layers: usize,
    /// Seed of the random hidden states and keys.
    pub seed: u64,
}

/// Absolute tolerance on the protected tokens' values (a size-1 token divided by its size
/// is exact, but an adapter may legitimately recompute it).
const VALUE_TOL: f32 = 1e-6;

/// What is known about the hidden states before a hook.
struct Before {
    tokens: usize,
    head: Vec<f32>,
    size_sums: Vec<f64>,
}

/// Where in the run a check happens, for error messages.
struct At<'a> {
    adapter: &'a str,
    layer: usize,
    hook: &'static str,
}

impl At<'_> {
    fn shape(&self, what: String) -> Error {
        Error::shape(
            "check_adapter",
            format!(
                "adapter `{}`, layer {}, {}: {what}",
                self.adapter, self.layer, self.hook
            ),
        )
    }

    fn value(&self, what: String) -> Error {
        Error::Config(format!(
            "token adapter `{}` breaks its contract at layer {}, {}: {what}",
            self.adapter, self.layer, self.hook
        ))
    }
}

fn random(rng: &mut StdRng, len: usize) -> Vec<f32> {
    (0..len).map(|_| rng.random_range(-1.0f32..1.0)).collect()
}

/// Row sums of the sizes (`tokens` per row when there are none).
fn size_sums<B: Backend>(backend: &B, h: &Hidden<B>, b: usize, n: usize) -> Result<Vec<f64>> {
    match &h.sizes {
        None => Ok(vec![n as f64; b]),
        Some(s) => Ok(backend
            .to_vec(s)?
            .chunks(n.max(1))
            .map(|row| row.iter().map(|&v| f64::from(v)).sum())
            .collect()),
    }
}

fn snapshot<B: Backend>(backend: &B, h: &Hidden<B>, case: &AdapterCase) -> Result<Before> {
    let (b, n, _) = h.dims3(backend)?;
    let head = backend.to_vec(&backend.narrow(&h.x, 1, 0, case.protected.min(n))?)?;
    Ok(Before {
        tokens: n,
        head,
        size_sums: size_sums(backend, h, b, n)?,
    })
}

/// Checks the hidden states `h` returned by a hook that should have changed the token count
/// by `delta`.
fn check<B: Backend>(
    backend: &B,
    h: &Hidden<B>,
    before: &Before,
    delta: i64,
    case: &AdapterCase,
    at: &At<'_>,
) -> Result<()> {
    let (b, n, d) = match backend.dims(&h.x)[..] {
        [b, n, d] => (b, n, d),
        ref other => return Err(at.shape(format!("x must be 3-D, got {other:?}"))),
    };
    if b != case.batch || d != case.hidden {
        return Err(at.shape(format!(
            "x is [{b}, {n}, {d}], batch and hidden must stay {} and {}",
            case.batch, case.hidden
        )));
    }
    let want = before.tokens as i64 + delta;
    if n as i64 != want {
        return Err(at.shape(format!(
            "token count went from {} to {n}, gamma says {want}",
            before.tokens
        )));
    }
    if h.protected != case.protected {
        return Err(at.value(format!(
            "protected changed from {} to {}",
            case.protected, h.protected
        )));
    }
    for (what, t) in [("mask", &h.mask), ("sizes", &h.sizes)] {
        if let Some(t) = t
            && backend.dims(t) != [b, n]
        {
            return Err(at.shape(format!(
                "{what} is {:?}, must be [{b}, {n}]",
                backend.dims(t)
            )));
        }
    }
    let x = backend.to_vec(&h.x)?;
    if let Some(i) = x.iter().position(|v| !v.is_finite()) {
        return Err(at.value(format!("x has a non-finite value at flat index {i}")));
    }
    let head = backend.to_vec(&backend.narrow(&h.x, 1, 0, case.protected.min(n))?)?;
    if let Some(i) = head
        .iter()
        .zip(&before.head)
        .position(|(a, w)| (a - w).abs() > VALUE_TOL * (1.0 + w.abs()))
        .or((head.len() != before.head.len()).then_some(0))
    {
        let (row, col) = (i / (case.protected * d), i % (case.protected * d));
        return Err(at.value(format!(
            "protected token {} of row {row} changed value (feature {})",
            col / d,
            col % d
        )));
    }
    for (what, t) in [("mask", &h.mask), ("sizes", &h.sizes)] {
        if let Some(t) = t
            && backend.to_vec(t)?.iter().any(|v| !v.is_finite())
        {
            return Err(at.value(format!("{what} has a non-finite value")));
        }
    }
    if h.sizes.is_some() {
        let added = delta.max(0) as f64;
        for (row, (got, was)) in size_sums(backend, h, b, n)?
            .iter()
            .zip(&before.size_sums)
            .enumerate()
        {
            if (got - (was + added)).abs() > 1e-3 * (1.0 + was.abs()) {
                return Err(at.value(format!(
                    "sizes of row {row} sum to {got}, expected {} (before {was}, {added} added)",
                    was + added
                )));
            }
        }
    }
    Ok(())
}

/// Drives `adapter` through `case.layers` blocks' hook points (`before_attention`, then
/// `before_mlp` with random keys `[batch, heads, n, hidden / heads]`) on seeded random hidden
/// states, checking the `TokenAdapter` contract listed in the module docs after every hook.
///
/// # Errors
/// [`Error::InvalidInput`] for a case that cannot run (no batch, no layers' worth of tokens,
/// `hidden` not a multiple of `heads`, more protected tokens than tokens);
/// [`Error::Shape`] naming the adapter, layer and hook for a violated shape or token count;
/// [`Error::Config`] naming them for a violated value invariant (protected tokens, sizes,
/// finiteness), or wrapping an error the adapter itself returned.
pub fn check_adapter<B: Backend>(
    backend: &B,
    adapter: &dyn TokenAdapter<B>,
    case: &AdapterCase,
) -> Result<()> {
    if case.batch == 0 || case.heads == 0 || !case.hidden.is_multiple_of(case.heads) {
        return Err(Error::InvalidInput(format!(
            "conformance case {case:?}: needs batch >= 1 and hidden a multiple of heads"
        )));
    }
    if case.protected > case.tokens {
        return Err(Error::InvalidInput(format!(
            "conformance case {case:?}: more protected tokens than tokens"
        )));
    }
    let name = adapter.name();
    let mut rng = StdRng::seed_from_u64(case.seed);
    let (b, d) = (case.batch, case.hidden);
    let x = backend.from_vec(random(&mut rng, b * case.tokens * d), &[b, case.tokens, d])?;
    let mut h = Hidden::new(x, case.protected);
    for layer in 0..case.layers {
        let gamma = i64::from(adapter.gamma(layer));
        let wrap = |hook: &'static str| {
            let name = &name;
            move |e: Error| {
                Error::Config(format!(
                    "token adapter `{name}` failed at layer {layer}, {hook}: {e}"
                ))
            }
        };
        let at = At {
            adapter: &name,
            layer,
            hook: "before_attention",
        };
        let before = snapshot(backend, &h, case)?;
        h = adapter
            .before_attention(backend, layer, h)
            .map_err(wrap(at.hook))?;
        check(backend, &h, &before, gamma.max(0), case, &at)?;

        let at = At {
            hook: "before_mlp",
            ..at
        };
        let before = snapshot(backend, &h, case)?;
        let n = before.tokens;
        let keys = backend.from_vec(
            random(&mut rng, b * n * d),
            &[b, case.heads, n, d / case.heads],
        )?;
        h = adapter
            .before_mlp(backend, layer, h, &keys)
            .map_err(wrap(at.hook))?;
        check(backend, &h, &before, gamma.min(0), case, &at)?;
    }
    Ok(())
}

/// The [`PassTokenPolicy`] conformance suite: drives `policy` (built for `context`) through
/// `rounds` seeded pass contexts and checks that every plan passes [`TokenPlan::check`] for
/// that model. The contexts include the hostile ones a server can hand it: no request waiting,
/// thousands waiting, deadlines already past or infinite, NaN and infinite arrival rates, a
/// clock before the arrivals. A panic fails the caller's test.
///
/// # Errors
/// [`Error::Config`] naming the policy, the round and the plan that breaks the contract.
///
/// [`PassTokenPolicy`]: collab_core::adaptive::PassTokenPolicy
/// [`TokenPlan::check`]: collab_core::adaptive::TokenPlan::check
pub fn check_pass_policy(
    policy: &mut dyn collab_core::adaptive::PassTokenPolicy,
    context: &collab_core::adaptive::TokenPolicyContext,
    rounds: usize,
    seed: u64,
) -> Result<()> {
    use collab_core::adaptive::{Batch, LoadInfo, PassContext, Query};
    let mut rng = StdRng::seed_from_u64(seed);
    let odd = [f64::NAN, f64::INFINITY, f64::NEG_INFINITY, -1.0, 0.0, 1e12];
    for round in 0..rounds {
        let hostile = round % 4 == 3;
        let now = if hostile {
            odd[rng.random_range(0..odd.len())]
        } else {
            rng.random_range(0.0..100.0)
        };
        let waiting = match round % 7 {
            0 => 0,
            1 => rng.random_range(1000..3000),
            _ => rng.random_range(1..64),
        };
        let queries = (0..waiting)
            .map(|i| {
                let arrival = if hostile {
                    odd[i % odd.len()]
                } else {
                    now - rng.random_range(0.0..1.0)
                };
                let budget = if hostile && i % 2 == 0 {
                    -1.0
                } else {
                    rng.random_range(0.0..2.0)
                };
                Query {
                    id: i as u64,
                    task: 0,
                    arrival,
                    deadline: arrival + budget,
                    utility: 1.0,
                }
            })
            .collect();
        let batch = Batch::new(queries);
        let load = LoadInfo {
            rate: if hostile {
                odd[round % odd.len()]
            } else {
                rng.random_range(0.0..2000.0)
            },
            uptime: if hostile {
                f64::NAN
            } else {
                rng.random_range(0.0..60.0)
            },
        };
        let plan = policy.plan(&PassContext {
            now,
            waiting: &batch,
            load,
        });
        plan.check(context.layers, context.tokens, context.protected)
            .map_err(|e| {
                Error::Config(format!(
                    "pass token policy `{}`, round {round} ({waiting} waiting): {e}; plan {plan:?}",
                    policy.name()
                ))
            })?;
    }
    Ok(())
}
