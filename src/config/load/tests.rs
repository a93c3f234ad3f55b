use super::*;
use crate::config::RoleSel;

/// patroni_proxy's own example config (pg_doorman `patroni_proxy.yaml` shape).
const PATRONI_PROXY: &str = r#"
cluster_update_interval: 3
listen_address: "127.0.0.1:8009"
clusters:
  one:
    hosts:
      - "http://192.168.0.1:8008"
      - "https://192.168.0.2:8008"
    tls:
      ca_cert: "/path/to/ca.crt"
      client_cert: "/path/to/client.crt"
      client_key: "/path/to/client.key"
      skip_verify: false
    ports:
      master:
        listen: "127.0.0.1:5432"
        roles: ["leader"]
        host_port: 6432
      any:
        listen: "127.0.0.1:6432"
        roles: ["Any"]
        host_port: 6432
        max_lag_in_bytes: 16777216
"#;

#[test]
fn patroni_proxy_config_loads_unchanged() {
    let c = load_str(PATRONI_PROXY).unwrap();
    assert_eq!(c.cluster_update_interval, Duration::from_secs(3));
    let one = &c.clusters["one"];
    assert_eq!(one.hosts.len(), 2);
    assert_eq!(one.ports["master"].roles, vec![RoleSel::Leader]);
    assert_eq!(one.ports["master"].host_port, Some(6432));
    assert_eq!(one.ports["any"].roles, vec![RoleSel::Any]);
    assert_eq!(one.ports["any"].max_lag_in_bytes, Some(16_777_216));
    assert_eq!(one.tls.as_ref().unwrap().skip_verify, Some(false));
}

#[test]
fn defaults_apply() {
    let c = load_str(
        "clusters: {c: {hosts: ['http://[::1]:8008', 'http://db1.example:8008'], ports: {p: {listen: '[::1]:7000', roles: [async, sync]}}}}",
    )
    .unwrap();
    assert_eq!(c.listen_address, SocketAddr::from(([127, 0, 0, 1], 8009)));
    assert_eq!(c.cluster_update_interval, Duration::from_secs(3));
    assert_eq!(c.api_timeout, Duration::from_millis(2000));
    let p = &c.clusters["c"].ports["p"];
    assert_eq!(p.host_port, None);
    assert_eq!(p.mode, Mode::Tcp);
    assert_eq!(c.io_uring, IoUring::Auto);
}

#[test]
fn io_uring_takes_auto_on_off_only() {
    let with = |v: &str| {
        load_str(&format!(
            "io_uring: {v}\nclusters: {{c: {{hosts: ['http://h:8008'], ports: {{p: {{listen: '127.0.0.1:7000', roles: [leader]}}}}}}}}"
        ))
    };
    assert_eq!(with("on").unwrap().io_uring, IoUring::On);
    assert_eq!(with("off").unwrap().io_uring, IoUring::Off);
    assert_eq!(with("auto").unwrap().io_uring, IoUring::Auto);
    let errs = with("maybe").unwrap_err().0;
    assert!(errs[0].path.starts_with("io_uring"), "{errs:?}");
}

#[test]
fn reports_every_problem_with_its_path() {
    let text = r#"
cluster_update_interval: 0
clusters:
  a:
    hosts: ["ftp://x:8008", "http://y:8008", "http://y:8008"]
    ports:
      p1: {listen: "127.0.0.1:7000", roles: [master]}
      p2: {listen: "127.0.0.1:7001", roles: [], host_port: 0}
      p3: {listen: "127.0.0.1:7001", roles: [leader], bogus: 1}
      p4: {listen: "not an address", roles: [leader]}
      p5: {listen: "127.0.0.1:7002", roles: [leader]}
  b:
    hosts: ["http://z:8008"]
    ports:
      p1: {listen: "127.0.0.1:7002", roles: [leader]}
"#;
    let errs = load_str(text).unwrap_err().0;
    let paths: Vec<&str> = errs.iter().map(|e| e.path.as_str()).collect();
    for want in [
        "cluster_update_interval",
        "clusters.a.hosts[0]",
        "clusters.a.hosts[2]",
        "clusters.a.ports.p1.roles[0]",
        "clusters.a.ports.p2.roles",
        "clusters.a.ports.p2.host_port",
        "clusters.a.ports.p3.bogus",
        "clusters.a.ports.p4.listen",
        "clusters.b.ports.p1.listen",
    ] {
        assert!(paths.contains(&want), "missing {want} in {errs:?}");
    }
    let role = errs
        .iter()
        .find(|e| e.path == "clusters.a.ports.p1.roles[0]")
        .unwrap();
    assert!(role.message.contains("master"), "{role:?}");
    let dup = errs
        .iter()
        .find(|e| e.path == "clusters.b.ports.p1.listen")
        .unwrap();
    assert!(dup.message.contains("clusters.a.ports.p5"), "{dup:?}");
}

