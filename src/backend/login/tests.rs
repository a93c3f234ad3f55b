//! Transitions of [`Login`], socket-free: server messages in, the bytes
//! pgvane answers and the step out, against pgvane's own SCRAM server.

use super::*;
use crate::auth::scram::{Binding as ScramBinding, Server, Verifier};
use crate::protocol::message;
use crate::protocol::sqlstate::INVALID_PASSWORD;
use crate::protocol::tag::{frontend as ft, status};
use bytes::{Bytes, BytesMut};

const PASSWORD: &str = "s3cret";

fn addr() -> NodeAddr {
    NodeAddr {
        host: "127.0.0.1".into(),
        port: 5432,
    }
}

fn creds(secret: BackendSecret) -> Credentials {
    Credentials {
        user: "app".into(),
        secret,
        database: "db".into(),
    }
}

fn password() -> Credentials {
    creds(BackendSecret::Password(PASSWORD.into()))
}

fn security(require_auth: &[ServerAuth], channel_binding: Binding) -> BackendSecurity {
    BackendSecurity {
        require_auth: require_auth.to_vec(),
        channel_binding,
        ..BackendSecurity::default()
    }
}

fn any() -> BackendSecurity {
    security(&[], Binding::Prefer)
}

fn msg(build: impl FnOnce(&mut Vec<u8>)) -> Message {
    let mut v = Vec::new();
    build(&mut v);
    Message::from_raw(Bytes::from(v))
}

fn request(code: i32, data: &[u8]) -> Message {
    msg(|b| encode::auth(b, code, data))
}

fn ready() -> Message {
    msg(|b| encode::ready_for_query(b, status::IDLE))
}

/// Feeds `m`; returns the step and the messages pgvane answered with.
fn feed(login: &mut Login<'_>, m: &Message) -> Result<(Step, Vec<Message>), BackendError> {
    let mut out = Vec::new();
    let step = login.on_message(m, &mut out)?;
    let mut buf = BytesMut::from(&out[..]);
    let mut sent = Vec::new();
    while let Some(m) = message::try_cut(&mut buf).unwrap() {
        sent.push(m);
    }
    assert!(buf.is_empty(), "whole messages only");
    Ok((step, sent))
}

/// Feeds `m` and expects nothing sent and the login to go on.
fn quiet(login: &mut Login<'_>, m: &Message) {
    assert_eq!(feed(login, m).unwrap(), (Step::Continue, vec![]));
}

fn auth_error(r: Result<(Step, Vec<Message>), BackendError>) -> String {
    match r {
        Err(BackendError::Auth(text)) => text,
        other => panic!("expected an authentication refusal, got {other:?}"),
    }
}

fn protocol_error(r: Result<(Step, Vec<Message>), BackendError>) -> &'static str {
    match r {
        Err(BackendError::Protocol(text)) => text,
        other => panic!("expected a protocol error, got {other:?}"),
    }
}

/// The SASLInitialResponse's mechanism and client-first.
fn initial(m: &Message) -> (String, Vec<u8>) {
    assert_eq!(m.tag(), ft::PASSWORD);
    let body = m.body();
    let mut pos = 0;
    let mechanism = message::cstr(body, &mut pos).unwrap().to_owned();
    let len = i32::from_be_bytes(body[pos..pos + 4].try_into().unwrap());
    let data = body[pos + 4..].to_vec();
    assert_eq!(usize::try_from(len).unwrap(), data.len());
    (mechanism, data)
}

