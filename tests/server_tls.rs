//! TLS and login rules between a split port and PostgreSQL. Against the
//! real lab with its nodes' `ssl` on: `server_tls.mode: verify-full` with
//! the lab's CA, `server_require_auth: [scram-sha-256]` and
//! `server_channel_binding: require` log in (so PostgreSQL accepted
//! pgvane's SCRAM-SHA-256-PLUS binding to the node's certificate) and
//! `pg_stat_ssl` shows the backend encrypted; `prefer` (the default)
//! encrypts too, `disable` does not; a CA the test made is refused with the
//! certificate error; `server_require_auth: [md5]` refuses the nodes'
//! SCRAM. With `ssl` off: `prefer` goes on in plaintext, `require` and
//! `verify-full` are refused. Against a rogue server (a fake Patroni points
//! the leader at it): a server asking for the password in clear, trust, or
//! ending SCRAM early never gets the password when `server_require_auth`
//! says SCRAM, while without the rule the clear request does get it (the
//! check the test relies on can fail); a server answering the SSLRequest
//! with an ErrorResponse has its error passed to the client.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::disallowed_methods)]

mod common;
use common::*;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const BACKEND_SSL: &str = "select ssl::text from pg_stat_ssl where pid = pg_backend_pid()";

/// A CA certificate nobody signed the nodes with.
fn stranger_ca() -> String {
    let key = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let ca = params.self_signed(&key).unwrap();
    let path = temp_path("stranger-ca.pem");
    std::fs::write(&path, ca.pem()).unwrap();
    path.to_string_lossy().into_owned()
}

/// The lab config with split ports, each `name: {extra}` on its own port.
fn config(p: &Ports, ports: &[(&str, u16, String)]) -> String {
    let mut split = String::new();
    for (name, port, extra) in ports {
        split.push_str(&format!(
            "      {name}: {{listen: 127.0.0.1:{port}, mode: split, roles: [sync, async], pool_size: 2{extra}}}\n"
        ));
    }
    lab_config(p).replace(
        "    ports:\n",
        &format!("    users:\n      - {{name: postgres, password: postgres}}\n    ports:\n{split}"),
    )
}

