//! Logging in to a node as a sans-IO state machine: who pgvane logs in as
//! ([`Credentials`]), and [`Login`], which takes each server message of the
//! startup phase and answers with the bytes to send and its next state
//! (authentication requests by name, `server_require_auth` and
//! `server_channel_binding` checked before any secret is used, SCRAM via
//! postgres-protocol or pass-through keys). No IO: `connect` feeds it.

use super::BackendError;
use crate::auth::scram::{ClientBinding, KeyClient, ScramKeys};
use crate::config::{ChannelBinding as Binding, ServerAuth};
use crate::protocol::encode;
use crate::protocol::message::{Backend as B, Message};
use crate::protocol::tag::auth;
use crate::tls::BackendSecurity;
use crate::topology::NodeAddr;
use postgres_protocol::authentication::sasl::{ChannelBinding, ScramSha256};

#[cfg(test)]
mod tests;

/// Who pgvane logs in as. Startup parameters are not part of it: they are
/// applied per session as [`super::Setting`]s, so one pool serves every
/// client of a (node, database, user).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Credentials {
    /// Role name.
    pub user: String,
    /// What pgvane proves itself with.
    pub secret: BackendSecret,
    /// Database.
    pub database: String,
}

/// What pgvane logs in to PostgreSQL with. Its `Debug` never shows it.
#[derive(Clone, PartialEq, Eq, Hash)]
pub enum BackendSecret {
    /// Nothing: the server must trust pgvane.
    None,
    /// A plaintext password: SCRAM-SHA-256, md5 or cleartext, as asked.
    Password(String),
    /// An `md5…` hash (md5 of password and user name): answers md5 requests.
    Md5Hash(String),
    /// The keys a client proved at its SCRAM login to pgvane (pass-through):
    /// answers SCRAM requests of a server that stores the same verifier.
    Scram(ScramKeys),
}

impl std::fmt::Debug for BackendSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::None => "None",
            Self::Password(_) => "Password(..)",
            Self::Md5Hash(_) => "Md5Hash(..)",
            Self::Scram(_) => "Scram(..)",
        })
    }
}