/// Runs a whole SCRAM exchange against `server` up to AuthenticationOk;
/// returns the mechanism pgvane chose.
fn scram(login: &mut Login<'_>, server: &mut Server<'_>, offer: &[u8]) -> String {
    let (step, sent) = feed(login, &request(auth::SASL, offer)).unwrap();
    assert_eq!((step, sent.len()), (Step::Continue, 1));
    let (mechanism, first) = initial(&sent[0]);
    let server_first = server.client_first(&first).unwrap();
    let (_, sent) = feed(
        login,
        &request(auth::SASL_CONTINUE, server_first.as_bytes()),
    )
    .unwrap();
    assert_eq!(sent.len(), 1);
    assert_eq!(sent[0].tag(), ft::PASSWORD);
    let server_final = server.client_final(sent[0].body()).unwrap();
    quiet(login, &request(auth::SASL_FINAL, server_final.as_bytes()));
    quiet(login, &request(auth::OK, b""));
    mechanism
}

#[test]
fn the_startup_message_names_user_and_database() {
    let (c, s, a) = (password(), any(), addr());
    let login = Login::new(&c, &s, &a, None);
    let mut out = Vec::new();
    login.start(&mut out);
    assert_eq!(&out[4..8], &crate::protocol::PROTOCOL_3_0.to_be_bytes());
    assert_eq!(&out[8..], b"user\0app\0database\0db\0\0");
}

#[test]
fn trust_then_key_and_parameters_then_ready() {
    let (c, s, a) = (creds(BackendSecret::None), any(), addr());
    let mut login = Login::new(&c, &s, &a, None);
    quiet(&mut login, &request(auth::OK, b""));
    quiet(
        &mut login,
        &msg(|b| encode::parameter_status(b, "TimeZone", "UTC")),
    );
    quiet(&mut login, &msg(|b| encode::backend_key_data(b, 7, 9)));
    let (step, sent) = feed(&mut login, &msg(|b| encode::ready_for_query(b, b'T'))).unwrap();
    assert_eq!((step, sent), (Step::Ready(b'T'), vec![]));
    assert_eq!(login.key(), (7, 9));
}

#[test]
fn cleartext_sends_the_password_once_asked() {
    let (c, s, a) = (password(), any(), addr());
    let mut login = Login::new(&c, &s, &a, None);
    let (_, sent) = feed(&mut login, &request(auth::CLEARTEXT_PASSWORD, b"")).unwrap();
    assert_eq!(sent.len(), 1);
    assert_eq!(sent[0].tag(), ft::PASSWORD);
    assert_eq!(sent[0].body(), b"s3cret\0");
    quiet(&mut login, &request(auth::OK, b""));
    assert_eq!(
        feed(&mut login, &ready()).unwrap().0,
        Step::Ready(status::IDLE)
    );
}

#[test]
fn md5_answers_from_a_password_or_a_stored_hash() {
    let salt = [1, 2, 3, 4];
    let want = postgres_protocol::authentication::md5_hash(b"app", PASSWORD.as_bytes(), salt);
    let stored = crate::auth::md5_stored("app", PASSWORD);
    for secret in [
        BackendSecret::Password(PASSWORD.into()),
        BackendSecret::Md5Hash(stored),
    ] {
        let (c, s, a) = (creds(secret), any(), addr());
        let mut login = Login::new(&c, &s, &a, None);
        let (_, sent) = feed(&mut login, &request(auth::MD5_PASSWORD, &salt)).unwrap();
        assert_eq!(sent[0].body(), format!("{want}\0").as_bytes());
    }
    let (c, s, a) = (password(), any(), addr());
    let mut login = Login::new(&c, &s, &a, None);
    assert_eq!(
        protocol_error(feed(&mut login, &request(auth::MD5_PASSWORD, &[1, 2]))),
        "md5 salt"
    );
}

#[test]
fn scram_with_a_password_and_with_pass_through_keys() {
    let verifier = Verifier::from_password(PASSWORD, b"salty", 4096);
    let (c, s, a) = (password(), any(), addr());
    let mut login = Login::new(&c, &s, &a, None);
    let mut server = Server::new(&verifier, "servernonce".into());
    assert_eq!(
        scram(&mut login, &mut server, b"SCRAM-SHA-256\0\0"),
        "SCRAM-SHA-256"
    );
    assert_eq!(
        feed(&mut login, &ready()).unwrap().0,
        Step::Ready(status::IDLE)
    );

    let keys = server.keys().unwrap();
    let c = creds(BackendSecret::Scram(keys));
    let mut login = Login::new(&c, &s, &a, None);
    let mut server = Server::new(&verifier, "othernonce".into());
    scram(&mut login, &mut server, b"SCRAM-SHA-256\0\0");
    assert_eq!(
        feed(&mut login, &ready()).unwrap().0,
        Step::Ready(status::IDLE)
    );
}