#[test]
fn unknown_top_level_field_is_named() {
    let errs = load_str("clusters: {}\nlisten_adress: 1").unwrap_err().0;
    assert_eq!(errs[0].path, "listen_adress");
}

#[test]
fn syntax_error_is_reported() {
    let errs = load_str("clusters: [").unwrap_err();
    assert!(!errs.0.is_empty());
}

#[test]
fn split_ports_need_users_and_split_fields_need_split() {
    let errs = load_str(
        "clusters: {c: {hosts: ['http://a:8008'], ports: {p: {listen: '127.0.0.1:7000', roles: [async], mode: split}, t: {listen: '127.0.0.1:7001', roles: [leader], pool_size: 3}}}}",
    )
    .unwrap_err()
    .0;
    let paths: Vec<&str> = errs.iter().map(|e| e.path.as_str()).collect();
    assert!(paths.contains(&"clusters.c.ports.p.mode"), "{errs:?}");
    assert!(paths.contains(&"clusters.c.ports.t.pool_size"), "{errs:?}");
    let ok = load_str(
        "clusters: {c: {hosts: ['http://a:8008'], users: [{name: app, password: secret}], ports: {p: {listen: '127.0.0.1:7000', roles: [async], mode: split, pool_size: 5, read_only_functions: [f]}}}}",
    )
    .unwrap();
    assert_eq!(ok.clusters["c"].ports["p"].pool_size, Some(5));
    let bad = load_str(
        "clusters: {c: {hosts: ['http://a:8008'], users: [{name: app, password: 'SCRAM-SHA-256$x'}, {name: app, password: y}], ports: {p: {listen: '127.0.0.1:7000', roles: [async], mode: split}}}}",
    )
    .unwrap_err()
    .0;
    let paths: Vec<&str> = bad.iter().map(|e| e.path.as_str()).collect();
    assert!(
        paths.contains(&"clusters.c.users[0].password")
            && paths.contains(&"clusters.c.users[1].name"),
        "{bad:?}"
    );
}

#[test]
fn example_config_passes() {
    let text = include_str!("../../../config.example.yaml");
    let c = load_str(text).unwrap();
    assert!(!c.clusters.is_empty());
}

#[test]
fn lag_hysteresis_fields_need_a_limit_and_sane_values() {
    let errs = load_str(
        "clusters: {c: {hosts: ['http://a:8008'], ports: {p: {listen: '127.0.0.1:7000', roles: [async], lag_grace_ms: 100}, q: {listen: '127.0.0.1:7001', roles: [async], max_lag_in_bytes: 100, lag_low_watermark_in_bytes: 200, lag_hard_factor: 0}}}}",
    )
    .unwrap_err()
    .0;
    let paths: Vec<&str> = errs.iter().map(|e| e.path.as_str()).collect();
    for want in [
        "clusters.c.ports.p.lag_grace_ms",
        "clusters.c.ports.q.lag_low_watermark_in_bytes",
        "clusters.c.ports.q.lag_hard_factor",
    ] {
        assert!(paths.contains(&want), "{want} missing from {errs:?}");
    }
    let ok = load_str(
        "clusters: {c: {hosts: ['http://a:8008'], ports: {p: {listen: '127.0.0.1:7000', roles: [async], max_lag_in_bytes: 100, lag_grace_ms: 0, lag_low_watermark_in_bytes: 10, lag_hard_factor: 2}}}}",
    )
    .unwrap();
    assert_eq!(ok.clusters["c"].ports["p"].lag_grace_ms, Some(0));
}

