//! Shared helpers for the end-to-end tests: drive the lab script, start
//! pgvane as a real process on its own config, connect real clients.
//! Every wait polls until true or a deadline; nothing sleeps blindly.
#![allow(
    dead_code,
    unreachable_pub,
    missing_docs,
    clippy::unwrap_used,
    clippy::expect_used
)]

pub mod raw;
pub mod ryw;

use std::io::Write;
use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub const NODES: [&str; 3] = ["node1", "node2", "node3"];

pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Runs `deploy/lab/lab.sh args…`, panicking with its output on failure.
pub fn lab(args: &[&str]) -> String {
    let out = Command::new(root().join("deploy/lab/lab.sh"))
        .args(args)
        .output()
        .expect("run lab.sh");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "lab.sh {args:?} failed:\n{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    text.trim().to_owned()
}

/// Starts the lab if needed and waits for one leader and two streaming replicas.
pub fn healthy_lab() {
    lab(&["up"]);
}

pub fn leader() -> String {
    lab(&["leader"])
}

pub fn node_ip(name: &str) -> String {
    format!(
        "127.0.0.{}",
        10 + name.trim_start_matches("node").parse::<u8>().unwrap()
    )
}

pub fn node_of_ip(ip: &str) -> String {
    let last: u8 = ip.rsplit('.').next().unwrap().parse().unwrap();
    format!("node{}", last - 10)
}

pub fn replicas() -> Vec<String> {
    let l = leader();
    NODES
        .iter()
        .filter(|n| **n != l)
        .map(|n| (*n).to_owned())
        .collect()
}

/// A free loopback TCP port (bound, then released), never the same twice
/// in one test process (the kernel may hand a released port out again).
pub fn free_port() -> u16 {
    static GIVEN: std::sync::Mutex<Vec<u16>> = std::sync::Mutex::new(Vec::new());
    let mut given = GIVEN.lock().unwrap();
    loop {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        if !given.contains(&port) {
            given.push(port);
            return port;
        }
    }
}

pub struct Ports {
    pub admin: u16,
    pub rw: u16,
    pub ro: u16,
    pub any: u16,
}

impl Ports {
    pub fn new() -> Self {
        Self {
            admin: free_port(),
            rw: free_port(),
            ro: free_port(),
            any: free_port(),
        }
    }
}

/// A patroni_proxy-style config for the lab: rw (leader), ro (sync+async,
/// 16 MiB lag limit), any. Only patroni_proxy's own fields are used.
/// pgvane on the lab config plus one split port `app` for user `postgres`
/// with `opts` (YAML flow-map entries such as `roles: [sync], pool_size: 1`);
/// returns the process and the split port.
pub fn start_split(opts: &str) -> (Pgvane, u16) {
    start_split_with("", opts)
}

/// `start_split` with `globals` (top-level YAML lines, each ending in a
/// newline) put before the lab config.
pub fn start_split_with(globals: &str, opts: &str) -> (Pgvane, u16) {
    healthy_lab();
    let p = Ports::new();
    let split = free_port();
    let yaml = format!("{globals}{}", split_config_opts(&p, split, opts));
    (Pgvane::start(&yaml, p.admin), split)
}

/// `lab_config` plus user postgres and a split port `app` on `split` with
/// `opts` (YAML flow-map entries such as `roles: [sync], read_your_writes:
/// user`). Cluster-level fields go in with [`cluster_fields`].
pub fn split_config_opts(p: &Ports, split: u16, opts: &str) -> String {
    lab_config(p).replace(
        "    ports:\n",
        &format!(
            "    users:\n      - {{name: postgres, password: postgres}}\n    ports:\n      app: {{listen: 127.0.0.1:{split}, mode: split, {opts}}}\n"
        ),
    )
}

/// `yaml` (a lab config) with `fields` (cluster-level YAML lines such as
/// `replica_position_poll_ms: 20`, each ending in a newline) added to
/// cluster `lab`.
pub fn cluster_fields(yaml: &str, fields: &str) -> String {
    let indented: String = fields.lines().map(|l| format!("    {l}\n")).collect();
    yaml.replacen("  lab:\n", &format!("  lab:\n{indented}"), 1)
}