#[test]
fn channel_binding_is_used_over_tls_and_required_when_asked() {
    let verifier = Verifier::from_password(PASSWORD, b"salty", 4096);
    let hash = vec![7u8; 32];
    let (c, s, a) = (password(), security(&[], Binding::Require), addr());
    let mut login = Login::new(&c, &s, &a, Some(hash.clone()));
    let mut server = Server::with_binding(&verifier, "n".into(), ScramBinding::Selected(&hash));
    let offer = b"SCRAM-SHA-256-PLUS\0SCRAM-SHA-256\0\0";
    assert_eq!(scram(&mut login, &mut server, offer), "SCRAM-SHA-256-PLUS");
    assert_eq!(
        feed(&mut login, &ready()).unwrap().0,
        Step::Ready(status::IDLE)
    );

    // Without TLS there is nothing to bind to.
    let mut login = Login::new(&c, &s, &a, None);
    let text = auth_error(feed(&mut login, &request(auth::SASL, offer)));
    assert!(
        text.contains("offers no SCRAM-SHA-256-PLUS (no TLS)"),
        "{text}"
    );
    // A password request is refused before the password or its md5
    // answer leaves pgvane, as libpq does.
    for (code, what) in [
        (auth::MD5_PASSWORD, "an md5 password"),
        (auth::CLEARTEXT_PASSWORD, "a cleartext password"),
    ] {
        let mut login = Login::new(&c, &s, &a, Some(hash.clone()));
        let mut out = Vec::new();
        let r = login.on_message(&request(code, &[1, 2, 3, 4]), &mut out);
        let text = auth_error(r.map(|step| (step, vec![])));
        assert!(
            text.contains(&format!("asked for {what}, which cannot bind the channel")),
            "{text}"
        );
        assert!(out.is_empty(), "{what}: nothing may be sent");
    }
    // Trust (AuthenticationOk at once) is refused too.
    let mut login = Login::new(&c, &s, &a, Some(hash));
    let text = auth_error(feed(&mut login, &request(auth::OK, b"")));
    assert!(text.contains("without SCRAM-SHA-256-PLUS"), "{text}");
}

#[test]
fn disallowed_requests_are_refused_before_any_secret_is_sent() {
    let (c, s, a) = (
        password(),
        security(&[ServerAuth::ScramSha256], Binding::Prefer),
        addr(),
    );
    for (code, what) in [
        (auth::CLEARTEXT_PASSWORD, "a cleartext password"),
        (auth::MD5_PASSWORD, "an md5 password"),
        (auth::OK, "no authentication"),
    ] {
        let mut login = Login::new(&c, &s, &a, None);
        let mut out = Vec::new();
        let r = login.on_message(&request(code, &[0, 0, 0, 0]), &mut out);
        let text = auth_error(r.map(|step| (step, vec![])));
        assert!(
            text.contains(&format!(
                "asked for {what}, which server_require_auth [scram-sha-256] does not allow"
            )),
            "{text}"
        );
        assert!(out.is_empty(), "{what}: nothing may be sent");
    }
}

#[test]
fn a_secret_that_cannot_answer_is_named() {
    let (c, s, a) = (creds(BackendSecret::None), any(), addr());
    let mut login = Login::new(&c, &s, &a, None);
    let text = auth_error(feed(&mut login, &request(auth::CLEARTEXT_PASSWORD, b"")));
    assert!(
        text.contains("pgvane holds no password for user app"),
        "{text}"
    );
    let c = creds(BackendSecret::Md5Hash("md5abc".into()));
    let mut login = Login::new(&c, &s, &a, None);
    let text = auth_error(feed(&mut login, &request(auth::SASL, b"SCRAM-SHA-256\0\0")));
    assert!(text.contains("only an md5 hash"), "{text}");
}