/// A patroni_proxy config with a public admin address loads as it is
/// (its callbacks `curl /update_clusters`); `/reload` is then taken from
/// loopback only (admin API). A token, when given, must be long.
#[test]
fn a_public_admin_address_loads_and_a_token_must_be_long() {
    let base = "clusters: {c: {hosts: ['http://a:8008'], ports: {p: {listen: '127.0.0.1:7000', roles: [async]}}}}";
    let ok = load_str(&format!("listen_address: 0.0.0.0:8009\n{base}")).unwrap();
    assert_eq!(ok.admin_token, None);
    let errs = load_str(&format!("admin_token: short\n{base}"))
        .unwrap_err()
        .0;
    assert_eq!(errs[0].path, "admin_token", "{errs:?}");
    let ok = load_str(&format!(
        "listen_address: 0.0.0.0:8009\nadmin_token: 0123456789abcdef\n{base}"
    ))
    .unwrap();
    assert_eq!(ok.admin_token.as_deref(), Some("0123456789abcdef"));
}

#[test]
fn client_tls_is_for_split_ports_and_needs_its_files() {
    let errs = load_str(
        "clusters: {c: {hosts: ['http://a:8008'], users: [{name: app, password: x}], ports: {p: {listen: '127.0.0.1:7000', roles: [async], mode: split, tls: {mode: require, cert: /c.pem}}, t: {listen: '127.0.0.1:7001', roles: [leader], tls: {mode: allow}}, u: {listen: '127.0.0.1:7002', roles: [any], mode: split, tls: {mode: sometimes}}}}}",
    )
    .unwrap_err()
    .0;
    let paths: Vec<&str> = errs.iter().map(|e| e.path.as_str()).collect();
    assert!(paths.contains(&"clusters.c.ports.p.tls.key"), "{errs:?}");
    assert!(!paths.contains(&"clusters.c.ports.p.tls.cert"), "{errs:?}");
    assert!(paths.contains(&"clusters.c.ports.t.tls"), "{errs:?}");
    assert!(
        paths.iter().any(|p| p.starts_with("clusters.c.ports.u")),
        "{errs:?}"
    );
    let ok = load_str(
        "clusters: {c: {hosts: ['http://a:8008'], users: [{name: app, password: x}], ports: {p: {listen: '127.0.0.1:7000', roles: [async], mode: split, tls: {mode: disable}}, q: {listen: '127.0.0.1:7001', roles: [async], mode: split, tls: {cert: /c.pem, key: /k.pem}}}}}",
    )
    .unwrap();
    let q = ok.clusters["c"].ports["q"].tls.as_ref().unwrap();
    assert_eq!(q.mode, crate::config::ClientTlsMode::Allow);
}

#[test]
fn access_rules_parse_and_role_ports_take_only_addresses() {
    use crate::config::AccessClient;
    let errs = load_str(
        "clusters: {c: {hosts: ['http://a:8008'], ports: {r: {listen: '127.0.0.1:7000', roles: [leader], access: [{address: 10.0.0.0/8}, {users: [app], tls: true}]}, s: {listen: '127.0.0.1:7001', roles: [leader], access: [{address: 10.0.0.300/8}]}}}}",
    )
    .unwrap_err()
    .0;
    let paths: Vec<&str> = errs.iter().map(|e| e.path.as_str()).collect();
    assert!(
        paths.contains(&"clusters.c.ports.r.access[1].users"),
        "{errs:?}"
    );
    assert!(
        paths.contains(&"clusters.c.ports.r.access[1].tls"),
        "{errs:?}"
    );
    assert!(
        !paths.contains(&"clusters.c.ports.r.access[0].address"),
        "{errs:?}"
    );
    assert!(
        paths.iter().any(|p| p.starts_with("clusters.c.ports.s")),
        "a bad CIDR names its port: {errs:?}"
    );

    let ok = load_str(
        "clusters: {c: {hosts: ['http://a:8008'], users: [{name: app, password: x}], ports: {s: {listen: '127.0.0.1:7001', roles: [any], mode: split, access: [{address: 10.1.0.0/16, users: [app], databases: [appdb]}, {address: '::1/128', tls: true}]}, open: {listen: '127.0.0.1:7002', roles: [any], mode: split}}}}",
    )
    .unwrap();
    let s = &ok.clusters["c"].ports["s"];
    let c = |ip: &str, user, database, tls| AccessClient {
        ip: ip.parse().unwrap(),
        user: Some(user),
        database: Some(database),
        tls,
    };
    assert!(s.admits(&c("10.1.2.3", "app", "appdb", false)));
    assert!(
        s.admits(&c("::ffff:10.1.2.3", "app", "appdb", false)),
        "v4-mapped"
    );
    assert!(
        !s.admits(&c("10.2.0.1", "app", "appdb", false)),
        "outside the net"
    );
    assert!(!s.admits(&c("10.1.2.3", "other", "appdb", false)), "user");
    assert!(
        !s.admits(&c("10.1.2.3", "app", "postgres", false)),
        "database"
    );
    assert!(s.admits(&c("::1", "anyone", "any", true)));
    assert!(!s.admits(&c("::1", "anyone", "any", false)), "tls required");
    let unknown = AccessClient {
        ip: "10.1.2.3".parse().unwrap(),
        user: None,
        database: None,
        tls: false,
    };
    assert!(
        !s.admits(&unknown),
        "a user list never matches an unknown user"
    );
    assert!(
        ok.clusters["c"].ports["open"].admits(&unknown),
        "no rules: everyone"
    );
}

