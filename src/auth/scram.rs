//! SCRAM-SHA-256, server side (RFC 5802, RFC 7677; PostgreSQL
//! `src/backend/libpq/auth-scram.c`). Message sequence:
//! client-first (`n,,n=,r=<c>`) → server-first (`r=<c><s>,s=<salt>,i=<n>`)
//! → client-final (`c=biws,r=<c><s>,p=<proof>`) → server-final (`v=<sig>`).
//! The nonce is passed in, so a recorded exchange replays in a test.
//!
//! A verified client leaves its `ClientKey` behind ([`Server::keys`]); with
//! the verifier's `ServerKey` that is enough to log in as the client to a
//! PostgreSQL that stores the same verifier ([`KeyClient`], SCRAM
//! pass-through as pgbouncer does it), so no plaintext password is needed.

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};

type HmacSha256 = Hmac<Sha256>;

/// A SCRAM-SHA-256 verifier as PostgreSQL stores it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verifier {
    /// PBKDF2 iteration count.
    pub iterations: u32,
    /// Salt.
    pub salt: Vec<u8>,
    /// `H(ClientKey)`.
    pub stored_key: [u8; 32],
    /// `HMAC(SaltedPassword, "Server Key")`.
    pub server_key: [u8; 32],
}

fn hmac(key: &[u8], data: &[u8]) -> [u8; 32] {
    let mut m = <HmacSha256 as Mac>::new_from_slice(key)
        .unwrap_or_else(|_| unreachable!("HMAC takes any key length"));
    m.update(data);
    m.finalize().into_bytes().into()
}

/// PBKDF2-HMAC-SHA256 with one output block (RFC 5802 `Hi`).
fn hi(password: &[u8], salt: &[u8], iterations: u32) -> [u8; 32] {
    let mut first = salt.to_vec();
    first.extend_from_slice(&1u32.to_be_bytes());
    let mut u = hmac(password, &first);
    let mut out = u;
    for _ in 1..iterations {
        u = hmac(password, &u);
        for (o, x) in out.iter_mut().zip(u.iter()) {
            *o ^= x;
        }
    }
    out
}

impl Verifier {
    /// Computes a verifier from a plaintext password.
    #[must_use]
    pub fn from_password(password: &str, salt: &[u8], iterations: u32) -> Self {
        let salted = hi(password.as_bytes(), salt, iterations);
        let client_key = hmac(&salted, b"Client Key");
        Self {
            iterations,
            salt: salt.to_vec(),
            stored_key: Sha256::digest(client_key).into(),
            server_key: hmac(&salted, b"Server Key"),
        }
    }

    /// Parses `SCRAM-SHA-256$<iter>:<salt>$<StoredKey>:<ServerKey>`.
    ///
    /// # Errors
    /// A message naming what is malformed.
    pub fn parse(text: &str) -> Result<Self, super::SecretError> {
        let bad =
            |what: &str| super::SecretError(format!("malformed SCRAM-SHA-256 verifier: {what}"));
        let rest = text
            .strip_prefix("SCRAM-SHA-256$")
            .ok_or_else(|| bad("prefix"))?;
        let (params, keys) = rest.split_once('$').ok_or_else(|| bad("missing `$`"))?;
        let (iter, salt) = params
            .split_once(':')
            .ok_or_else(|| bad("iterations:salt"))?;
        let (stored, server) = keys
            .split_once(':')
            .ok_or_else(|| bad("StoredKey:ServerKey"))?;
        let key = |s: &str| -> Result<[u8; 32], super::SecretError> {
            B64.decode(s)
                .ok()
                .and_then(|v| v.try_into().ok())
                .ok_or_else(|| bad("key"))
        };
        Ok(Self {
            iterations: iter.parse().map_err(|_| bad("iterations"))?,
            salt: B64.decode(salt).map_err(|_| bad("salt"))?,
            stored_key: key(stored)?,
            server_key: key(server)?,
        })
    }
}

/// What a client proved it holds: enough to log in as it, by SCRAM, to a
/// server that stores the same verifier. Never printed.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct ScramKeys {
    /// `HMAC(SaltedPassword, "Client Key")`, recovered from the client's proof.
    pub client_key: [u8; 32],
    /// `HMAC(SaltedPassword, "Server Key")`, from the verifier.
    pub server_key: [u8; 32],
}

impl std::fmt::Debug for ScramKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ScramKeys(..)")
    }
}

/// Why an exchange failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ScramError {
    /// The client's message does not follow the protocol.
    #[error("malformed SCRAM message: {0}")]
    Malformed(&'static str),
    /// The proof does not match: wrong password.
    #[error("password authentication failed")]
    WrongPassword,
}