/// The lab's replicas apply WAL late (`lab.sh delay`) while any `Delay` of
/// this test process lives; the last one dropped, also when its test
/// panics, runs `lab.sh undelay`, which waits until the replicas caught up.
/// Every holder must ask for the same delay.
pub struct Delay {
    ms: u64,
    watch: DelayWatch,
}

static DELAYS: std::sync::Mutex<(usize, u64)> = std::sync::Mutex::new((0, 0));

impl Delay {
    pub fn on(ms: u64) -> Self {
        let mut held = DELAYS
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if held.0 == 0 {
            // The lab is shared: wait for someone else's delay (a benchmark
            // run, another test process) to be cleared first.
            let free = wait_until(Duration::from_secs(600), || {
                configured_delay().is_some_and(|d| d.is_empty())
            });
            assert!(
                free,
                "the lab has someone else's apply delay for 10 minutes"
            );
            let out = Command::new(root().join("deploy/lab/lab.sh"))
                .args(["delay", &ms.to_string()])
                .output()
                .expect("run lab.sh delay");
            if !out.status.success() {
                undelay();
                panic!(
                    "lab.sh delay {ms} failed:\n{}",
                    String::from_utf8_lossy(&out.stderr)
                );
            }
            held.1 = ms;
        }
        assert_eq!(
            held.1, ms,
            "another test of this process holds another delay"
        );
        held.0 += 1;
        Self {
            ms,
            watch: DelayWatch::start(),
        }
    }

    pub fn ms(&self) -> u64 {
        self.ms
    }

    /// Panics if the lab's delay was ever other than this one while the
    /// guard lived (someone else's run undid or changed it): call before a
    /// test's verdict, so a disturbed run says so instead of miscounting.
    pub fn assert_held(&self) {
        self.watch.assert_only(&self.ms.to_string());
    }
}

/// The cluster-wide `recovery_min_apply_delay` in Patroni's dynamic
/// configuration ("" when none), read from the first node that answers
/// `/config`; None when none does.
pub fn configured_delay() -> Option<String> {
    NODES.iter().find_map(|n| {
        let (status, body) = http_at(&node_ip(n), 8008, "/config")?;
        if status != 200 {
            return None;
        }
        let v: serde_json::Value = serde_json::from_str(&body).ok()?;
        Some(
            match &v["postgresql"]["parameters"]["recovery_min_apply_delay"] {
                serde_json::Value::Null => String::new(),
                serde_json::Value::String(s) => s.clone(),
                other => other.to_string(),
            },
        )
    })
}

/// Samples [`configured_delay`] every 250 ms until dropped (at most 20
/// minutes): the lab is shared, and another run may set or clear a delay
/// in the middle of a test.
pub struct DelayWatch {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    seen: std::sync::Arc<std::sync::Mutex<std::collections::BTreeSet<String>>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl DelayWatch {
    pub fn start() -> Self {
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let seen = std::sync::Arc::new(std::sync::Mutex::new(std::collections::BTreeSet::new()));
        let (s, v) = (stop.clone(), seen.clone());
        let thread = std::thread::spawn(move || {
            let t0 = Instant::now();
            while !s.load(std::sync::atomic::Ordering::Relaxed)
                && t0.elapsed() < Duration::from_secs(1200)
            {
                if let Some(d) = configured_delay() {
                    v.lock().unwrap().insert(d);
                }
                std::thread::sleep(Duration::from_millis(250));
            }
        });
        Self {
            stop,
            seen,
            thread: Some(thread),
        }
    }

    /// Every value seen so far ("" = no delay).
    pub fn seen(&self) -> Vec<String> {
        self.seen.lock().unwrap().iter().cloned().collect()
    }