#[test]
fn server_tls_and_login_rules_are_checked_by_field() {
    let errs = load_str(
        "clusters: {c: {hosts: ['http://a:8008'], users: [{name: app, password: x}], ports: {\
         a: {listen: '127.0.0.1:7000', roles: [async], mode: split, server_tls: {mode: verify-full}},\
         b: {listen: '127.0.0.1:7001', roles: [async], mode: split, server_tls: {mode: disable}, server_channel_binding: require},\
         d: {listen: '127.0.0.1:7002', roles: [async], mode: split, server_require_auth: [md5], server_channel_binding: require},\
         e: {listen: '127.0.0.1:7003', roles: [leader], server_tls: {mode: require}, server_require_auth: [md5]},\
         f: {listen: '127.0.0.1:7004', roles: [async], mode: split, server_require_auth: [kerberos]},\
         g: {listen: '127.0.0.1:7005', roles: [async], mode: split, max_classified_query_bytes: 0},\
         h: {listen: '127.0.0.1:7006', roles: [leader], max_classified_query_bytes: 4096}}}}",
    )
    .unwrap_err()
    .0;
    let paths: Vec<&str> = errs.iter().map(|e| e.path.as_str()).collect();
    for want in [
        "clusters.c.ports.a.server_tls.ca_file",
        "clusters.c.ports.b.server_channel_binding",
        "clusters.c.ports.d.server_channel_binding",
        "clusters.c.ports.e.server_tls",
        "clusters.c.ports.e.server_require_auth",
        "clusters.c.ports.g.max_classified_query_bytes",
        "clusters.c.ports.h.max_classified_query_bytes",
    ] {
        assert!(paths.contains(&want), "{want}: {errs:?}");
    }
    assert!(
        paths.iter().any(|p| p.starts_with("clusters.c.ports.f")),
        "{errs:?}"
    );
    let ok = load_str(
        "clusters: {c: {hosts: ['http://a:8008'], users: [{name: app, password: x}], ports: {p: {listen: '127.0.0.1:7000', roles: [async], mode: split, server_tls: {mode: verify-ca, ca_file: /ca.pem}, server_require_auth: [scram-sha-256, none], server_channel_binding: disable}}}}",
    )
    .unwrap();
    let p = &ok.clusters["c"].ports["p"];
    use crate::config::{ChannelBinding, ServerAuth, ServerTlsMode};
    assert_eq!(p.server_tls.as_ref().unwrap().mode, ServerTlsMode::VerifyCa);
    assert_eq!(
        p.server_require_auth,
        [ServerAuth::ScramSha256, ServerAuth::None]
    );
    assert_eq!(p.server_channel_binding, Some(ChannelBinding::Disable));
}

