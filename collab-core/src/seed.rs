//! Seeds for the randomised conformance suites (backends, batch policies): one environment
//! variable replays a failing run, another sets how many rounds each check runs.

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
