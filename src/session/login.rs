//! A split-port client's login: direct TLS or SSLRequest, the startup
//! packet (or a CancelRequest), the port's access rules, authentication
//! against the cluster's users, and the credentials and startup settings
//! the session runs with. Every refusal is an ErrorResponse with
//! PostgreSQL's SQLSTATE and words, counted and logged.

use super::SessionContext;
use super::handshake::{self, Handshake, HandshakeError, Login, TlsOffer};
use super::settings;
use super::stream::ClientStream;
use crate::auth::scram::ScramKeys;
use crate::backend::{BackendSecret, Credentials};
use crate::config::{AccessClient, ClientTlsMode, UserConfig};
use crate::protocol::sqlstate;
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::io::AsyncWriteExt;

/// The startup parameters pgvane applies as settings, or why it cannot.
fn startup_settings(params: &[(String, String)]) -> Result<Vec<(String, String)>, String> {
    let mut out = Vec::new();
    for (k, v) in params {
        match k.as_str() {
            "user" | "database" => {}
            "replication" => {
                if !matches!(v.as_str(), "false" | "off" | "no" | "0") {
                    return Err("pgvane does not relay replication connections".into());
                }
            }
            "options" => out.extend(settings::parse_options(v)?),
            _ => out.push((k.clone(), v.clone())),
        }
    }
    Ok(out)
}

/// The startup packet and authentication: the backend credentials and the
/// startup settings of a logged-in client, or `None` (refused or gone).
pub(super) async fn login(
    client: &mut ClientStream,
    ctx: &Arc<SessionContext>,
    admitted: Result<(), String>,
    peer: SocketAddr,
) -> Option<(Credentials, Vec<(String, String)>)> {
    let tls = ctx.tls.load_full();
    let acceptor = tls.as_ref().and_then(|t| t.acceptor.as_ref());
    // PostgreSQL 17's direct TLS (`sslnegotiation=direct`): a ClientHello
    // first, and ALPN `postgresql` required.
    if let (Some(acceptor), ClientStream::Plain(tcp)) = (acceptor, &*client) {
        let mut first = [0u8; 1];
        if matches!(tcp.peek(&mut first).await, Ok(1)) && first[0] == 0x16 {
            if let Err(e) = client.start_tls(acceptor).await {
                tracing::info!(port = %ctx.key, error = %e, "TLS handshake failed");
                return None;
            }
            if client.alpn() != Some(crate::tls::server::ALPN_POSTGRESQL) {
                let text = "received direct SSL connection request without ALPN protocol negotiation extension";
                return refused(client, ctx, sqlstate::PROTOCOL_VIOLATION, text.into()).await;
            }
        }
    }
    let mut offer = match (client.is_tls(), acceptor.is_some()) {
        (true, _) => TlsOffer::Active,
        (false, true) => TlsOffer::Offer,
        (false, false) => TlsOffer::Refuse,
    };
    let params = loop {
        match handshake::handshake(client, offer).await {
            Ok(Handshake::Cancel(pid, key)) => {
                let globals = ctx.globals.load_full();
                let peers = super::cancel::Peers {
                    own: globals.peer_id,
                    hosts: &globals.peers,
                };
                let port = ctx.port.load().listen.port();
                let sent = ctx.cancels.cancel((pid, key), &peers, port).await;
                tracing::debug!(port = %ctx.key, ?sent, "cancel request");
                return None;
            }
            Ok(Handshake::Session(p)) => break p,
            Ok(Handshake::StartTls) => {
                let acceptor = acceptor?;
                client.write_all(b"S").await.ok()?;
                if let Err(e) = client.start_tls(acceptor).await {
                    tracing::info!(port = %ctx.key, error = %e, "TLS handshake failed");
                    return None;
                }
                offer = TlsOffer::Active;
            }
            Err(e) => {
                count_refusal(ctx, &e);
                return None;
            }
        }
    };
    if let Err(text) = admitted {
        return refused(client, ctx, sqlstate::TOO_MANY_CONNECTIONS, text).await;
    }
    let get = |k: &str| params.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
    let Some(user) = get("user") else {
        return refused(
            client,
            ctx,
            sqlstate::INVALID_PASSWORD,
            "no PostgreSQL user name specified in startup packet".into(),
        )
        .await;
    };
    let database = get("database").unwrap_or_else(|| user.clone());
    let require_tls = tls
        .as_ref()
        .is_some_and(|t| t.mode == ClientTlsMode::Require);
    let who = AccessClient {
        ip: peer.ip(),
        user: Some(&user),
        database: Some(&database),
        tls: client.is_tls(),
    };
    if (require_tls && !client.is_tls()) || !ctx.port.load().admits(&who) {
        // What pg_hba.conf answers when no line matches.
        let encryption = if client.is_tls() {
            "SSL encryption"
        } else {
            "no encryption"
        };
        let text = format!(
            "no pg_hba.conf entry for host \"{}\", user \"{user}\", database \"{database}\", {encryption}",
            peer.ip()
        );
        let code = sqlstate::INVALID_AUTHORIZATION_SPECIFICATION;
        return refused(client, ctx, code, text).await;
    }
    let globals = ctx.globals.load_full();
    let users = globals
        .clusters
        .get(&ctx.key.cluster)
        .map_or(&[][..], |c| c.users.as_slice());
    let entry = users.iter().find(|u| u.name == user).cloned();
    let secret = entry.as_ref().and_then(|u| ctx.secret(&u.password));
    // An unknown user is asked what most users would be: md5 only when
    // every configured user is md5, SCRAM otherwise.
    let mock;
    let login = match &secret {
        Some(s) => Login::Known(s),
        None => {
            let all_md5 =
                !users.is_empty() && users.iter().all(|u| crate::auth::is_md5_hash(&u.password));
            mock = crate::auth::mock_secret(&user, all_md5);
            Login::Unknown(&mock)
        }
    };
    let binding = client
        .is_tls()
        .then(|| tls.as_ref().map(|t| t.end_point.as_slice()))
        .flatten();
    let proved = match handshake::authenticate(client, &user, login, binding).await {
        Ok(keys) => keys,
        Err(e) => {
            count_refusal(ctx, &e);
            return None;
        }
    };
    let entry = entry?;
    let startup = match startup_settings(&params) {
        Ok(s) => s,
        Err(text) => {
            return refused(client, ctx, sqlstate::FEATURE_NOT_SUPPORTED, text).await;
        }
    };
    Some((
        Credentials {
            user,
            secret: backend_secret(&entry, proved),
            database,
        },
        startup,
    ))
}