#[test]
fn tcp_settings_default_like_before_and_are_checked_by_field() {
    let c = load_str(PATRONI_PROXY).unwrap();
    assert_eq!(c.tcp, crate::config::TcpConfig::default());
    assert_eq!(c.tcp.keepalives_idle, Some(Duration::from_secs(60)));
    assert_eq!(c.tcp.user_timeout, None);
    let set = PATRONI_PROXY.replace(
        "cluster_update_interval: 3",
        "cluster_update_interval: 3\ntcp_keepalives_idle_s: 5\ntcp_keepalives_interval_s: 2\ntcp_keepalives_count: 3\ntcp_user_timeout_ms: 4000",
    );
    let t = load_str(&set).unwrap().tcp;
    assert_eq!(t.keepalives_idle, Some(Duration::from_secs(5)));
    assert_eq!(t.keepalives_interval, Some(Duration::from_secs(2)));
    assert_eq!(t.keepalives_count, Some(3));
    assert_eq!(t.user_timeout, Some(Duration::from_millis(4000)));
    // 0 is the system's value, as in postgresql.conf.
    let system = PATRONI_PROXY.replace(
        "cluster_update_interval: 3",
        "cluster_update_interval: 3\ntcp_keepalives_idle_s: 0\ntcp_keepalives_interval_s: 0\ntcp_keepalives_count: 0\ntcp_user_timeout_ms: 0",
    );
    let t = load_str(&system).unwrap().tcp;
    assert_eq!(
        t,
        crate::config::TcpConfig {
            keepalives_idle: None,
            keepalives_interval: None,
            keepalives_count: None,
            user_timeout: None,
        }
    );
    let bad = PATRONI_PROXY.replace(
        "cluster_update_interval: 3",
        "cluster_update_interval: 3\ntcp_keepalives_idle_s: 40000\ntcp_keepalives_interval_s: 32768\ntcp_keepalives_count: 200\ntcp_user_timeout_ms: 2147483648",
    );
    let e = load_str(&bad).unwrap_err().to_string();
    for field in [
        "tcp_keepalives_idle_s",
        "tcp_keepalives_interval_s",
        "tcp_keepalives_count",
        "tcp_user_timeout_ms",
    ] {
        assert!(e.contains(field), "{field} not named in {e}");
    }
    let max = PATRONI_PROXY.replace(
        "cluster_update_interval: 3",
        "cluster_update_interval: 3\ntcp_user_timeout_ms: 2147483647",
    );
    assert!(load_str(&max).is_ok());
}

#[test]
fn read_your_writes_defaults_are_resolved_at_load() {
    use crate::config::{RywScope, RywTimeout};
    let text = |extra: &str| {
        format!(
            "clusters: {{c: {{hosts: ['http://a:8008'], users: [{{name: app, password: s}}], ports: {{p: {{listen: '127.0.0.1:7000', roles: [async], mode: split{extra}}}, r: {{listen: '127.0.0.1:7001', roles: [leader]}}}}}}}}"
        )
    };
    let c = load_str(&text("")).unwrap();
    let p = &c.clusters["c"].ports["p"].resolved;
    assert_eq!(p.read_your_writes, RywScope::Session);
    assert_eq!(p.read_your_writes_wait, Duration::from_millis(20));
    assert_eq!(p.read_your_writes_on_timeout, RywTimeout::Leader);
    assert_eq!(p.leader_wait, Duration::from_millis(30_000));
    assert_eq!(p.pool_size, 20);
    // Role ports wait for a leader too.
    let r = &c.clusters["c"].ports["r"].resolved;
    assert_eq!(r.leader_wait, Duration::from_millis(30_000));
    // An existing config's window keeps working as the window mode; 0 is off.
    let c = load_str(&text(", read_your_writes_ms: 500")).unwrap();
    let p = &c.clusters["c"].ports["p"].resolved;
    assert_eq!(p.read_your_writes, RywScope::Window);
    assert_eq!(p.read_your_writes_window, Duration::from_millis(500));
    let c = load_str(&text(", read_your_writes_ms: 0")).unwrap();
    assert_eq!(
        c.clusters["c"].ports["p"].resolved.read_your_writes,
        RywScope::Off
    );
    let c = load_str(&text(
        ", read_your_writes: cluster, read_your_writes_wait_ms: 0, read_your_writes_on_timeout: error, leader_wait_ms: 0",
    ))
    .unwrap();
    let p = &c.clusters["c"].ports["p"].resolved;
    assert_eq!(p.read_your_writes, RywScope::Cluster);
    assert!(p.read_your_writes_wait.is_zero() && p.leader_wait.is_zero());
    assert_eq!(p.read_your_writes_on_timeout, RywTimeout::Error);
    let errs = load_str(&text(", read_your_writes: sometimes"))
        .unwrap_err()
        .0;
    assert_eq!(
        errs[0].path, "clusters.c.ports.p.read_your_writes",
        "{errs:?}"
    );
    let errs = load_str(&text(", read_your_writes: window, read_your_writes_ms: 0"))
        .unwrap_err()
        .0;
    assert_eq!(
        errs[0].path, "clusters.c.ports.p.read_your_writes_ms",
        "{errs:?}"
    );
}
