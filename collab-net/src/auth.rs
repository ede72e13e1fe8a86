//! Who may open a session: one secret shared by every device, or a token per device.
//!
//! Secrets are compared as SHA-256 digests with a constant-time equality (`subtle`), so the
//! time a refusal takes depends neither on where a guess differs nor on the secret's length.
//! [`Secret`] never prints its value (`Debug` shows `Secret(..)`), and a [`DeviceTokens`]
//! table keeps only digests. Tokens come from files or environment variables, never from a
//! command line (where `ps` shows them).
//!
//! A device file is TOML, one `device id = "token"` line under `[devices]`:
//!
//! ```toml
//! [devices]
//! phone-1 = "4f1c7d0e9b2a6c3f"
//! camera-7 = "a0b1c2d3e4f5a6b7"
//! ```

use std::collections::HashMap;
use std::fmt;
use std::path::Path;

use serde::Deserialize;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::server::ServerError;

/// The public demo secret: what devices and servers use when given none. A server refuses to
/// listen beyond loopback with it unless told to (`--insecure-demo-token`).
pub const DEMO_TOKEN: &str = "collab-demo";

/// Shortest token a device file may hold, characters.
pub const MIN_TOKEN_LEN: usize = 16;

/// A secret string whose `Debug` does not show it.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// Wraps `value`.
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    /// The secret itself (to send it in a `Hello`).
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// Whether this is [`DEMO_TOKEN`].
    pub fn is_demo(&self) -> bool {
        self.0 == DEMO_TOKEN
    }

    /// Whether `guess` is this secret, in time independent of both (digests compared in
    /// constant time).
    pub fn matches(&self, guess: &str) -> bool {
        bool::from(digest(&self.0).as_slice().ct_eq(digest(guess).as_slice()))
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(..)")
    }
}

impl From<&str> for Secret {
    fn from(s: &str) -> Self {
        Self::new(s)
    }
}

impl From<String> for Secret {
    fn from(s: String) -> Self {
        Self(s)
    }
}

/// The environment variable the command lines read a device's or the server's shared token
/// from by default.
pub const TOKEN_ENV: &str = "COLLAB_TOKEN";

/// Where a command line reads its secret: a file or an environment variable, never an
/// argument (`ps` shows those). Flattened into `collab-server`, `collab-device` and the
/// demo's load generator.
#[derive(Clone, Debug, PartialEq, Eq, clap::Args)]
pub struct TokenArgs {
    /// The environment variable holding the secret (unset: the public demo token). Never on
    /// the command line, where `ps` shows it.
    #[arg(long, default_value = TOKEN_ENV)]
    pub token_env: String,
    /// A file whose first line is the secret (instead of `--token-env`).
    #[arg(long)]
    pub token_file: Option<std::path::PathBuf>,
}

impl TokenArgs {
    /// The secret these options name, or [`DEMO_TOKEN`] when they name none.
    ///
    /// # Errors
    /// As [`read_token`].
    pub fn secret(&self) -> Result<Secret, String> {
        let token = read_token(self.token_file.as_deref(), &self.token_env)?;
        Ok(token.unwrap_or_else(|| DEMO_TOKEN.into()))
    }
}

/// A token from `file` (its first line, trimmed) if given, else from the environment
/// variable `env` if set; `None` if neither gives one (the caller falls back to
/// [`DEMO_TOKEN`]).
///
/// # Errors
/// A file that cannot be read or whose first line is empty; a variable that is set but
/// empty or not Unicode (naming the file or variable, never the token).
pub fn read_token(file: Option<&Path>, env: &str) -> Result<Option<Secret>, String> {
    if let Some(path) = file {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("token file {}: {e}", path.display()))?;
        let token = text.lines().next().unwrap_or("").trim();
        if token.is_empty() {
            return Err(format!(
                "token file {}: the first line is empty",
                path.display()
            ));
        }
        return Ok(Some(Secret::new(token)));
    }
    match std::env::var(env) {
        Ok(v) if v.trim().is_empty() => Err(format!("${env} is set but empty")),
        Ok(v) => Ok(Some(Secret::new(v.trim()))),
        Err(std::env::VarError::NotPresent) => Ok(None),
        Err(std::env::VarError::NotUnicode(_)) => Err(format!("${env} is not Unicode")),
    }
}

fn digest(s: &str) -> [u8; 32] {
    Sha256::digest(s.as_bytes()).into()
}

/// A token per device id, kept as digests (see the module docs for the file).
#[derive(Clone, PartialEq, Eq)]
pub struct DeviceTokens {
    digests: HashMap<String, [u8; 32]>,
}