/// An authentication request (`R`) by name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Request<'d> {
    /// `AuthenticationOk`.
    Ok,
    /// `AuthenticationCleartextPassword`.
    Cleartext,
    /// `AuthenticationMD5Password` with its salt (unchecked).
    Md5(&'d [u8]),
    /// `AuthenticationSASL` with the NUL-separated mechanisms.
    Sasl(&'d [u8]),
    /// `AuthenticationSASLContinue` with SCRAM server-first.
    SaslContinue(&'d [u8]),
    /// `AuthenticationSASLFinal` with SCRAM server-final.
    SaslFinal(&'d [u8]),
    /// Anything else (Kerberos, GSS, SSPI, unknown codes).
    Unsupported(i32),
}

impl<'d> Request<'d> {
    fn of(code: i32, data: &'d [u8]) -> Self {
        match code {
            auth::OK => Self::Ok,
            auth::CLEARTEXT_PASSWORD => Self::Cleartext,
            auth::MD5_PASSWORD => Self::Md5(data),
            auth::SASL => Self::Sasl(data),
            auth::SASL_CONTINUE => Self::SaslContinue(data),
            auth::SASL_FINAL => Self::SaslFinal(data),
            other => Self::Unsupported(other),
        }
    }
}

/// The SCRAM client of one login: from a password or from pass-through keys.
enum ScramLogin {
    Password(ScramSha256),
    Keys(KeyClient),
}

impl ScramLogin {
    /// Takes server-first, returns client-final.
    fn respond(&mut self, server_first: &[u8]) -> Result<Vec<u8>, BackendError> {
        match self {
            Self::Password(s) => {
                s.update(server_first)
                    .map_err(|e| BackendError::Auth(format!("SCRAM: {e}")))?;
                Ok(s.message().to_vec())
            }
            Self::Keys(k) => k
                .respond(server_first)
                .map(String::into_bytes)
                .map_err(|e| BackendError::Auth(format!("SCRAM: {e}"))),
        }
    }

    /// Checks server-final: the server proved it knows the password.
    fn verify(self, server_final: &[u8]) -> Result<(), BackendError> {
        let signed = match self {
            Self::Password(mut s) => s.finish(server_final).map_err(|e| e.to_string()),
            Self::Keys(k) => k.verify(server_final).map_err(|e| e.to_string()),
        };
        signed.map_err(|e| BackendError::Auth(format!("SCRAM server signature: {e}")))
    }
}

/// Where a SCRAM exchange stands.
enum Sasl {
    /// SASLInitialResponse sent; SASLContinue (server-first) is next.
    Continue(ScramLogin),
    /// Client-final sent; SASLFinal (the server's signature) is next.
    Final(ScramLogin),
}

/// Where a login stands.
enum State {
    /// StartupMessage sent; the server has asked for nothing yet.
    AwaitAuth,
    /// pgvane answered a request (a password sent, or SCRAM with the
    /// server's signature checked); the server's verdict is next.
    Answered,
    /// A SCRAM exchange is under way.
    Sasl(Sasl),
    /// AuthenticationOk arrived: ParameterStatus, BackendKeyData and
    /// ReadyForQuery are next.
    AwaitReady,
}

/// What the login wants after a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Step {
    /// Send what was appended to the output (maybe nothing) and read on.
    Continue,
    /// ReadyForQuery arrived with this transaction status: logged in.
    Ready(u8),
}

/// One login to a node, sans IO: [`Login::start`] gives the
/// StartupMessage, [`Login::on_message`] takes each server message.
pub(super) struct Login<'a> {
    creds: &'a Credentials,
    security: &'a BackendSecurity,
    addr: &'a NodeAddr,
    /// `tls-server-end-point` data of the node's certificate, over TLS.
    end_point: Option<Vec<u8>>,
    state: State,
    /// SCRAM was bound to the TLS channel (SCRAM-SHA-256-PLUS).
    bound: bool,
    /// BackendKeyData (pid, secret key) for cancel requests.
    key: (u32, u32),
}

impl<'a> Login<'a> {
    /// A login as `creds` to `addr` under the port's `security`;
    /// `end_point` is the channel-binding data when the stream is TLS.
    pub(super) fn new(
        creds: &'a Credentials,
        security: &'a BackendSecurity,
        addr: &'a NodeAddr,
        end_point: Option<Vec<u8>>,
    ) -> Self {
        Self {
            creds,
            security,
            addr,
            end_point,
            state: State::AwaitAuth,
            bound: false,
            key: (0, 0),
        }
    }

    /// Appends the StartupMessage (user and database) to `out`.
    pub(super) fn start(&self, out: &mut Vec<u8>) {
        let params = [
            ("user", self.creds.user.as_str()),
            ("database", self.creds.database.as_str()),
        ];
        encode::startup(out, &params);
    }

    /// The BackendKeyData the server sent, `(0, 0)` before it did.
    pub(super) fn key(&self) -> (u32, u32) {
        self.key
    }

    /// Takes one server message; appends what to answer to `out`.
    /// ParameterStatus is left to the caller (the backend keeps every
    /// report, during login and after).
    ///
    /// # Errors
    /// The server's ErrorResponse ([`BackendError::Refused`]), a request
    /// the port or pgvane's secret cannot answer ([`BackendError::Auth`]),
    /// or a message out of order ([`BackendError::Protocol`]).
    pub(super) fn on_message(
        &mut self,
        m: &Message,
        out: &mut Vec<u8>,
    ) -> Result<Step, BackendError> {
        match B::parse(m).ok_or(BackendError::Protocol("malformed message during startup"))? {
            B::Auth(code, data) => {
                let state = std::mem::replace(&mut self.state, State::AwaitReady);
                self.state = self.on_request(state, Request::of(code, data), out)?;
                Ok(Step::Continue)
            }
            B::KeyData(pid, key) => {
                self.key = (pid, key);
                Ok(Step::Continue)
            }
            B::Ready(status) => match self.state {
                State::AwaitReady => Ok(Step::Ready(status)),
                _ => Err(BackendError::Protocol(
                    "ReadyForQuery before authentication ended",
                )),
            },
            B::Error => Err(BackendError::refused(m.clone())),
            B::ParameterStatus(..) | B::Other(_) => Ok(Step::Continue),
        }
    }

    /// The state after request `req` in `state`.
    fn on_request(
        &mut self,
        state: State,
        req: Request<'_>,
        out: &mut Vec<u8>,
    ) -> Result<State, BackendError> {
        match (state, req) {
            (_, Request::Unsupported(code)) => {
                Err(BackendError::Auth(format!("unsupported method {code}")))
            }
            (State::AwaitReady, _) => Err(BackendError::Protocol(
                "authentication request after AuthenticationOk",
            )),
            (State::Sasl(Sasl::Continue(mut scram)), Request::SaslContinue(data)) => {
                let msg = scram.respond(data)?;
                encode::password(out, &msg);
                Ok(State::Sasl(Sasl::Final(scram)))
            }
            (State::Sasl(Sasl::Final(scram)), Request::SaslFinal(data)) => {
                scram.verify(data)?;
                Ok(State::Answered)
            }
            (State::Sasl(_), Request::Ok) => Err(BackendError::Auth(format!(
                "{} ended SCRAM before proving it knows the password",
                self.addr
            ))),
            (State::Sasl(Sasl::Continue(_)), Request::SaslFinal(_)) => {
                Err(BackendError::Auth(format!(
                    "SCRAM server signature: {} sent it before SASLContinue",
                    self.addr
                )))
            }
            (State::Sasl(Sasl::Final(_)), Request::SaslContinue(_)) => Err(BackendError::Auth(
                format!("SCRAM: {} sent a second SASLContinue", self.addr),
            )),
            (State::Sasl(_), _) => Err(BackendError::Protocol(
                "another authentication request during SCRAM",
            )),
            (State::AwaitAuth | State::Answered, Request::SaslContinue(_)) => {
                Err(BackendError::Protocol("SASL continue without start"))
            }
            (State::AwaitAuth | State::Answered, Request::SaslFinal(_)) => {
                Err(BackendError::Protocol("SASL final without start"))
            }
            (state @ (State::AwaitAuth | State::Answered), Request::Ok) => {
                if matches!(state, State::AwaitAuth) {
                    self.require(ServerAuth::None)?;
                }
                if self.security.channel_binding == Binding::Require && !self.bound {
                    return Err(BackendError::Auth(format!(
                        "server_channel_binding is require, but {} logged pgvane in without SCRAM-SHA-256-PLUS",
                        self.addr
                    )));
                }
                Ok(State::AwaitReady)
            }
            (State::AwaitAuth | State::Answered, Request::Cleartext) => {
                self.require(ServerAuth::Password)?;
                self.needs_no_binding("a cleartext password")?;
                let BackendSecret::Password(pw) = &self.creds.secret else {
                    return Err(self.lacks("a cleartext password"));
                };
                let mut data = pw.as_bytes().to_vec();
                data.push(0);
                encode::password(out, &data);
                Ok(State::Answered)
            }
            (State::AwaitAuth | State::Answered, Request::Md5(salt)) => {
                self.require(ServerAuth::Md5)?;
                self.needs_no_binding("an md5 password")?;
                let salt: [u8; 4] = salt
                    .get(..4)
                    .and_then(|s| s.try_into().ok())
                    .ok_or(BackendError::Protocol("md5 salt"))?;
                let answer = match &self.creds.secret {
                    BackendSecret::Password(pw) => postgres_protocol::authentication::md5_hash(
                        self.creds.user.as_bytes(),
                        pw.as_bytes(),
                        salt,
                    ),
                    BackendSecret::Md5Hash(hash) => crate::auth::md5_expected(hash, salt),
                    _ => return Err(self.lacks("an md5 password")),
                };
                let mut data = answer.into_bytes();
                data.push(0);
                encode::password(out, &data);
                Ok(State::Answered)
            }
            (State::AwaitAuth | State::Answered, Request::Sasl(mechanisms)) => {
                self.require(ServerAuth::ScramSha256)?;
                let scram = self.start_scram(mechanisms, out)?;
                Ok(State::Sasl(Sasl::Continue(scram)))
            }
        }
    }

    /// Chooses the SCRAM mechanism from the server's offer and the port's
    /// channel-binding rule, and appends the SASLInitialResponse.
    fn start_scram(
        &mut self,
        mechanisms: &[u8],
        out: &mut Vec<u8>,
    ) -> Result<ScramLogin, BackendError> {
        let binding_rule = self.security.channel_binding;
        let offers = |name: &[u8]| mechanisms.split(|b| *b == 0).any(|m| m == name);
        let plus = self
            .end_point
            .as_ref()
            .filter(|_| binding_rule != Binding::Disable)
            .filter(|_| offers(b"SCRAM-SHA-256-PLUS"));
        let over_tls = self.end_point.is_some();
        let (mechanism, binding) = match plus {
            Some(hash) => (
                "SCRAM-SHA-256-PLUS",
                ChannelBinding::tls_server_end_point(hash.clone()),
            ),
            None if binding_rule == Binding::Require => {
                return Err(BackendError::Auth(format!(
                    "server_channel_binding is require, but {} offers no SCRAM-SHA-256-PLUS{}",
                    self.addr,
                    if over_tls { "" } else { " (no TLS)" }
                )));
            }
            None if !offers(b"SCRAM-SHA-256") => {
                return Err(BackendError::Auth(format!(
                    "{} offers no SCRAM-SHA-256",
                    self.addr
                )));
            }
            // Over TLS without -PLUS on offer: "y", so a server that does
            // support binding sees the downgrade.
            None if over_tls && binding_rule != Binding::Disable => {
                ("SCRAM-SHA-256", ChannelBinding::unrequested())
            }
            None => ("SCRAM-SHA-256", ChannelBinding::unsupported()),
        };
        let (scram, first) = match &self.creds.secret {
            BackendSecret::Password(pw) => {
                let s = ScramSha256::new(pw.as_bytes(), binding);
                let first = s.message().to_vec();
                (ScramLogin::Password(s), first)
            }
            BackendSecret::Scram(keys) => {
                let cb = match (plus, over_tls) {
                    (Some(hash), _) => ClientBinding::EndPoint(hash.clone()),
                    (None, true) if binding_rule != Binding::Disable => ClientBinding::Unrequested,
                    _ => ClientBinding::Unsupported,
                };
                let k = KeyClient::new(keys.clone(), &crate::auth::nonce(), cb);
                let first = k.first().into_bytes();
                (ScramLogin::Keys(k), first)
            }
            _ => return Err(self.lacks("SCRAM-SHA-256")),
        };
        self.bound = plus.is_some();
        encode::sasl_initial(out, mechanism, &first);
        Ok(scram)
    }

    /// With `server_channel_binding: require`, a password request is
    /// refused before the password (or its md5 answer) is sent, as libpq
    /// does: only SCRAM-SHA-256-PLUS binds the login to the TLS channel.
    fn needs_no_binding(&self, what: &str) -> Result<(), BackendError> {
        if self.security.channel_binding != Binding::Require {
            return Ok(());
        }
        Err(BackendError::Auth(format!(
            "server_channel_binding is require, but {} asked for {what}, which cannot bind the channel (only SCRAM-SHA-256-PLUS does)",
            self.addr
        )))
    }

    /// Nothing when the port allows the server to ask for `method`, else
    /// the refusal (before any secret is used).
    fn require(&self, method: ServerAuth) -> Result<(), BackendError> {
        if self.security.allows(method) {
            return Ok(());
        }
        let what = match method {
            ServerAuth::Password => "a cleartext password",
            ServerAuth::Md5 => "an md5 password",
            ServerAuth::ScramSha256 => "SCRAM-SHA-256",
            ServerAuth::None => "no authentication",
        };
        let allowed: Vec<&str> = self
            .security
            .require_auth
            .iter()
            .map(|m| m.name())
            .collect();
        Err(BackendError::Auth(format!(
            "{} asked for {what}, which server_require_auth [{}] does not allow",
            self.addr,
            allowed.join(", ")
        )))
    }

    /// The refusal when the server asks for `what` and pgvane's secret for
    /// the user cannot answer it.
    fn lacks(&self, what: &str) -> BackendError {
        let held = match self.creds.secret {
            BackendSecret::None => "no password",
            BackendSecret::Password(_) => "a password",
            BackendSecret::Md5Hash(_) => "only an md5 hash",
            BackendSecret::Scram(_) => "only SCRAM keys",
        };
        BackendError::Auth(format!(
            "{} asks for {what}, and pgvane holds {held} for user {} (set backend_password)",
            self.addr, self.creds.user
        ))
    }
}