#[test]
fn scram_cut_short_by_the_server_is_refused() {
    let (c, s, a) = (password(), any(), addr());
    // AuthenticationOk right after the client's first message.
    let mut login = Login::new(&c, &s, &a, None);
    feed(&mut login, &request(auth::SASL, b"SCRAM-SHA-256\0\0")).unwrap();
    let text = auth_error(feed(&mut login, &request(auth::OK, b"")));
    assert!(text.contains("ended SCRAM before proving"), "{text}");
    // SASLFinal without SASLContinue.
    let mut login = Login::new(&c, &s, &a, None);
    feed(&mut login, &request(auth::SASL, b"SCRAM-SHA-256\0\0")).unwrap();
    let text = auth_error(feed(&mut login, &request(auth::SASL_FINAL, b"v=AAAA")));
    assert!(text.starts_with("SCRAM server signature"), "{text}");
    // ReadyForQuery in the middle of SCRAM.
    let mut login = Login::new(&c, &s, &a, None);
    feed(&mut login, &request(auth::SASL, b"SCRAM-SHA-256\0\0")).unwrap();
    assert_eq!(
        protocol_error(feed(&mut login, &ready())),
        "ReadyForQuery before authentication ended"
    );
    // A cleartext request in the middle of SCRAM gets no password.
    let mut login = Login::new(&c, &s, &a, None);
    feed(&mut login, &request(auth::SASL, b"SCRAM-SHA-256\0\0")).unwrap();
    protocol_error(feed(&mut login, &request(auth::CLEARTEXT_PASSWORD, b"")));
}

#[test]
fn messages_out_of_order_are_protocol_errors() {
    let (c, s, a) = (password(), any(), addr());
    let mut login = Login::new(&c, &s, &a, None);
    assert_eq!(
        protocol_error(feed(&mut login, &request(auth::SASL_CONTINUE, b"r=x"))),
        "SASL continue without start"
    );
    let mut login = Login::new(&c, &s, &a, None);
    assert_eq!(
        protocol_error(feed(&mut login, &request(auth::SASL_FINAL, b"v=x"))),
        "SASL final without start"
    );
    let mut login = Login::new(&c, &s, &a, None);
    assert_eq!(
        protocol_error(feed(&mut login, &ready())),
        "ReadyForQuery before authentication ended"
    );
    let mut login = Login::new(&c, &s, &a, None);
    quiet(&mut login, &request(auth::OK, b""));
    assert_eq!(
        protocol_error(feed(&mut login, &request(auth::CLEARTEXT_PASSWORD, b""))),
        "authentication request after AuthenticationOk"
    );
    let mut login = Login::new(&c, &s, &a, None);
    assert_eq!(
        protocol_error(feed(&mut login, &msg(|b| encode::frame(b, b'R', |_| {})))),
        "malformed message during startup"
    );
}

#[test]
fn unsupported_methods_and_server_errors_end_the_login() {
    let (c, s, a) = (password(), any(), addr());
    let mut login = Login::new(&c, &s, &a, None);
    assert_eq!(
        auth_error(feed(&mut login, &request(auth::GSS, b""))),
        "unsupported method 7"
    );
    let mut login = Login::new(&c, &s, &a, None);
    let refusal = msg(|b| {
        encode::error_response(
            b,
            encode::Severity::Fatal,
            INVALID_PASSWORD,
            "password authentication failed",
        );
    });
    match feed(&mut login, &refusal) {
        Err(BackendError::Refused { code, message, raw }) => {
            assert_eq!(code, "28P01");
            assert_eq!(message, "password authentication failed");
            assert_eq!(raw, refusal);
        }
        other => panic!("{other:?}"),
    }
}