/// Channel binding on the connection an exchange runs over.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Binding<'a> {
    /// No TLS: only SCRAM-SHA-256 was offered.
    Unavailable,
    /// TLS, SCRAM-SHA-256-PLUS offered, the client chose SCRAM-SHA-256.
    Declined,
    /// The client chose SCRAM-SHA-256-PLUS; the certificate's
    /// `tls-server-end-point` data.
    Selected(&'a [u8]),
}

/// The server side of one exchange.
#[derive(Debug)]
pub struct Server<'a> {
    verifier: &'a Verifier,
    server_nonce: String,
    binding: Binding<'a>,
    client_first_bare: String,
    server_first: String,
    gs2: String,
    client_key: Option<[u8; 32]>,
}

impl<'a> Server<'a> {
    /// Starts an exchange without channel binding, with a fresh `server_nonce`.
    #[must_use]
    pub fn new(verifier: &'a Verifier, server_nonce: String) -> Self {
        Self::with_binding(verifier, server_nonce, Binding::Unavailable)
    }

    /// Starts an exchange over a connection with `binding`.
    #[must_use]
    pub fn with_binding(
        verifier: &'a Verifier,
        server_nonce: String,
        binding: Binding<'a>,
    ) -> Self {
        Self {
            verifier,
            server_nonce,
            binding,
            client_first_bare: String::new(),
            server_first: String::new(),
            gs2: String::new(),
            client_key: None,
        }
    }

    /// After a successful [`Self::client_final`]: the keys the client
    /// proved it holds.
    #[must_use]
    pub fn keys(&self) -> Option<ScramKeys> {
        self.client_key.map(|client_key| ScramKeys {
            client_key,
            server_key: self.verifier.server_key,
        })
    }

    /// Takes client-first, returns server-first.
    ///
    /// # Errors
    /// [`ScramError::Malformed`].
    pub fn client_first(&mut self, data: &[u8]) -> Result<String, ScramError> {
        let text = std::str::from_utf8(data).map_err(|_| ScramError::Malformed("not UTF-8"))?;
        // gs2-header: "n,,", "y,," or "p=tls-server-end-point,,", with
        // PostgreSQL's checks (auth-scram.c read_client_first_message).
        let (cb, rest) = text
            .split_once(',')
            .ok_or(ScramError::Malformed("gs2 header"))?;
        match (cb, self.binding) {
            ("p=tls-server-end-point", Binding::Selected(_))
            | ("n", Binding::Unavailable | Binding::Declined)
            | ("y", Binding::Unavailable) => {}
            ("y", Binding::Declined) => {
                return Err(ScramError::Malformed(
                    "channel binding negotiation error: the client supports channel binding and thinks the server does not, but this server does",
                ));
            }
            (_, Binding::Selected(_)) => {
                return Err(ScramError::Malformed(
                    "SCRAM-SHA-256-PLUS needs channel binding type tls-server-end-point",
                ));
            }
            (cb, _) if cb.starts_with("p=") => {
                return Err(ScramError::Malformed(
                    "channel binding was requested, but SCRAM-SHA-256-PLUS was not selected",
                ));
            }
            _ => return Err(ScramError::Malformed("gs2 header")),
        }
        let (authzid, bare) = rest
            .split_once(',')
            .ok_or(ScramError::Malformed("gs2 header"))?;
        if !authzid.is_empty() {
            return Err(ScramError::Malformed(
                "an authorization identity is not supported",
            ));
        }
        let client_nonce = bare
            .split(',')
            .find_map(|p| p.strip_prefix("r="))
            .ok_or(ScramError::Malformed("client nonce"))?;
        self.gs2 = format!("{cb},,");
        self.client_first_bare = bare.to_owned();
        self.server_first = format!(
            "r={client_nonce}{},s={},i={}",
            self.server_nonce,
            B64.encode(&self.verifier.salt),
            self.verifier.iterations
        );
        Ok(self.server_first.clone())
    }