impl fmt::Debug for DeviceTokens {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DeviceTokens")
            .field("devices", &self.digests.len())
            .finish()
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TokenFile {
    devices: HashMap<String, String>,
}

impl DeviceTokens {
    /// A table from `(device id, token)` pairs.
    ///
    /// # Errors
    /// [`ServerError::Config`] for no devices, an empty device id, or a token shorter than
    /// [`MIN_TOKEN_LEN`] or equal to [`DEMO_TOKEN`] (naming the device, never the token).
    pub fn new<I, D, T>(pairs: I) -> Result<Self, ServerError>
    where
        I: IntoIterator<Item = (D, T)>,
        D: Into<String>,
        T: AsRef<str>,
    {
        let mut digests = HashMap::new();
        for (device, token) in pairs {
            let (device, token) = (device.into(), token.as_ref());
            if device.is_empty() {
                return Err(ServerError::Config("a device id is empty".into()));
            }
            if token.chars().count() < MIN_TOKEN_LEN || token == DEMO_TOKEN {
                return Err(ServerError::Config(format!(
                    "the token of device `{device}` is shorter than {MIN_TOKEN_LEN} \
                     characters or is the public demo token"
                )));
            }
            digests.insert(device, digest(token));
        }
        if digests.is_empty() {
            return Err(ServerError::Config("no devices in the token table".into()));
        }
        Ok(Self { digests })
    }

    /// Reads a device file (see the module docs).
    ///
    /// # Errors
    /// [`ServerError::Config`] naming the file: unreadable, not TOML of that shape, or a bad
    /// entry (as [`DeviceTokens::new`]).
    pub fn load(path: &Path) -> Result<Self, ServerError> {
        let bad = |m: String| ServerError::Config(format!("device tokens {}: {m}", path.display()));
        let text = std::fs::read_to_string(path).map_err(|e| bad(e.to_string()))?;
        let file: TokenFile = toml::from_str(&text).map_err(|e| bad(e.message().to_owned()))?;
        Self::new(file.devices).map_err(|e| bad(e.to_string()))
    }

    /// Whether `token` is `device`'s, in time independent of the device, the token and where
    /// they differ (an unknown device is compared against a digest no token has).
    pub fn check(&self, device: &str, token: &str) -> bool {
        let none = [0u8; 32];
        let (known, want) = match self.digests.get(device) {
            Some(d) => (true, d),
            None => (false, &none),
        };
        let same = bool::from(want.as_slice().ct_eq(digest(token).as_slice()));
        known & same
    }

    /// Devices in the table.
    pub fn len(&self) -> usize {
        self.digests.len()
    }

    /// Whether the table is empty (never, once built).
    pub fn is_empty(&self) -> bool {
        self.digests.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_match_only_themselves_and_never_print() {
        let s = Secret::new("correct horse battery staple");
        assert!(s.matches("correct horse battery staple"));
        assert!(!s.matches("correct horse battery stapl"));
        assert!(!s.matches(""));
        assert_eq!(format!("{s:?}"), "Secret(..)");
        assert!(Secret::from(DEMO_TOKEN).is_demo());
    }

    #[test]
    fn device_tokens_bind_a_token_to_its_device() {
        let t = DeviceTokens::new([("a", "aaaaaaaaaaaaaaaa1"), ("b", "bbbbbbbbbbbbbbbb2")])
            .expect("table");
        assert!(t.check("a", "aaaaaaaaaaaaaaaa1"));
        assert!(
            !t.check("a", "bbbbbbbbbbbbbbbb2"),
            "b's token does not open a"
        );
        assert!(!t.check("c", "aaaaaaaaaaaaaaaa1"));
        assert!(!format!("{t:?}").contains("aaaa"));
        assert!(DeviceTokens::new([("a", "short")]).is_err());
        assert!(DeviceTokens::new([("a", DEMO_TOKEN)]).is_err());
        assert!(DeviceTokens::new(Vec::<(String, String)>::new()).is_err());
    }

    #[test]
    fn a_device_file_loads_and_bad_ones_say_why() {
        let dir = std::env::temp_dir().join(format!("collab-tokens-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let good = dir.join("good.toml");
        std::fs::write(&good, "[devices]\nphone-1 = \"0123456789abcdef\"\n").expect("write");
        let t = DeviceTokens::load(&good).expect("load");
        assert!(t.check("phone-1", "0123456789abcdef"));
        let bad = dir.join("bad.toml");
        std::fs::write(&bad, "[devices]\nphone-1 = \"short\"\n").expect("write");
        let e = DeviceTokens::load(&bad)
            .expect_err("short token")
            .to_string();
        assert!(e.contains("phone-1") && !e.contains("\"short\""), "{e}");
        std::fs::remove_dir_all(&dir).ok();
    }
}
