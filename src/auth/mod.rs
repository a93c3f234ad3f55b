//! Authentication as sans-IO state machines: SCRAM-SHA-256 (RFC 5802/7677,
//! as PostgreSQL's `auth-scram.c`) and md5 on the server side, for clients
//! of split ports; the client side for pgvane's own backend connections
//! uses postgres-protocol's SCRAM client. No sockets here.

pub mod scram;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;

/// A user's stored secret, from the config's `users` list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Secret {
    /// A SCRAM-SHA-256 verifier (given, or computed from a plaintext password).
    Scram(scram::Verifier),
    /// An md5 hash `md5` + md5(password + user) in hex.
    Md5(String),
}

/// Why a configured password is unusable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct SecretError(pub String);

impl Secret {
    /// Reads a config password: a `SCRAM-SHA-256$…` verifier, an `md5…`
    /// hash, or plaintext (turned into a SCRAM verifier with a random salt).
    ///
    /// # Errors
    /// [`SecretError`] for a malformed verifier.
    pub fn from_config(password: &str) -> Result<Self, SecretError> {
        if password.starts_with("SCRAM-SHA-256$") {
            return scram::Verifier::parse(password).map(Self::Scram);
        }
        if is_md5_hash(password) {
            return Ok(Self::Md5(password.to_owned()));
        }
        Ok(Self::Scram(scram::Verifier::from_password(
            password,
            &random_bytes::<16>(),
            4096,
        )))
    }
}

/// Whether a configured password is an md5 hash (`md5` + 32 hex digits)
/// rather than plaintext or a SCRAM verifier.
#[must_use]
pub fn is_md5_hash(password: &str) -> bool {
    password.len() == 35
        && password.starts_with("md5")
        && password[3..].bytes().all(|b| b.is_ascii_hexdigit())
}

/// `n` random bytes from the OS.
#[must_use]
pub fn random_bytes<const N: usize>() -> [u8; N] {
    let mut b = [0u8; N];
    // getrandom only fails on exotic platforms; fall back to the clock mix.
    if getrandom::fill(&mut b).is_err() {
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        for (i, x) in b.iter_mut().enumerate() {
            *x = (t >> ((i % 16) * 8)) as u8 ^ (i as u8).wrapping_mul(151);
        }
    }
    b
}

/// The per-process secret behind mock salts (PostgreSQL's `mock_auth_nonce`).
fn mock_key() -> &'static [u8; 32] {
    static KEY: std::sync::OnceLock<[u8; 32]> = std::sync::OnceLock::new();
    KEY.get_or_init(random_bytes::<32>)
}

/// What an unknown user is asked for, so that the exchange looks like a
/// known user's: a SCRAM verifier with a salt that is the same for the same
/// name within this process (as PostgreSQL's `scram_mock_salt`) and 4096
/// iterations, or an md5 hash. Costs no PBKDF2, like a configured user's
/// precomputed verifier; no password matches it.
#[must_use]
pub fn mock_secret(user: &str, md5: bool) -> Secret {
    use sha2::Digest;
    let digest = |label: &[u8]| -> [u8; 32] {
        let mut h = sha2::Sha256::new();
        h.update(mock_key());
        h.update(label);
        h.update(user.as_bytes());
        h.finalize().into()
    };
    if md5 {
        let d = digest(b"md5");
        let hex: String = d[..16].iter().map(|b| format!("{b:02x}")).collect();
        return Secret::Md5(format!("md5{hex}"));
    }
    Secret::Scram(scram::Verifier {
        iterations: 4096,
        salt: digest(b"salt")[..16].to_vec(),
        stored_key: digest(b"stored"),
        server_key: digest(b"server"),
    })
}

/// A random printable nonce for SCRAM.
#[must_use]
pub fn nonce() -> String {
    B64.encode(random_bytes::<18>())
}

/// The md5 password exchange, server side: the answer the client must send
/// for `salt`, given the stored `md5…` hash.
#[must_use]
pub fn md5_expected(stored: &str, salt: [u8; 4]) -> String {
    let inner = stored.trim_start_matches("md5");
    let mut data = inner.as_bytes().to_vec();
    data.extend_from_slice(&salt);
    format!("md5{:x}", md5::compute(&data))
}

/// `md5` + md5(password + user), the stored form of an md5 password.
#[must_use]
pub fn md5_stored(user: &str, password: &str) -> String {
    format!("md5{:x}", md5::compute(format!("{password}{user}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn md5_matches_postgresql() {
        // What libpq sends for user "postgres", password "postgres", salt 01020304.
        let stored = md5_stored("postgres", "postgres");
        assert_eq!(stored, "md53175bce1d3201d16594cebf9d7eb3f9d");
        let answer = md5_expected(&stored, [1, 2, 3, 4]);
        assert_eq!(
            answer,
            postgres_protocol::authentication::md5_hash(b"postgres", b"postgres", [1, 2, 3, 4])
        );
    }

    #[test]
    fn mock_secrets_are_stable_per_name_and_look_real() {
        let (a, b) = (mock_secret("ghost", false), mock_secret("ghost", false));
        assert_eq!(a, b, "the same name gets the same salt, like PostgreSQL");
        let Secret::Scram(v) = a else {
            panic!("SCRAM expected")
        };
        let Secret::Scram(w) = mock_secret("other", false) else {
            panic!("SCRAM expected")
        };
        assert_ne!(v.salt, w.salt);
        assert_eq!((v.salt.len(), v.iterations), (16, 4096));
        let Secret::Md5(h) = mock_secret("ghost", true) else {
            panic!("md5 expected")
        };
        assert!(matches!(Secret::from_config(&h), Ok(Secret::Md5(_))), "{h}");
    }

    #[test]
    fn config_secrets() {
        assert!(matches!(
            Secret::from_config("md53175bce1d3201d16594cebf9d7eb3f9d"),
            Ok(Secret::Md5(_))
        ));
        assert!(matches!(Secret::from_config("plain"), Ok(Secret::Scram(_))));
        assert!(Secret::from_config("SCRAM-SHA-256$bad").is_err());
    }
}