    /// Takes client-final, checks the proof, returns server-final.
    ///
    /// # Errors
    /// [`ScramError`] for a malformed message or a wrong password.
    pub fn client_final(&mut self, data: &[u8]) -> Result<String, ScramError> {
        let text = std::str::from_utf8(data).map_err(|_| ScramError::Malformed("not UTF-8"))?;
        let (without_proof, proof) = text
            .rsplit_once(",p=")
            .ok_or(ScramError::Malformed("proof"))?;
        let mut parts = without_proof.split(',');
        let cbind = parts
            .next()
            .and_then(|p| p.strip_prefix("c="))
            .ok_or(ScramError::Malformed("channel binding"))?;
        let mut expected = self.gs2.as_bytes().to_vec();
        if let Binding::Selected(data) = self.binding {
            expected.extend_from_slice(data);
        }
        if B64.decode(cbind).ok() != Some(expected) {
            return Err(ScramError::Malformed("channel binding mismatch"));
        }
        let nonce = parts
            .next()
            .and_then(|p| p.strip_prefix("r="))
            .ok_or(ScramError::Malformed("nonce"))?;
        let expected_nonce = self
            .server_first
            .split(',')
            .next()
            .and_then(|p| p.strip_prefix("r="))
            .unwrap_or("");
        if nonce != expected_nonce {
            return Err(ScramError::Malformed("nonce mismatch"));
        }
        let proof = B64
            .decode(proof)
            .map_err(|_| ScramError::Malformed("proof encoding"))?;
        if proof.len() != 32 {
            return Err(ScramError::Malformed("proof length"));
        }
        let auth_message = format!(
            "{},{},{}",
            self.client_first_bare, self.server_first, without_proof
        );
        let signature = hmac(&self.verifier.stored_key, auth_message.as_bytes());
        let client_key: Vec<u8> = proof
            .iter()
            .zip(signature.iter())
            .map(|(p, s)| p ^ s)
            .collect();
        let stored: [u8; 32] = Sha256::digest(&client_key).into();
        // Constant-time enough: compare all bytes.
        if stored
            .iter()
            .zip(self.verifier.stored_key.iter())
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            != 0
        {
            return Err(ScramError::WrongPassword);
        }
        self.client_key = client_key.try_into().ok();
        let server_sig = hmac(&self.verifier.server_key, auth_message.as_bytes());
        Ok(format!("v={}", B64.encode(server_sig)))
    }
}

/// Channel binding as the client side sees it (the gs2 header it sends).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientBinding {
    /// `n`: no TLS, or binding turned off.
    Unsupported,
    /// `y`: TLS, but the server offered no SCRAM-SHA-256-PLUS.
    Unrequested,
    /// `p=tls-server-end-point` with the server certificate's hash.
    EndPoint(Vec<u8>),
}

/// Highest PBKDF2 iteration count a password login accepts from a server.
/// (A key login does no PBKDF2.) PostgreSQL's default is 4096.
pub const MAX_ITERATIONS: u32 = 1_000_000;

/// The client side of one exchange that logs in with [`ScramKeys`] instead
/// of a password: the proof is `ClientKey XOR HMAC(H(ClientKey),
/// AuthMessage)`, the server's signature is checked with `ServerKey`.
#[derive(Debug)]
pub struct KeyClient {
    keys: ScramKeys,
    binding: ClientBinding,
    client_first_bare: String,
    server_signature: Option<[u8; 32]>,
}

impl KeyClient {
    /// Starts an exchange with `nonce` (printable, no commas).
    #[must_use]
    pub fn new(keys: ScramKeys, nonce: &str, binding: ClientBinding) -> Self {
        Self {
            keys,
            binding,
            client_first_bare: format!("n=,r={nonce}"),
            server_signature: None,
        }
    }