/// What a split port's backend says about its own TLS, or the error.
async fn backend_ssl(port: u16) -> Result<String, (String, String)> {
    let db_error = |e: tokio_postgres::Error| {
        e.as_db_error()
            .map(|d| (d.code().code().to_owned(), d.message().to_owned()))
            .unwrap_or_else(|| (String::new(), e.to_string()))
    };
    let c = connect(port).await.map_err(db_error)?;
    let rows = tokio::time::timeout(Duration::from_secs(20), c.client.simple_query(BACKEND_SSL))
        .await
        .expect("query hung");
    match rows {
        Ok(rows) => Ok(rows
            .iter()
            .find_map(|m| match m {
                tokio_postgres::SimpleQueryMessage::Row(r) => r.get(0).map(str::to_owned),
                _ => None,
            })
            .unwrap_or_default()),
        Err(e) => Err(db_error(e)),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn backends_use_tls_as_configured() {
    healthy_lab();
    let _off = SslOff;
    let ca = lab(&["ssl", "ca"]);
    let stranger = stranger_ca();
    let p = Ports::new();
    let (full, prefer, plain, wrong_ca, md5_only, require) = (
        free_port(),
        free_port(),
        free_port(),
        free_port(),
        free_port(),
        free_port(),
    );
    let ports = [
        (
            "full",
            full,
            format!(
                ", server_tls: {{mode: verify-full, ca_file: {ca}}}, server_require_auth: [scram-sha-256], server_channel_binding: require"
            ),
        ),
        ("prefer", prefer, String::new()),
        ("plain", plain, ", server_tls: {mode: disable}".to_owned()),
        (
            "wrongca",
            wrong_ca,
            format!(", server_tls: {{mode: verify-ca, ca_file: {stranger}}}"),
        ),
        (
            "md5only",
            md5_only,
            ", server_require_auth: [md5]".to_owned(),
        ),
        (
            "require",
            require,
            ", server_tls: {mode: require}".to_owned(),
        ),
    ];
    let yaml = config(&p, &ports);

    lab(&["ssl", "on"]);
    let pg = Pgvane::start(&yaml, p.admin);
    let got = backend_ssl(full).await;
    assert_eq!(got, Ok("true".into()), "{got:?} {}", pg.log_text());
    assert_eq!(backend_ssl(prefer).await, Ok("true".into()));
    assert_eq!(backend_ssl(require).await, Ok("true".into()));
    assert_eq!(backend_ssl(plain).await, Ok("false".into()));
    let (code, text) = backend_ssl(wrong_ca).await.unwrap_err();
    assert!(
        code == "08006" && text.contains("TLS: handshake with") && text.contains("UnknownIssuer"),
        "{code} {text}"
    );
    // One port's refusals leave the nodes healthy for the others.
    assert_eq!(backend_ssl(prefer).await, Ok("true".into()));
    let (code, text) = backend_ssl(md5_only).await.unwrap_err();
    assert!(
        code == "08006"
            && text.contains(
                "asked for SCRAM-SHA-256, which server_require_auth [md5] does not allow"
            ),
        "{code} {text}"
    );
    drop(pg);

    // Nodes without TLS (a new process: no backend opened before is reused).
    lab(&["ssl", "off"]);
    let pg = Pgvane::start(&yaml, p.admin);
    assert_eq!(
        backend_ssl(prefer).await,
        Ok("false".into()),
        "{}",
        pg.log_text()
    );
    assert_eq!(backend_ssl(plain).await, Ok("false".into()));
    for (port, mode) in [(full, "verify-full"), (require, "require")] {
        let (code, text) = backend_ssl(port).await.unwrap_err();
        let want = format!("does not support SSL, but server_tls.mode is {mode}");
        assert!(code == "08006" && text.contains(&want), "{code} {text}");
    }
    drop(pg);
}

/// What a rogue server does after the startup packet.
#[derive(Clone, Copy, Debug)]
enum Rogue {
    /// AuthenticationCleartextPassword.
    Cleartext,
    /// AuthenticationOk at once (trust).
    Trust,
    /// SCRAM-SHA-256 offered, then AuthenticationOk right after the
    /// client's first message, without proving it knows the password.
    ScramSkipped,
    /// An ErrorResponse instead of `S`/`N` to the SSLRequest, as a server
    /// out of connection slots can answer.
    FullAtSsl,
}

fn auth(code: i32, data: &[u8]) -> Vec<u8> {
    let mut m = vec![b'R'];
    m.extend_from_slice(&(8 + data.len() as i32).to_be_bytes());
    m.extend_from_slice(&code.to_be_bytes());
    m.extend_from_slice(data);
    m
}

/// A server at 127.0.0.1 (a replica to the fake Patroni, so no leader
/// check applies) that answers SSLRequest with `N`, behaves as
/// `how`, then records everything sent to it; returns (port, bytes seen).
async fn rogue_server(how: Rogue) -> (u16, Arc<Mutex<Vec<u8>>>) {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = l.local_addr().unwrap().port();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let record = Arc::clone(&seen);
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            let record = Arc::clone(&record);
            tokio::spawn(async move {
                if matches!(how, Rogue::FullAtSsl) {
                    let mut ssl = [0u8; 8];
                    let _ = s.read_exact(&mut ssl).await;
                    let text = b"SFATAL\0C53300\0Msorry, too many clients already\0\0";
                    let mut out = vec![b'E'];
                    out.extend_from_slice(&(4 + text.len() as u32).to_be_bytes());
                    out.extend_from_slice(text);
                    let _ = s.write_all(&out).await;
                    return;
                }
                if read_startup(&mut s).await.is_none() {
                    return;
                }
                let mut out = match how {
                    Rogue::Cleartext => auth(3, b""),
                    Rogue::Trust => auth(0, b""),
                    Rogue::ScramSkipped | Rogue::FullAtSsl => auth(10, b"SCRAM-SHA-256\0\0"),
                };
                let _ = s.write_all(&out).await;
                if matches!(how, Rogue::ScramSkipped) {
                    let mut first = [0u8; 512];
                    let n = s.read(&mut first).await.unwrap_or(0);
                    record.lock().unwrap().extend_from_slice(&first[..n]);
                    out = auth(0, b"");
                    let _ = s.write_all(&out).await;
                }
                // Anything the client sends from now on is what it gave away.
                let mut buf = [0u8; 4096];
                while let Ok(Ok(n)) =
                    tokio::time::timeout(Duration::from_secs(3), s.read(&mut buf)).await
                {
                    if n == 0 {
                        break;
                    }
                    record.lock().unwrap().extend_from_slice(&buf[..n]);
                }
            });
        }
    });
    (port, seen)
}

