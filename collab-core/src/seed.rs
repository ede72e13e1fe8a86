//! Seeds for the randomised conformance suites (backends, batch policies, codecs, split
//! strategies): one environment variable replays a failing run, another sets how many rounds
//! each check runs; [`run_rounds`] is the body such a test shares.

/// Environment variable that fixes the seed of a conformance run (decimal or `0x` hex).
pub const SEED_ENV: &str = "COLLAB_CONFORMANCE_SEED";
/// Environment variable that sets the number of rounds per check.
pub const ROUNDS_ENV: &str = "COLLAB_CONFORMANCE_ROUNDS";

/// A 64-bit finaliser (splitmix64) that spreads nearby seeds far apart.
pub fn splitmix64(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// The seed of round `round` of check `tag` in a run seeded with `seed`.
pub fn round_seed(seed: u64, tag: u64, round: usize) -> u64 {
    splitmix64(seed ^ splitmix64((tag << 32) ^ round as u64))
}

/// Parses a decimal or `0x`-prefixed hexadecimal `u64`, ignoring surrounding spaces.
pub fn parse_u64(s: &str) -> Option<u64> {
    let s = s.trim();
    match s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
        Some(hex) => u64::from_str_radix(hex, 16).ok(),
        None => s.parse().ok(),
    }
}

/// The seed from [`SEED_ENV`] if set, else one drawn from the clock (48 bits: short enough to
/// retype).
///
/// # Errors
/// When the variable is set but is not a `u64`.
pub fn seed_from_env_or_time() -> Result<u64, String> {
    match std::env::var(SEED_ENV) {
        Ok(s) => parse_u64(&s).ok_or_else(|| format!("{SEED_ENV}={s:?} is not a u64")),
        Err(_) => {
            let nanos = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos() as u64);
            Ok(splitmix64(nanos ^ u64::from(std::process::id())) >> 16)
        }
    }
}

/// The number of rounds from [`ROUNDS_ENV`] if set, else `default`.
///
/// # Errors
/// When the variable is set but is not a count.
pub fn rounds_from_env(default: usize) -> Result<usize, String> {
    match std::env::var(ROUNDS_ENV) {
        Ok(s) => s
            .trim()
            .parse()
            .map_err(|_| format!("{ROUNDS_ENV}={s:?} is not a count")),
        Err(_) => Ok(default),
    }
}

/// The body of a randomised conformance test: takes the seed ([`SEED_ENV`] or the clock) and
/// the rounds ([`ROUNDS_ENV`] or `default_rounds`), prints them with how to replay, runs
/// `check(round_seed)` for each round (round seeds derived with `tag`), and panics with every
/// failing round's message.
///
/// # Panics
/// When a variable is set but does not parse, or a round fails: that is the test failing.
pub fn run_rounds(
    what: &str,
    tag: u64,
    default_rounds: usize,
    mut check: impl FnMut(u64) -> Result<(), String>,
) {
    let (seed, rounds) = match (seed_from_env_or_time(), rounds_from_env(default_rounds)) {
        (Ok(s), Ok(r)) => (s, r),
        (Err(e), _) | (_, Err(e)) => panic!("{e}"),
    };
    println!("{what}: seed {seed}, {rounds} rounds (replay with {SEED_ENV}={seed})");
    let failures: Vec<String> = (0..rounds)
        .filter_map(|round| {
            check(round_seed(seed, tag, round))
                .err()
                .map(|e| format!("round {round}: {e}"))
        })
        .collect();
    assert!(
        failures.is_empty(),
        "{what} failed {} of {rounds} rounds (seed {seed}; replay with {SEED_ENV}={seed}):\n{}",
        failures.len(),
        failures.join("\n")
    );
}