/// What pgvane logs in to PostgreSQL with for `entry`: its
/// `backend_password`, else its password when plaintext, else what the
/// stored form allows without one: the keys the client proved against a
/// SCRAM verifier (pass-through), or the md5 hash itself.
fn backend_secret(entry: &UserConfig, proved: Option<ScramKeys>) -> BackendSecret {
    if let Some(pw) = &entry.backend_password {
        return BackendSecret::Password(pw.clone());
    }
    if crate::auth::is_md5_hash(&entry.password) {
        return BackendSecret::Md5Hash(entry.password.clone());
    }
    if entry.password.starts_with("SCRAM-SHA-256$") {
        return proved.map_or(BackendSecret::None, BackendSecret::Scram);
    }
    BackendSecret::Password(entry.password.clone())
}

/// Refuses a client that is logging in, counts and logs it; `None` for
/// `login` to return.
async fn refused<T>(
    client: &mut ClientStream,
    ctx: &SessionContext,
    code: sqlstate::SqlState,
    text: String,
) -> Option<T> {
    let e = handshake::refuse(client, code, text).await;
    count_refusal(ctx, &e);
    None
}

pub(super) fn count_refusal(ctx: &SessionContext, e: &HandshakeError) {
    if let HandshakeError::Refused(code, text) = e {
        tracing::info!(port = %ctx.key, sqlstate = code.code(), "{text}");
        ctx.metrics
            .client_errors
            .with_label_values(&[&ctx.key.cluster, &ctx.key.port, code.code()])
            .inc();
    }
}
