//! Half-open connections: a client in its own network namespace (a veth
//! pair, pgvane listening on the host end) whose link is cut while it holds
//! something, so no FIN or RST ever comes. With short `tcp_keepalives_*`
//! an idle-in-transaction split client and an idle role-port client are
//! noticed and ended (the transaction rolled back, the role port's server
//! connection closed); with `tcp_user_timeout_ms` a client cut off
//! mid-result is. Each: the leader's only backend goes to a bystander,
//! descriptors return to baseline. Needs root and iproute2; the namespace
//! names are fixed (a crashed run's leftovers are removed by the next), so
//! two runs of this file must not overlap.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::disallowed_methods)]

mod common;
use common::*;
use std::io::{BufRead, BufReader, Write};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// A network namespace joined to the host by a veth pair: the host end is
/// `10.231.<n>.1/30`, the namespace end `.2`. Removed on drop.
struct Netns {
    name: String,
    host_if: String,
    ns_if: String,
    host_ip: String,
}

fn ip(args: &[&str]) {
    let out = Command::new("ip").args(args).output().unwrap();
    assert!(
        out.status.success(),
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

impl Netns {
    fn new(n: u8) -> Self {
        let ns = Self {
            name: format!("pgvane-t{n}"),
            host_if: format!("pgvane-h{n}"),
            ns_if: format!("pgvane-c{n}"),
            host_ip: format!("10.231.{n}.1"),
        };
        ns.remove(); // left over from an interrupted run
        let ns_ip = format!("10.231.{n}.2/30");
        let host_cidr = format!("{}/30", ns.host_ip);
        ip(&["netns", "add", &ns.name]);
        ip(&[
            "link",
            "add",
            &ns.host_if,
            "type",
            "veth",
            "peer",
            "name",
            &ns.ns_if,
        ]);
        ip(&["link", "set", &ns.ns_if, "netns", &ns.name]);
        ip(&["addr", "add", &host_cidr, "dev", &ns.host_if]);
        ip(&["link", "set", &ns.host_if, "up"]);
        ip(&["-n", &ns.name, "addr", "add", &ns_ip, "dev", &ns.ns_if]);
        ip(&["-n", &ns.name, "link", "set", &ns.ns_if, "up"]);
        ip(&["-n", &ns.name, "link", "set", "lo", "up"]);
        ns
    }

    /// Cuts the link inside the namespace: whatever pgvane sends from now
    /// on is dropped silently, and nothing comes back.
    fn cut(&self) {
        ip(&["-n", &self.name, "link", "set", &self.ns_if, "down"]);
    }

    /// Waits until every byte pgvane sent into the namespace was
    /// acknowledged (the last answer's ACK may still be delayed by up to
    /// 40 ms): with bytes in flight, retransmission rules the socket and
    /// keepalive never starts, which is `tcp_user_timeout_ms`'s case.
    fn settle(&self) {
        let octets: Vec<u8> = self
            .host_ip
            .split('.')
            .map(|o| o.parse().unwrap())
            .collect();
        let ours = format!(
            "{:08X}:",
            u32::from_le_bytes([octets[0], octets[1], octets[2], octets[3]])
        );
        // (sockets, bytes not yet acknowledged) of pgvane's established
        // sockets on the host end; an earlier run's orphans may still be
        // retransmitting their FIN in other states.
        let in_flight = || {
            std::fs::read_to_string("/proc/net/tcp")
                .unwrap()
                .lines()
                .skip(1)
                .filter_map(|l| {
                    let f: Vec<&str> = l.split_whitespace().collect();
                    let tx = f[4].split(':').next()?;
                    (f[1].starts_with(&ours) && f[3] == "01")
                        .then(|| u64::from_str_radix(tx, 16).unwrap_or(0))
                })
                .fold((0, 0), |(n, bytes), b| (n + 1, bytes + b))
        };
        let settled = wait_until(Duration::from_secs(5), || in_flight().1 == 0);
        let (sockets, bytes) = in_flight();
        assert!(settled, "{bytes} bytes still unacknowledged");
        assert!(sockets > 0, "no connection of pgvane's into the namespace");
    }

    /// psql inside the namespace to pgvane's `port` on the host end, with
    /// its stdin and stdout piped.
    fn psql(&self, port: u16) -> Psql {
        let mut child = Command::new("ip")
            .args(["netns", "exec", &self.name, "psql"])
            .arg(format!(
                "host={} port={port} user=postgres dbname=postgres connect_timeout=10",
                self.host_ip
            ))
            .args(["-X", "-At", "-v", "ON_ERROR_STOP=1"])
            .env("PGPASSWORD", "postgres")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        // Bounded: once the test stops receiving, this thread stops reading
        // and psql blocks writing its stdout (it then stops reading its
        // socket too).
        let (tx, lines) = mpsc::sync_channel(16);
        let stdout = child.stdout.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Psql { child, lines }
    }

    fn remove(&self) {
        let _ = Command::new("ip")
            .args(["link", "del", &self.host_if])
            .output();
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .output();
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        self.remove();
    }
}

/// A psql process in the namespace (killed by pid on drop).
struct Psql {
    child: Child,
    lines: mpsc::Receiver<String>,
}

impl Psql {
    /// Sends `sql` and waits for a line equal to `marker` (which the SQL
    /// must print) within 10 s; returns the lines before it.
    fn run(&mut self, sql: &str, marker: &str) -> Vec<String> {
        let stdin = self.child.stdin.as_mut().unwrap();
        writeln!(stdin, "{sql}").unwrap();
        stdin.flush().unwrap();
        let mut seen = Vec::new();
        loop {
            let line = self
                .lines
                .recv_timeout(Duration::from_secs(10))
                .unwrap_or_else(|_| panic!("psql printed {seen:?}, not {marker}"));
            if line == marker {
                return seen;
            }
            seen.push(line);
        }
    }
}

impl Drop for Psql {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// pgvane with a split port (one leader backend) and a leader role port,
/// both listening on `ns`'s host end, with `globals` on top.
fn start_on(ns: &Netns, globals: &str) -> (Pgvane, u16, u16) {
    healthy_lab();
    let p = Ports::new();
    let (split, edge) = (free_port(), free_port());
    let ip = &ns.host_ip;
    let yaml = format!("{globals}{}", lab_config(&p)).replace(
        "    ports:\n",
        &format!(
            "    users:\n      - {{name: postgres, password: postgres}}\n    ports:\n      app: {{listen: '{ip}:{split}', mode: split, roles: [sync, async], pool_size: 1, pool_acquire_timeout_ms: 60000}}\n      edge: {{listen: '{ip}:{edge}', roles: [leader]}}\n"
        ),
    );
    (Pgvane::start(&yaml, p.admin), split, edge)
}

/// A bystander on the host logging in to the split port: it needs the
/// leader's only backend. Returns how long that took.
async fn bystander_waits(ns: &Netns, split: u16, within: Duration) -> (Duration, Client) {
    let t = Instant::now();
    let conn = format!(
        "host={} port={split} user=postgres password=postgres dbname=postgres",
        ns.host_ip
    );
    let (client, conn) = tokio::time::timeout(
        within,
        tokio_postgres::connect(&conn, tokio_postgres::NoTls),
    )
    .await
    .unwrap_or_else(|_| panic!("the bystander waited over {within:?}"))
    .unwrap();
    let task = tokio::spawn(async move {
        let _ = conn.await;
    });
    (t.elapsed(), Client { client, task })
}

const FAST_KEEPALIVE: &str =
    "tcp_keepalives_idle_s: 1\ntcp_keepalives_interval_s: 1\ntcp_keepalives_count: 2\n";

#[tokio::test(flavor = "multi_thread")]
async fn a_vanished_client_idle_in_transaction_is_ended_by_keepalive() {
    let ns = Netns::new(1);
    let (pg, split, _) = start_on(&ns, FAST_KEEPALIVE);
    let pid = pg.child.id();
    let fds = open_fds(pid);
    let leader = connect_node(&leader()).await;
    leader
        .batch_execute("create table if not exists hostile_half_open (v text)")
        .await
        .unwrap();
    let tag = format!("vanished-{}", std::process::id());
    let mut psql = ns.psql(split);
    psql.run(
        &format!("begin; insert into hostile_half_open values ('{tag}'); select 'in-tx';"),
        "in-tx",
    );
    ns.settle();
    ns.cut();
    let (waited, c) = bystander_waits(&ns, split, Duration::from_secs(30)).await;
    eprintln!(
        "half-open: the bystander got the leader's backend {waited:?} after an idle-in-transaction client's link was cut (keepalive 1 s + 2 x 1 s)"
    );
    assert!(c.alive().await);
    let rows = leader
        .query_one(
            "select count(*) from hostile_half_open where v = $1",
            &[&tag],
        )
        .await
        .unwrap()
        .get::<_, i64>(0);
    assert_eq!(rows, 0, "the vanished client's uncommitted row survived");
    drop(psql);
    drop(c);
    assert_fds_back(pid, fds);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_vanished_role_port_client_is_ended_by_keepalive() {
    let ns = Netns::new(2);
    let (pg, _, edge) = start_on(&ns, FAST_KEEPALIVE);
    let pid = pg.child.id();
    let fds = open_fds(pid);
    let leader = connect_node(&leader()).await;
    let mut psql = ns.psql(edge);
    let seen = psql.run("select pg_backend_pid(); select 'pid';", "pid");
    let backend: i32 = seen.last().unwrap().parse().unwrap();
    ns.settle();
    ns.cut();
    let t = Instant::now();
    let gone = wait_until_async(Duration::from_secs(30), || async {
        leader
            .query_opt("select 1 from pg_stat_activity where pid = $1", &[&backend])
            .await
            .unwrap()
            .is_none()
    })
    .await;
    eprintln!(
        "half-open: the role-port relay of a cut-off client ended and its backend {backend} exited after {:?}",
        t.elapsed()
    );
    assert!(
        gone,
        "backend {backend} of a vanished role-port client still runs"
    );
    drop(psql);
    assert_fds_back(pid, fds);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_client_cut_off_mid_result_is_ended_by_tcp_user_timeout() {
    let ns = Netns::new(3);
    let (pg, split, _) = start_on(&ns, "tcp_user_timeout_ms: 2000\n");
    let pid = pg.child.id();
    let fds = open_fds(pid);
    let rss = rss_kib(pid);
    let mut psql = ns.psql(split);
    // Inside a transaction, so the leader's backend is held; then about
    // 2 GB of COPY data that psql writes to a stdout nobody reads any more,
    // so psql stops reading its socket, and the link is cut with bytes in
    // flight.
    psql.run("begin; select 'in-tx';", "in-tx");
    let stdin = psql.child.stdin.as_mut().unwrap();
    writeln!(
        stdin,
        "copy (select repeat('x', 1000) from generate_series(1, 2000000)) to stdout;"
    )
    .unwrap();
    stdin.flush().unwrap();
    let leader = connect_node(&leader()).await;
    let copying = wait_until_async(Duration::from_secs(10), || async {
        leader
            .query_one(
                "select count(*) from pg_stat_activity where query like 'copy (select repeat%' and pid <> pg_backend_pid()",
                &[],
            )
            .await
            .unwrap()
            .get::<_, i64>(0)
            > 0
    })
    .await;
    assert!(copying, "the COPY did not start on the leader");
    ns.cut();
    let (waited, c) = bystander_waits(&ns, split, Duration::from_secs(30)).await;
    let rss_after = rss_kib(pid);
    eprintln!(
        "half-open: the bystander got the leader's backend {waited:?} after a client was cut off mid-COPY (tcp_user_timeout_ms 2000); RSS {rss} -> {rss_after} KiB"
    );
    assert!(c.alive().await);
    assert!(rss_after < rss + 32 * 1024, "RSS {rss} -> {rss_after} KiB");
    drop(psql);
    drop(c);
    assert_fds_back(pid, fds);
}