    /// Panics if any value other than `want` was seen.
    pub fn assert_only(&self, want: &str) {
        let seen = self.seen();
        assert!(
            seen.iter().all(|d| d == want),
            "the lab's apply delay was not {want:?} throughout (seen {seen:?}): another run on the shared lab changed it, so this run's figures mean nothing"
        );
    }
}

impl Drop for DelayWatch {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Delay {
    fn drop(&mut self) {
        let mut held = DELAYS
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        held.0 -= 1;
        if held.0 == 0 {
            undelay();
        }
    }
}

/// `lab.sh undelay`, reporting (never panicking) on failure: it runs in drops.
pub fn undelay() {
    match Command::new(root().join("deploy/lab/lab.sh"))
        .arg("undelay")
        .output()
    {
        Ok(out) if out.status.success() => {}
        Ok(out) => eprintln!(
            "lab.sh undelay failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        ),
        Err(e) => eprintln!("lab.sh undelay did not run: {e}"),
    }
}

pub fn lab_config(p: &Ports) -> String {
    format!(
        "cluster_update_interval: 1
listen_address: 127.0.0.1:{admin}
clusters:
  lab:
    hosts: [http://127.0.0.11:8008, http://127.0.0.12:8008, http://127.0.0.13:8008]
    ports:
      rw: {{listen: 127.0.0.1:{rw}, roles: [leader], host_port: 5432}}
      ro: {{listen: 127.0.0.1:{ro}, roles: [sync, async], max_lag_in_bytes: 16777216}}
      any: {{listen: 127.0.0.1:{any}, roles: [any]}}
",
        admin = p.admin,
        rw = p.rw,
        ro = p.ro,
        any = p.any
    )
}

/// `lab_config` plus a split port `app` on `split` for user postgres.
pub fn split_config(p: &Ports, split: u16) -> String {
    lab_config(p).replace(
        "    ports:\n",
        &format!(
            "    users:\n      - {{name: postgres, password: postgres}}\n    ports:\n      app: {{listen: 127.0.0.1:{split}, mode: split, roles: [sync, async], max_lag_in_bytes: 16777216, pool_size: 8, read_only_functions: [pgvane_ro]}}\n"
        ),
    )
}

/// pgvane running as a child process; stopped (SIGTERM, then SIGKILL) on drop.
pub struct Pgvane {
    pub child: Child,
    pub config: PathBuf,
    pub admin: u16,
    pub log: PathBuf,
}

static COUNTER: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

pub fn temp_path(name: &str) -> PathBuf {
    let n = COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let dir = std::env::temp_dir().join(format!("pgvane-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir.join(format!("{n}-{name}"))
}

pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_pgvane")
}

/// `pgvane --check PATH` with extra environment: (passed, what it printed).
pub fn check_file(path: &std::path::Path, env: &[(&str, &str)]) -> (bool, String) {
    let mut cmd = Command::new(bin());
    cmd.arg("--check").arg(path);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

impl Pgvane {
    /// Starts pgvane on `yaml` and waits until /ready answers 200.
    pub fn start(yaml: &str, admin: u16) -> Self {
        Self::start_with_env(yaml, admin, &[])
    }

    /// Starts pgvane on `yaml` and waits only for its admin API (for a
    /// pgvane that cannot have a map, so is never ready).
    pub fn start_unready(yaml: &str, admin: u16) -> Self {
        let mut me = Self::spawn(yaml, admin, &[]);
        let ok = wait_until(Duration::from_secs(15), || {
            me.http("GET", "/health").is_some()
        });
        if !ok {
            panic!("pgvane's admin API did not answer:\n{}", me.log_text());
        }
        let _ = me.child.try_wait();
        me
    }

    /// Starts pgvane on `yaml` with extra environment variables; waits
    /// for nothing.
    pub fn spawn(yaml: &str, admin: u16, env: &[(&str, &std::ffi::OsStr)]) -> Self {
        Self::spawn_args(yaml, admin, env, &[])
    }

    /// [`Pgvane::spawn`] with extra command-line arguments.
    pub fn spawn_args(
        yaml: &str,
        admin: u16,
        env: &[(&str, &std::ffi::OsStr)],
        args: &[&str],
    ) -> Self {
        let config = temp_path("pgvane.yaml");
        std::fs::write(&config, yaml).unwrap();
        let log = temp_path("pgvane.log");
        let mut cmd = Command::new(bin());
        cmd.arg("--config")
            .arg(&config)
            .args(args)
            // PGVANE_TEST_LOG raises the level when chasing a failure.
            .env(
                "RUST_LOG",
                std::env::var("PGVANE_TEST_LOG").unwrap_or_else(|_| "info".into()),
            )
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap());
        for (k, v) in env {
            cmd.env(k, v);
        }
        Self {
            child: cmd.spawn().unwrap(),
            config,
            admin,
            log,
        }
    }

    /// Starts pgvane on `yaml` with extra environment variables and waits
    /// until /ready answers 200.
    pub fn start_with_env(yaml: &str, admin: u16, env: &[(&str, &std::ffi::OsStr)]) -> Self {
        Self::start_args(yaml, admin, env, &[])
    }

    /// [`Pgvane::start_with_env`] with extra command-line arguments.
    pub fn start_args(
        yaml: &str,
        admin: u16,
        env: &[(&str, &std::ffi::OsStr)],
        args: &[&str],
    ) -> Self {
        let me = Self::spawn_args(yaml, admin, env, args);
        let ok = wait_until(Duration::from_secs(15), || {
            me.http("GET", "/ready").is_some_and(|(s, _)| s == 200)
        });
        assert!(ok, "pgvane not ready:\n{}", me.log_text());
        me
    }

    /// Starts pgvane as systemd would (`NOTIFY_SOCKET`) and waits for its
    /// `READY=1`: the one sign of readiness that also works beside another
    /// pgvane answering on the same admin port. Returns it with every
    /// notification it sent.
    pub fn start_notified(yaml: &str, admin: u16) -> (Self, Vec<String>) {
        let path = temp_path("notify.sock");
        let sock = std::os::unix::net::UnixDatagram::bind(&path).unwrap();
        sock.set_read_timeout(Some(Duration::from_millis(200)))
            .unwrap();
        let mut me = Self::spawn(yaml, admin, &[("NOTIFY_SOCKET", path.as_os_str())]);
        let deadline = Instant::now() + Duration::from_secs(20);
        let mut seen = Vec::new();
        let mut buf = [0u8; 4096];
        while !seen
            .iter()
            .any(|m: &String| m.lines().any(|l| l == "READY=1"))
        {
            if let Some(st) = me.child.try_wait().unwrap() {
                panic!("pgvane exited ({st}) before READY=1:\n{}", me.log_text());
            }
            assert!(
                Instant::now() < deadline,
                "no READY=1 within 20 s (got {seen:?}):\n{}",
                me.log_text()
            );
            if let Ok(n) = sock.recv(&mut buf) {
                seen.push(String::from_utf8_lossy(&buf[..n]).into_owned());
            }
        }
        (me, seen)
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Blocking HTTP call to the admin API: (status, body).
    pub fn http(&self, method: &str, path: &str) -> Option<(u16, String)> {
        http(self.admin, method, path)
    }

    pub fn clusters(&self) -> serde_json::Value {
        let (s, body) = self.http("GET", "/clusters").unwrap();
        assert_eq!(s, 200);
        serde_json::from_str(&body).unwrap()
    }

    pub fn metrics(&self) -> String {
        self.http("GET", "/metrics").unwrap().1
    }

    /// Sum of a metric's samples whose line contains every `filters` string.
    pub fn metric(&self, name: &str, filters: &[&str]) -> f64 {
        self.metrics()
            .lines()
            .filter(|l| l.starts_with(name) && filters.iter().all(|f| l.contains(f)))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    }

    pub fn rewrite_config(&self, yaml: &str) {
        let mut f = std::fs::File::create(&self.config).unwrap();
        f.write_all(yaml.as_bytes()).unwrap();
    }

    pub fn signal(&self, sig: &str) {
        let st = Command::new("kill")
            .arg(format!("-{sig}"))
            .arg(self.child.id().to_string())
            .status()
            .unwrap();
        assert!(st.success());
    }

    /// Sends SIGTERM and waits for the exit status.
    pub fn stop(&mut self) -> std::process::ExitStatus {
        self.signal("TERM");
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(st) = self.child.try_wait().unwrap() {
                return st;
            }
            assert!(
                Instant::now() < deadline,
                "pgvane did not exit after SIGTERM"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Pgvane {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = Command::new("kill")
                .arg("-TERM")
                .arg(self.child.id().to_string())
                .status();
            let deadline = Instant::now() + Duration::from_secs(15);
            while Instant::now() < deadline {
                if self.child.try_wait().ok().flatten().is_some() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Minimal blocking HTTP/1.1 client (no extra dependency in tests).
pub fn http(port: u16, method: &str, path: &str) -> Option<(u16, String)> {
    use std::io::Read;
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(15))).ok()?;
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).ok()?;
    let text = String::from_utf8_lossy(&buf).into_owned();
    let status = text.split(' ').nth(1)?.parse().ok()?;
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    // Chunked bodies: good enough to strip chunk sizes for our JSON/text checks.
    let body = if text
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        dechunk(&body)
    } else {
        body
    };
    Some((status, body))
}

fn dechunk(body: &str) -> String {
    let mut out = String::new();
    let mut rest = body;
    while let Some((size, after)) = rest.split_once("\r\n") {
        let Ok(n) = usize::from_str_radix(size.trim(), 16) else {
            break;
        };
        if n == 0 || after.len() < n {
            break;
        }
        out.push_str(&after[..n]);
        rest = after[n..].trim_start_matches("\r\n");
    }
    out
}

pub fn wait_until(timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if f() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

pub async fn wait_until_async<F, Fut>(timeout: Duration, mut f: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if f().await {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A fake Patroni REST API (edge cases only) answering every request with
/// `body` as the `/cluster` JSON; returns its port.
pub async fn fake_patroni(body: String) -> u16 {
    let api = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = api.local_addr().unwrap().port();
    tokio::spawn(async move {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        while let Ok((mut s, _)) = api.accept().await {
            let mut buf = [0u8; 2048];
            let _ = s.read(&mut buf).await;
            let reply = format!(
                "HTTP/1.1 200 OK\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = s.write_all(reply.as_bytes()).await;
        }
    });
    port
}

/// A real PostgreSQL client through a pgvane port.
pub struct Client {
    pub client: tokio_postgres::Client,
    pub task: tokio::task::JoinHandle<()>,
}

pub async fn connect(port: u16) -> Result<Client, tokio_postgres::Error> {
    let conn_str = format!(
        "host=127.0.0.1 port={port} user=postgres password=postgres dbname=postgres connect_timeout=10"
    );
    let (client, conn) = tokio_postgres::connect(&conn_str, tokio_postgres::NoTls).await?;
    let task = tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(Client { client, task })
}

impl Client {
    /// (node name, in recovery) of the server this client reached, asked of
    /// PostgreSQL itself.
    pub async fn whereami(&self) -> Result<(String, bool), tokio_postgres::Error> {
        let row = self
            .client
            .query_one("select host(inet_server_addr()), pg_is_in_recovery()", &[])
            .await?;
        Ok((node_of_ip(row.get::<_, &str>(0)), row.get(1)))
    }

    pub async fn alive(&self) -> bool {
        tokio::time::timeout(Duration::from_secs(5), self.client.simple_query("select 1"))
            .await
            .is_ok_and(|r| r.is_ok())
    }
}

/// Connects, expecting a server error; returns (SQLSTATE, message).
pub async fn connect_err(port: u16) -> (String, String) {
    match tokio::time::timeout(Duration::from_secs(20), connect(port)).await {
        Err(_) => panic!("connect to {port} hung"),
        Ok(Ok(_)) => panic!("connect to {port} succeeded"),
        Ok(Err(e)) => {
            let db = e
                .as_db_error()
                .unwrap_or_else(|| panic!("not an ErrorResponse: {e:?}"));
            (db.code().code().to_owned(), db.message().to_owned())
        }
    }
}

/// GET `path` from `host:port` (a lab node's Patroni REST API).
pub fn http_at(host: &str, port: u16, path: &str) -> Option<(u16, String)> {
    use std::io::Read;
    let addr: std::net::SocketAddr = format!("{host}:{port}").parse().ok()?;
    let mut s = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(1)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).ok()?;
    let text = String::from_utf8_lossy(&buf).into_owned();
    let status = text.split(' ').nth(1)?.parse().ok()?;
    Some((status, text.split_once("\r\n\r\n")?.1.to_owned()))
}

/// Records, every 250 ms until dropped, pgvane's map as `/clusters` shows
/// it (generation, each member's role, lag, source, paused, eligibility)
/// and each lab node's own `/patroni` positions: printed when a lag test
/// fails, so a failure shows what pgvane saw and what Patroni said.
pub struct History {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    lines: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl History {
    pub fn start(admin: u16) -> Self {
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let lines = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let (s, l) = (stop.clone(), lines.clone());
        let thread = std::thread::spawn(move || {
            let t0 = Instant::now();
            let mut n = 0u32;
            // Bounded: at most 20 minutes of samples.
            while !s.load(std::sync::atomic::Ordering::Relaxed) && n < 4800 {
                n += 1;
                let line = format!("{:>7.2}s {}", t0.elapsed().as_secs_f64(), sample(admin));
                l.lock().unwrap().push(line);
                std::thread::sleep(Duration::from_millis(250));
            }
        });
        Self {
            stop,
            lines,
            thread: Some(thread),
        }
    }

    /// Every sample so far, one per line (the last 240 when there are more).
    pub fn dump(&self) -> String {
        let lines = self.lines.lock().unwrap();
        let from = lines.len().saturating_sub(240);
        format!(
            "map history (pgvane /clusters || lab /patroni):\n{}",
            lines[from..].join("\n")
        )
    }

    /// The samples' text, for searching.
    pub fn text(&self) -> String {
        self.lines.lock().unwrap().join("\n")
    }
}

impl Drop for History {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn sample(admin: u16) -> String {
    let mut out = String::new();
    match http(admin, "GET", "/clusters")
        .and_then(|(_, b)| serde_json::from_str::<serde_json::Value>(&b).ok())
    {
        Some(v) => {
            for (name, c) in v.as_object().into_iter().flatten() {
                out.push_str(&format!("{name} gen={} ", c["generation"]));
                for m in c["members"].as_array().into_iter().flatten() {
                    out.push_str(&format!(
                        "{}={}/{} lag={} recv={} src={} self={}{} elig={} ",
                        m["name"].as_str().unwrap_or("?"),
                        m["role"].as_str().unwrap_or("?"),
                        m["state"].as_str().unwrap_or("?"),
                        m["lag"],
                        m["receive_lag"],
                        m["lag_source"].as_str().unwrap_or("?"),
                        m["self_report"].as_str().unwrap_or("?"),
                        if m["replay_paused"] == true {
                            " paused"
                        } else {
                            ""
                        },
                        m["eligible"]
                    ));
                }
                if !c["disagreement"].is_null() {
                    out.push_str(&format!("disagreement={} ", c["disagreement"]));
                }
            }
        }
        None => out.push_str("(no /clusters answer) "),
    }
    out.push_str("|| ");
    for n in NODES {
        let xlog = http_at(&node_ip(n), 8008, "/patroni")
            .and_then(|(_, b)| serde_json::from_str::<serde_json::Value>(&b).ok())
            .map(|v| format!("{} {}", v["role"].as_str().unwrap_or("?"), v["xlog"]))
            .unwrap_or_else(|| "no answer".to_owned());
        out.push_str(&format!("{n}: {xlog}; "));
    }
    out
}

/// A direct connection to a lab node's PostgreSQL (not through pgvane).
pub async fn connect_node(node: &str) -> tokio_postgres::Client {
    let conn_str = format!(
        "host={} port=5432 user=postgres password=postgres dbname=postgres connect_timeout=10",
        node_ip(node)
    );
    let (client, conn) = tokio_postgres::connect(&conn_str, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(async move {
        let _ = conn.await;
    });
    client
}

/// Moves the leader's WAL on by `segments` 16 MiB segments at once (a
/// small write, then a WAL switch, per segment).
pub async fn switch_wal(leader: &tokio_postgres::Client, segments: usize) {
    leader
        .batch_execute("create table if not exists lab_lag(x int)")
        .await
        .unwrap();
    for i in 0..segments {
        leader
            .batch_execute(&format!(
                "insert into lab_lag values ({i}); select pg_switch_wal()"
            ))
            .await
            .unwrap();
    }
}

/// `n` clients of `port` on `node`, connecting at most `4 n + 8` times.
pub async fn clients_on(port: u16, node: &str, n: usize) -> Vec<Client> {
    let mut out = Vec::new();
    for _ in 0..(4 * n + 8) {
        if out.len() == n {
            break;
        }
        let c = connect(port).await.unwrap();
        if c.whereami().await.unwrap().0 == node {
            out.push(c);
        }
    }
    assert_eq!(
        out.len(),
        n,
        "could not place {n} clients of port {port} on {node}"
    );
    out
}

/// Waits up to `within` until every client in `clients` is disconnected.
pub async fn all_gone(clients: &[Client], within: Duration) -> bool {
    wait_until_async(within, || async {
        for c in clients {
            if c.alive().await {
                return false;
            }
        }
        true
    })
    .await
}

/// Waits up to `within` until a new client of `port` lands on `node`
/// (4 connects per try, held together so the balancer spreads them).
pub async fn lands_again(port: u16, node: &str, within: Duration) -> bool {
    wait_until_async(within, || async {
        let mut held = Vec::new();
        for _ in 0..4 {
            let Ok(c) = connect(port).await else {
                return false;
            };
            if c.whereami().await.is_ok_and(|w| w.0 == node) {
                return true;
            }
            held.push(c);
        }
        false
    })
    .await
}

/// What a [`Prober`] saw: each session's (node, in recovery), and the
/// SQLSTATE (or "io") of each failed connect.
#[derive(Debug, Default)]
pub struct ProbeReport {
    pub sessions: Vec<(String, bool)>,
    pub errors: std::collections::BTreeMap<String, usize>,
}

impl ProbeReport {
    /// Sessions that landed on a node in recovery (never allowed on a
    /// leader port).
    pub fn in_recovery(&self) -> Vec<&(String, bool)> {
        self.sessions.iter().filter(|s| s.1).collect()
    }

    /// Prints the report under `label` and fails if a session landed on a
    /// node in recovery or a connect hung (`log`: pgvane's log, shown then).
    pub fn assert_leader_port_clean(&self, label: &str, log: &str) {
        eprintln!(
            "{label}: {} leader-port sessions by the prober ({:?} refused)",
            self.sessions.len(),
            self.errors
        );
        assert!(
            self.in_recovery().is_empty(),
            "leader-port sessions on a node in recovery: {:?}\n{log}",
            self.in_recovery()
        );
        assert!(!self.errors.contains_key("hang"), "{self:?}");
    }
}

/// Connects to `port` every 50 ms (20 per second, each session asked
/// where it is and closed) until stopped; at most 10 minutes. A connect
/// taking over 40 s counts as a hang.
pub struct Prober {
    stop: tokio::sync::watch::Sender<bool>,
    task: tokio::task::JoinHandle<ProbeReport>,
    sessions: std::sync::Arc<std::sync::atomic::AtomicUsize>,
}

impl Prober {
    pub fn start(port: u16) -> Self {
        let (stop, mut stopped) = tokio::sync::watch::channel(false);
        let sessions = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counted = std::sync::Arc::clone(&sessions);
        let task = tokio::spawn(async move {
            let mut report = ProbeReport::default();
            let t0 = Instant::now();
            while !*stopped.borrow() && t0.elapsed() < Duration::from_secs(600) {
                let next = Instant::now() + Duration::from_millis(50);
                // A leader port holds a connect up to leader_wait_ms (30 s by
                // default) while the leader is replaced: longer is a hang.
                match tokio::time::timeout(Duration::from_secs(40), connect(port)).await {
                    Ok(Ok(c)) => match c.whereami().await {
                        Ok(w) => {
                            report.sessions.push(w);
                            counted.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        }
                        Err(_) => *report.errors.entry("query".into()).or_default() += 1,
                    },
                    Ok(Err(e)) => {
                        let code = e
                            .as_db_error()
                            .map_or_else(|| "io".to_owned(), |d| d.code().code().to_owned());
                        *report.errors.entry(code).or_default() += 1;
                    }
                    Err(_) => *report.errors.entry("hang".into()).or_default() += 1,
                }
                tokio::select! {
                    () = tokio::time::sleep_until(next.into()) => {}
                    _ = stopped.changed() => {}
                }
            }
            report
        });
        Self {
            stop,
            task,
            sessions,
        }
    }

    /// Sessions that reached a node so far.
    pub fn sessions(&self) -> usize {
        self.sessions.load(std::sync::atomic::Ordering::Relaxed)
    }

    pub async fn stop(self) -> ProbeReport {
        let _ = self.stop.send(true);
        self.task.await.unwrap()
    }
}

/// Descriptors a pgvane whose split port has `pool_size: 1` may hold after
/// a test beyond those it had before the first client: one pooled backend
/// per lab node (a Patroni API connection opened meanwhile is covered by
/// the node that had none).
pub const POOLED_FDS: usize = 3;

/// Open file descriptors of process `pid`.
pub fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .count()
}

/// Waits up to 10 s for `pid` to hold at most `fds` + [`POOLED_FDS`]
/// descriptors again and asserts it does; returns the count.
pub fn assert_fds_back(pid: u32, fds: usize) -> usize {
    wait_until(Duration::from_secs(10), || {
        open_fds(pid) <= fds + POOLED_FDS
    });
    let now = open_fds(pid);
    assert!(
        now <= fds + POOLED_FDS,
        "descriptors not back: {fds} -> {now}"
    );
    now
}

/// Resident memory of process `pid` in KiB.
pub fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches(" kB").trim().parse().ok())
        .unwrap()
}

/// psql (libpq) to 127.0.0.1:`port` as postgres/postgres with `extra`
/// conninfo keywords (sslmode, …); (success, stdout + stderr).
pub fn psql_at(port: u16, extra: &str, sql: &str) -> (bool, String) {
    let out = Command::new("psql")
        .arg(format!(
            "host=127.0.0.1 port={port} user=postgres dbname=postgres connect_timeout=10 {extra}"
        ))
        .args(["-X", "-At", "-c", sql])
        .env("PGPASSWORD", "postgres")
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

/// Connects to 127.0.0.1:`port` from source address `ip` (any 127.0.0.0/8
/// address is local) as postgres/postgres to `db`; an error as
/// (SQLSTATE, message), or the client error's text with SQLSTATE "".
pub async fn connect_from(ip: &str, port: u16, db: &str) -> Result<Client, (String, String)> {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind(format!("{ip}:0").parse().unwrap()).unwrap();
    let work = async {
        let tcp = socket
            .connect(([127, 0, 0, 1], port).into())
            .await
            .map_err(|e| (String::new(), e.to_string()))?;
        let mut cfg = tokio_postgres::Config::new();
        cfg.user("postgres").password("postgres").dbname(db);
        let (client, conn) =
            cfg.connect_raw(tcp, tokio_postgres::NoTls)
                .await
                .map_err(|e| match e.as_db_error() {
                    Some(d) => (d.code().code().to_owned(), d.message().to_owned()),
                    None => (String::new(), e.to_string()),
                })?;
        let task = tokio::spawn(async move {
            let _ = conn.await;
        });
        Ok(Client { client, task })
    };
    tokio::time::timeout(Duration::from_secs(20), work)
        .await
        .unwrap_or_else(|_| panic!("connect from {ip} to {port} hung"))
}

/// Turns the lab's PostgreSQL `ssl` back off when a test ends, even on
/// failure, so later tests see the lab as `up` leaves it.
pub struct SslOff;

impl Drop for SslOff {
    fn drop(&mut self) {
        let _ = Command::new(root().join("deploy/lab/lab.sh"))
            .args(["ssl", "off"])
            .status();
    }
}

/// What a fake PostgreSQL reads first: the startup packet (its body after
/// the length), answering an SSLRequest before it with `N` as a server
/// with `ssl` off does. `None` when the client left.
pub async fn read_startup(s: &mut tokio::net::TcpStream) -> Option<Vec<u8>> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    loop {
        let mut len = [0u8; 4];
        s.read_exact(&mut len).await.ok()?;
        let len = (u32::from_be_bytes(len) as usize).clamp(4, 10_000);
        let mut body = vec![0u8; len - 4];
        s.read_exact(&mut body).await.ok()?;
        if body == [0x04, 0xd2, 0x16, 0x2f] {
            s.write_all(b"N").await.ok()?;
            continue;
        }
        return Some(body);
    }
}

/// `psql` against the console: (exit success, stdout, stderr).
pub fn psql(port: u16, password: &str, database: &str, sql: &str) -> (bool, String, String) {
    let out = std::process::Command::new("psql")
        .args([
            "-X",
            "-A",
            "-F",
            "|",
            "-h",
            "127.0.0.1",
            "-p",
            &port.to_string(),
        ])
        .args(["-U", "admin", "-d", database, "-c", sql])
        .env("PGPASSWORD", password)
        .env("PGCONNECT_TIMEOUT", "5")
        .output()
        .expect("psql (postgresql-client-15)");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The rows of an unaligned psql answer as header → value maps.
pub fn rows(text: &str) -> Vec<std::collections::BTreeMap<String, String>> {
    let mut lines = text
        .lines()
        .filter(|l| !l.is_empty() && !l.starts_with('('));
    let header: Vec<&str> = lines.next().unwrap_or_default().split('|').collect();
    lines
        .map(|l| {
            header
                .iter()
                .zip(l.split('|'))
                .map(|(h, v)| ((*h).to_owned(), v.to_owned()))
                .collect()
        })
        .collect()
}