const SECRET: &str = "rogue-must-not-see-this";

fn rogue_yaml(p: &Ports, split: u16, api: u16, rule: &str) -> String {
    format!(
        "cluster_update_interval: 1
listen_address: 127.0.0.1:{admin}
clusters:
  lab:
    hosts: [http://127.0.0.1:{api}]
    users:
      - {{name: postgres, password: postgres, backend_password: {SECRET}}}
    ports:
      app: {{listen: 127.0.0.1:{split}, mode: split, roles: [any], pool_size: 2{rule}}}
",
        admin = p.admin
    )
}

async fn against_rogue(how: Rogue, rule: &str) -> (Result<String, (String, String)>, Vec<u8>) {
    let (rogue, seen) = rogue_server(how).await;
    let body = serde_json::json!({"members": [{
        "name": "rogue", "role": "replica", "state": "streaming", "host": "127.0.0.1",
        "port": rogue, "api_url": "http://127.0.0.1:8008/patroni", "timeline": 1, "lag": 0
    }]})
    .to_string();
    let api = fake_patroni(body).await;
    let p = Ports::new();
    let split = free_port();
    let pg = Pgvane::start(&rogue_yaml(&p, split, api, rule), p.admin);
    assert!(
        wait_until(Duration::from_secs(10), || pg.clusters()["lab"]["members"]
            .as_array()
            .is_some_and(|m| m.len() == 1)),
        "{}",
        pg.log_text()
    );
    let result = backend_ssl(split).await;
    drop(pg);
    let bytes = seen.lock().unwrap().clone();
    (result, bytes)
}

fn holds(hay: &[u8], needle: &str) -> bool {
    hay.windows(needle.len()).any(|w| w == needle.as_bytes())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_rogue_server_never_gets_the_password() {
    // The control: with no rule, a cleartext request gets the password,
    // so the recorder sees a leak when there is one.
    let (result, seen) = against_rogue(Rogue::Cleartext, "").await;
    assert!(
        holds(&seen, SECRET),
        "the rogue should have seen it: {seen:?} {result:?}"
    );

    let rule = ", server_require_auth: [scram-sha-256]";
    for (how, want) in [
        (
            Rogue::Cleartext,
            "asked for a cleartext password, which server_require_auth [scram-sha-256] does not allow",
        ),
        (
            Rogue::Trust,
            "asked for no authentication, which server_require_auth [scram-sha-256] does not allow",
        ),
        (
            Rogue::ScramSkipped,
            "ended SCRAM before proving it knows the password",
        ),
    ] {
        let (result, seen) = against_rogue(how, rule).await;
        let (code, text) = result.expect_err("login through a rogue server");
        assert!(
            code == "08006" && text.contains(want),
            "{how:?}: {code} {text}"
        );
        assert!(!holds(&seen, SECRET), "{how:?}: the rogue saw the password");
        // Nor anything derived from it: no password message after a
        // refusal, no SCRAM client proof.
        match how {
            Rogue::ScramSkipped => assert!(
                seen.first() == Some(&b'p') && !holds(&seen, ",p="),
                "{how:?}: {seen:?}"
            ),
            _ => assert!(!seen.contains(&b'p'), "{how:?}: {seen:?}"),
        }
    }
    // A server's error in place of the SSLRequest answer reaches the
    // client as the server said it.
    let (result, _) = against_rogue(Rogue::FullAtSsl, "").await;
    assert_eq!(
        result,
        Err(("53300".into(), "sorry, too many clients already".into()))
    );
}