    fn gs2(&self) -> &'static str {
        match self.binding {
            ClientBinding::Unsupported => "n,,",
            ClientBinding::Unrequested => "y,,",
            ClientBinding::EndPoint(_) => "p=tls-server-end-point,,",
        }
    }

    /// The client-first message.
    #[must_use]
    pub fn first(&self) -> String {
        format!("{}{}", self.gs2(), self.client_first_bare)
    }

    /// Takes server-first, returns client-final.
    ///
    /// # Errors
    /// [`ScramError::Malformed`] when server-first is malformed or its
    /// nonce does not extend the client's.
    pub fn respond(&mut self, server_first: &[u8]) -> Result<String, ScramError> {
        let text =
            std::str::from_utf8(server_first).map_err(|_| ScramError::Malformed("not UTF-8"))?;
        let mut parts = text.split(',');
        let nonce = parts
            .next()
            .and_then(|p| p.strip_prefix("r="))
            .ok_or(ScramError::Malformed("server nonce"))?;
        let ours = self
            .client_first_bare
            .strip_prefix("n=,r=")
            .unwrap_or_default();
        if nonce.len() <= ours.len() || !nonce.starts_with(ours) {
            return Err(ScramError::Malformed("server nonce does not extend ours"));
        }
        let salt = parts.next().and_then(|p| p.strip_prefix("s="));
        let iterations = parts.next().and_then(|p| p.strip_prefix("i="));
        if salt.is_none_or(str::is_empty)
            || iterations.and_then(|i| i.parse::<u32>().ok()).is_none()
        {
            return Err(ScramError::Malformed("salt or iteration count"));
        }
        let mut cbind = self.gs2().as_bytes().to_vec();
        if let ClientBinding::EndPoint(data) = &self.binding {
            cbind.extend_from_slice(data);
        }
        let without_proof = format!("c={},r={nonce}", B64.encode(cbind));
        let auth_message = format!("{},{text},{without_proof}", self.client_first_bare);
        let stored_key: [u8; 32] = Sha256::digest(self.keys.client_key).into();
        let signature = hmac(&stored_key, auth_message.as_bytes());
        let proof: Vec<u8> = self
            .keys
            .client_key
            .iter()
            .zip(signature.iter())
            .map(|(k, s)| k ^ s)
            .collect();
        self.server_signature = Some(hmac(&self.keys.server_key, auth_message.as_bytes()));
        Ok(format!("{without_proof},p={}", B64.encode(proof)))
    }

    /// Checks server-final: the server proved it holds the verifier.
    ///
    /// # Errors
    /// [`ScramError::Malformed`] for an error or a wrong signature.
    pub fn verify(&self, server_final: &[u8]) -> Result<(), ScramError> {
        let text =
            std::str::from_utf8(server_final).map_err(|_| ScramError::Malformed("not UTF-8"))?;
        let got = text
            .split(',')
            .find_map(|p| p.strip_prefix("v="))
            .and_then(|v| B64.decode(v).ok())
            .ok_or(ScramError::Malformed("server signature"))?;
        match self.server_signature {
            Some(want) if got == want => Ok(()),
            _ => Err(ScramError::Malformed("server signature does not match")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use postgres_protocol::authentication::sasl::{ChannelBinding, ScramSha256};

    /// Runs postgres-protocol's client (what tokio-postgres uses) against our server.
    fn exchange(client_password: &str, verifier: &Verifier) -> Result<(), ScramError> {
        let mut client =
            ScramSha256::new(client_password.as_bytes(), ChannelBinding::unsupported());
        let mut server = Server::new(verifier, "SERVERNONCE".into());
        let first = server.client_first(client.message())?;
        client
            .update(first.as_bytes())
            .map_err(|_| ScramError::Malformed("client rejected server-first"))?;
        let fin = server.client_final(client.message())?;
        client
            .finish(fin.as_bytes())
            .map_err(|_| ScramError::Malformed("client rejected server signature"))?;
        Ok(())
    }

    #[test]
    fn keys_a_client_proved_log_in_to_a_server_with_the_same_verifier() {
        let v = Verifier::from_password("secret", b"0123456789abcdef", 4096);
        // A client logs in to pgvane with the password...
        let mut client = ScramSha256::new(b"secret", ChannelBinding::unsupported());
        let mut front = Server::new(&v, "FRONT".into());
        let first = front.client_first(client.message()).unwrap();
        client.update(first.as_bytes()).unwrap();
        assert!(front.keys().is_none(), "no keys before the proof");
        front.client_final(client.message()).unwrap();
        let keys = front.keys().expect("keys after a good proof");
        assert_eq!(format!("{keys:?}"), "ScramKeys(..)");
        // ...and pgvane logs in with its keys to a server holding the same
        // verifier, plain and bound to a certificate hash.
        for (binding, server_binding) in [
            (ClientBinding::Unsupported, Binding::Unavailable),
            (
                ClientBinding::EndPoint(b"hash".to_vec()),
                Binding::Selected(b"hash"),
            ),
        ] {
            let mut back = Server::with_binding(&v, "BACK".into(), server_binding);
            let mut kc = KeyClient::new(keys.clone(), "pgvane", binding);
            let first = back.client_first(kc.first().as_bytes()).unwrap();
            let fin = kc.respond(first.as_bytes()).unwrap();
            let sig = back.client_final(fin.as_bytes()).unwrap();
            kc.verify(sig.as_bytes()).unwrap();
            assert!(kc.verify(b"v=AAAA").is_err());
        }
        // Another verifier of the same password (other salt) refuses them.
        let other = Verifier::from_password("secret", b"fedcba9876543210", 4096);
        let mut back = Server::new(&other, "BACK".into());
        let mut kc = KeyClient::new(keys, "pgvane", ClientBinding::Unsupported);
        let first = back.client_first(kc.first().as_bytes()).unwrap();
        let fin = kc.respond(first.as_bytes()).unwrap();
        assert_eq!(
            back.client_final(fin.as_bytes()),
            Err(ScramError::WrongPassword)
        );
        // A server nonce that does not extend ours is refused.
        assert!(kc.respond(b"r=other,s=c2FsdA==,i=4096").is_err());
        assert!(kc.respond(b"r=pgvaneX,s=,i=4096").is_err());
    }

    #[test]
    fn round_trip_with_a_real_client() {
        let v = Verifier::from_password("secret", b"0123456789abcdef", 4096);
        assert_eq!(exchange("secret", &v), Ok(()));
        assert_eq!(exchange("wrong", &v), Err(ScramError::WrongPassword));
    }

    #[test]
    fn parses_postgresql_verifiers() {
        // Made by PostgreSQL 15: SET password_encryption = 'scram-sha-256';
        // CREATE ROLE x PASSWORD 'postgres'; SELECT rolpassword FROM pg_authid.
        let v = Verifier::from_password("postgres", b"saltsaltsaltsalt", 4096);
        let text = format!(
            "SCRAM-SHA-256${}:{}${}:{}",
            v.iterations,
            B64.encode(&v.salt),
            B64.encode(v.stored_key),
            B64.encode(v.server_key)
        );
        let parsed = Verifier::parse(&text).unwrap();
        assert_eq!(parsed, v);
        assert_eq!(exchange("postgres", &parsed), Ok(()));
        for bad in [
            "SCRAM-SHA-256$",
            "SCRAM-SHA-256$x:y$z:w",
            "SCRAM-SHA-256$4096:c2FsdA==$AAAA:BBBB",
        ] {
            assert!(Verifier::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn channel_binding_as_postgresql() {
        let v = Verifier::from_password("secret", b"0123456789abcdef", 4096);
        let end_point = [7u8; 32];
        let run = |client_binding: ChannelBinding, server: Binding<'_>| -> Result<(), ScramError> {
            let mut client = ScramSha256::new(b"secret", client_binding);
            let mut s = Server::with_binding(&v, "N0NCE".into(), server);
            let first = s.client_first(client.message())?;
            client
                .update(first.as_bytes())
                .map_err(|_| ScramError::Malformed("client"))?;
            let fin = s.client_final(client.message())?;
            client
                .finish(fin.as_bytes())
                .map_err(|_| ScramError::Malformed("client"))
        };
        // PLUS with the right certificate hash.
        let ok = run(
            ChannelBinding::tls_server_end_point(end_point.to_vec()),
            Binding::Selected(&end_point),
        );
        assert_eq!(ok, Ok(()));
        // A client bound to another certificate (a man in the middle).
        let other = run(
            ChannelBinding::tls_server_end_point(vec![8u8; 32]),
            Binding::Selected(&end_point),
        );
        assert!(matches!(other, Err(ScramError::Malformed(m)) if m.contains("mismatch")));
        // 'y' while the server offered PLUS: a downgrade, refused.
        let downgrade = run(ChannelBinding::unrequested(), Binding::Declined);
        assert!(matches!(downgrade, Err(ScramError::Malformed(m)) if m.contains("negotiation")));
        // 'n' (the client cannot bind) is fine over TLS and plaintext; 'y' over plaintext too.
        assert_eq!(
            run(ChannelBinding::unsupported(), Binding::Declined),
            Ok(())
        );
        assert_eq!(
            run(ChannelBinding::unrequested(), Binding::Unavailable),
            Ok(())
        );
        // PLUS selected but the client sends no binding.
        assert!(run(ChannelBinding::unsupported(), Binding::Selected(&end_point)).is_err());
        // A binding without TLS.
        assert!(
            run(
                ChannelBinding::tls_server_end_point(end_point.to_vec()),
                Binding::Unavailable
            )
            .is_err()
        );
    }

    #[test]
    fn malformed_messages_are_errors() {
        let v = Verifier::from_password("p", b"s", 16);
        let mut s = Server::new(&v, "N".into());
        assert!(s.client_first(b"p=tls-server-end-point,,n=,r=abc").is_err());
        assert!(s.client_first(b"\xff").is_err());
        assert!(s.client_first(b"n,a=admin,n=,r=abc").is_err());
        assert!(s.client_first(b"n,,n=,r=abc").is_ok());
        assert!(s.client_final(b"c=biws,r=wrong,p=AAAA").is_err());
        assert!(s.client_final(b"garbage").is_err());
    }
}
