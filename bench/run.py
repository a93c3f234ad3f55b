#!/usr/bin/env python3
"""pgvane benchmark: one interleaved run of pgbench through a direct
connection and pgvane beside a reference proxy, plus RSS per idle client for
1,000 idle clients. Needs the lab up (deploy/lab/lab.sh up) and a release
build (cargo build --release). Stdlib only.

    bench/run.py [--split] [--repeats 4] [--seconds 5] [--idle 1000] [--out FILE]
    bench/run.py [--split] --syscalls [--txns 8000] [--clients 4] [--repeats 3]
    bench/run.py [--split] --allocs [--txns 8000] [--clients 4] [--repeats 3]
    bench/run.py --split --busy-idle 5000 [--repeats 3] [--seconds 10]

Default: role ports (pgvane's leader port vs HAProxy, Debian). --split:
pgvane's split port vs pgbouncer (Debian, transaction mode,
default_pool_size = pgvane's pool_size).

--syscalls counts system calls per transaction (perf trace -s, or
strace -c -f with --tracer strace, on every thread of pgvane and of the
reference proxy, the same fixed number of
pgbench transactions for each) instead of timing; --allocs counts calls
to glibc's malloc the same way (a perf uprobe); --busy-idle N measures
p50/p99 latency of 16 busy `-S` clients while N idle clients stay
connected (split port vs pgbouncer). Both live in bench/trace.py.

bench/ryw.py, the read-after-write benchmark, shares these helpers.

Every process it starts it stops by pid. patroni_proxy is not run: it is
not packaged for Debian and this machine cannot fetch its source.
"""
import argparse, json, os, re, signal, socket, statistics, subprocess, sys, tempfile, time, urllib.request
import counting

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PGBIN = "/usr/lib/postgresql/15/bin"
ENV = dict(os.environ, PGPASSWORD="postgres")
CLK = os.sysconf("SC_CLK_TCK")


def free_port():
    s = socket.socket(); s.bind(("127.0.0.1", 0)); p = s.getsockname()[1]; s.close(); return p


def leader():
    for n in (1, 2, 3):
        try:
            with urllib.request.urlopen(f"http://127.0.0.{10+n}:8008/cluster", timeout=2) as r:
                d = json.load(r)
            for m in d["members"]:
                if m["role"] == "leader":
                    return m["host"]
        except OSError:
            pass
    sys.exit("no lab leader: run deploy/lab/lab.sh up")


def cpu_seconds(pid):
    f = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(f[11]) + int(f[12])) / CLK


def wakeups(pid):
    """Voluntary context switches of every thread of `pid` so far: a thread
    that sleeps in epoll_wait and is woken by the next reply counts one."""
    n = 0
    for t in os.listdir(f"/proc/{pid}/task"):
        try:
            for line in open(f"/proc/{pid}/task/{t}/status"):
                if line.startswith("voluntary_ctxt_switches:"):
                    n += int(line.split()[1])
        except OSError:
            pass  # the thread ended meanwhile
    return n


def rss_kib(pid):
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def wait_port(port, t=10):
    end = time.time() + t
    while time.time() < end:
        try:
            socket.create_connection(("127.0.0.1", port), 0.2).close(); return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listening on {port}")


# Extra command-line arguments per pgvane instance name ("pgvane", "before").
EXTRA_ARGS = {}
# Top-level config lines per pgvane target name (e.g. worker_packing: true).
EXTRA_TOP = {}


def spawn_pgvane_ports(tmp, cluster_yaml, names=("port",), binary=None, name="pgvane"):
    """Starts pgvane (`binary`, default this checkout's release build) on a
    lab cluster block whose `{name}` placeholders get a free port each;
    returns (process, {name: port}, admin port)."""
    ports, admin = {n: free_port() for n in names}, free_port()
    cfg = os.path.join(tmp, f"{name}.yaml")
    top = "".join(line + "\n" for line in EXTRA_TOP.get(name, []))
    open(cfg, "w").write(f"""{top}cluster_update_interval: 3
listen_address: 127.0.0.1:{admin}
clusters:
  lab:
    hosts: [http://127.0.0.11:8008, http://127.0.0.12:8008, http://127.0.0.13:8008]
{cluster_yaml.format(**ports)}""")
    log = os.path.join(tmp, f"{name}.log")
    # The caller stops it by pid in its finally block.
    extra = EXTRA_ARGS.get(name, [])
    p = subprocess.Popen(counting.WRAP + [binary or os.path.join(ROOT, "target/release/pgvane"), "--config", cfg] + extra,
                         stdout=subprocess.DEVNULL, stderr=open(log, "w"),
                         env=dict(os.environ, RUST_LOG="warn"))
    try:
        for port in ports.values():
            wait_port(port, 60 if counting.WRAP else 10)
    except RuntimeError:
        p.kill(); p.wait()
        raise RuntimeError(f"pgvane did not listen; {log}: {open(log).read()[-2000:]}")
    for _ in range(100):
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{admin}/ready", timeout=1); break
        except OSError:
            time.sleep(0.05)
    return p, ports, admin


def spawn_pgvane(tmp, cluster_yaml, binary=None, name="pgvane"):
    """spawn_pgvane_ports for one port, `{port}`; returns (process, port)."""
    p, ports, _ = spawn_pgvane_ports(tmp, cluster_yaml, ("port",), binary, name)
    return p, ports["port"]


POOL_SIZE = 20


def start_pgvane(leader_ip, tmp, binary=None, name="pgvane"):
    return spawn_pgvane(tmp, "    ports:\n      rw: {{listen: 127.0.0.1:{port}, roles: [leader]}}\n",
                        binary, name)


def start_pgvane_split(leader_ip, tmp, binary=None, name="pgvane"):
    return spawn_pgvane(tmp, "    users: [{{name: postgres, password: postgres}}]\n    ports:\n"
                             "      app: {{listen: 127.0.0.1:{port}, mode: split, roles: [sync, async], pool_size: "
                             + str(POOL_SIZE) + "}}\n", binary, name)


PGBOUNCER = "/usr/sbin/pgbouncer"


def haproxy_version():
    out = subprocess.run(["/usr/sbin/haproxy", "-v"], capture_output=True, text=True).stdout
    m = re.search(r"version (\d+\.\d+\.\d+)", out)
    return m.group(1) if m else "?"


def pgbouncer_version(binary):
    out = subprocess.run([binary, "--version"], capture_output=True, text=True).stdout
    m = re.search(r"PgBouncer (\d+)\.(\d+)", out)
    return (int(m.group(1)), int(m.group(2))) if m else (0, 0)


def start_pgbouncer(leader_ip, tmp):
    port = free_port()
    d = os.path.join(tmp, "pgbouncer"); os.makedirs(d, exist_ok=True); os.chmod(tmp, 0o755); os.chmod(d, 0o777)
    open(os.path.join(d, "userlist.txt"), "w").write('"postgres" "postgres"\n')
    cfg = os.path.join(d, "pgbouncer.ini")
    open(cfg, "w").write(f"""[databases]
postgres = host={leader_ip} port=5432 dbname=postgres
[pgbouncer]
listen_addr = 127.0.0.1
listen_port = {port}
unix_socket_dir =
auth_type = scram-sha-256
auth_file = {d}/userlist.txt
pool_mode = transaction
default_pool_size = {POOL_SIZE}
max_client_conn = 6000
logfile = {d}/pgbouncer.log
""" + ("max_prepared_statements = 200\n" if pgbouncer_version(PGBOUNCER) >= (1, 21) else ""))
    if counting.WRAP and not os.getuid():
        # Under callgrind as postgres from the start: callgrind_control
        # reaches a process through files named after its user, which a
        # setuid after start (-u) would leave unreachable.
        os.chmod(d, 0o777)
        args = ["runuser", "-u", "postgres", "--"] + counting.callgrind_wrap(d) + [PGBOUNCER, cfg]
    else:
        args = counting.WRAP + ([PGBOUNCER, cfg] if os.getuid() else [PGBOUNCER, "-u", "postgres", cfg])
    p = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_port(port, 60 if counting.WRAP else 10)
    except RuntimeError:
        p.kill(); raise
    return p, port


def start_haproxy(leader_ip, tmp):
    port = free_port()
    cfg = os.path.join(tmp, "haproxy.cfg")
    open(cfg, "w").write(f"""global
    maxconn 4000
defaults
    mode tcp
    timeout connect 3s
    timeout client 1h
    timeout server 1h
listen rw
    bind 127.0.0.1:{port}
    server leader {leader_ip}:5432
""")
    p = subprocess.Popen(["/usr/sbin/haproxy", "-f", cfg, "-db"], stdout=subprocess.DEVNULL, stderr=open(os.path.join(tmp, "haproxy.log"), "w"))
    try:
        wait_port(port, 60 if counting.WRAP else 10)
    except RuntimeError:
        p.kill(); raise
    return p, port


SCRIPTS = {
    "select1": "SELECT 1;\n",
    # Each client records its own application_name, so most checkouts
    # apply settings to the backend they get: the cost of settings on
    # checkout instead of a pool per value.
    "set_app": "\\set aid random(1, 100000 * :scale)\n"
               "SET application_name = app:client_id;\n"
               "SELECT abalance FROM pgbench_accounts WHERE aid = :aid;\n",
}

SPLIT_WORKLOADS = [
    ("SELECT 1, 1 client", ["-c", "1", "-j", "1", "-M", "simple"], "select1"),
    ("-S simple, 16 clients", ["-S", "-c", "16", "-j", "2", "-M", "simple"], False),
    ("-S extended, 16 clients", ["-S", "-c", "16", "-j", "2", "-M", "extended"], False),
    ("-S prepared, 16 clients", ["-S", "-c", "16", "-j", "2", "-M", "prepared"], False),
    ("-S simple, 64 clients", ["-S", "-c", "64", "-j", "2", "-M", "simple"], False),
    ("-S extended, 64 clients", ["-S", "-c", "64", "-j", "2", "-M", "extended"], False),
    ("-S prepared, 64 clients", ["-S", "-c", "64", "-j", "2", "-M", "prepared"], False),
    ("tpcb-like, 16 clients", ["-b", "tpcb-like", "-c", "16", "-j", "2", "-M", "simple"], False),
    ("-S -C new connection per txn, 8 clients", ["-S", "-C", "-c", "8", "-j", "2", "-M", "simple"], False),
    ("SET application_name + -S read, 16 clients", ["-c", "16", "-j", "2", "-M", "simple"], "set_app"),
]

WORKLOADS = [
    # name, pgbench args (clients, mode...), uses select1 script
    ("SELECT 1, 1 client", ["-c", "1", "-j", "1", "-M", "simple"], "select1"),
    ("SELECT 1, 16 clients", ["-c", "16", "-j", "2", "-M", "simple"], "select1"),
    ("SELECT 1, 64 clients", ["-c", "64", "-j", "2", "-M", "simple"], "select1"),
    ("-S simple, 16 clients", ["-S", "-c", "16", "-j", "2", "-M", "simple"], False),
    ("-S extended, 16 clients", ["-S", "-c", "16", "-j", "2", "-M", "extended"], False),
    ("-S prepared, 16 clients", ["-S", "-c", "16", "-j", "2", "-M", "prepared"], False),
    ("-S -C new connection per txn, 8 clients", ["-S", "-C", "-c", "8", "-j", "2", "-M", "simple"], False),
]


def syscall_workloads(split, clients):
    c = ["-c", str(clients), "-j", str(min(clients, 2))]
    rows = [("-S simple", ["-S", "-M", "simple"] + c, False)]
    if split:
        rows += [("-S extended", ["-S", "-M", "extended"] + c, False),
                 ("-S prepared", ["-S", "-M", "prepared"] + c, False),
                 ("tpcb-like", ["-b", "tpcb-like", "-M", "simple"] + c, False)]
    else:
        rows = [("SELECT 1", ["-M", "simple"] + c, "select1")] + rows
    return rows


def pgbench(host, port, args, seconds, script):
    cmd = [f"{PGBIN}/pgbench", "-h", host, "-p", str(port), "-U", "postgres", "-n", "-T", str(seconds)] + args
    if script:
        cmd += ["-f", script]
    cmd.append("postgres")
    out = subprocess.run(cmd, env=ENV, capture_output=True, text=True, timeout=seconds * 4 + 60)
    m = re.search(r"tps = ([\d.]+)", out.stdout)
    lat = re.search(r"latency average = ([\d.]+) ms", out.stdout)
    n = re.search(r"number of transactions actually processed: (\d+)", out.stdout)
    failed = re.search(r"number of failed transactions: (\d+)", out.stdout)
    if not m or not n or int(n.group(1)) == 0 or "aborted" in out.stderr or (failed and int(failed.group(1)) > 0):
        return None
    return float(m.group(1)), float(lat.group(1)) if lat else None, int(n.group(1))


def idle_rss(pid, port, n, base=None):
    """RSS growth per client with n idle clients connected through the
    proxy, against `base` (KiB; default: the RSS just before connecting).
    Rounds after the first pass the process's RSS before its first round,
    so memory a round leaves behind counts in the next."""
    code = f"""
import psycopg, resource, sys, time
resource.setrlimit(resource.RLIMIT_NOFILE, ({n} + 100, {n} + 100))
conns = [psycopg.connect(host='127.0.0.1', port={port}, user='postgres', password='postgres', dbname='postgres') for _ in range({n})]
for c in conns[:10]: c.execute('select 1')
print('ready', flush=True)
sys.stdin.readline()
"""
    before = rss_kib(pid) if base is None else base
    py = "/opt/pgvane-lab-venv/bin/python"
    p = subprocess.Popen([py, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    line = p.stdout.readline()
    if line.strip() != "ready":
        p.kill(); raise RuntimeError("idle clients failed")
    time.sleep(1)
    after = rss_kib(pid)
    p.stdin.write("\n"); p.stdin.flush(); p.wait(timeout=60)
    time.sleep(1)  # the proxy sees the clients leave
    return (after - before) / n


def special(a, targets, scripts, ref):
    """--syscalls, --allocs and --busy-idle: interleaved over the proxies only."""
    R = "HAProxy" if ref == "haproxy" else "pgbouncer"
    version = '.'.join(map(str, pgbouncer_version(PGBOUNCER))) if ref == 'pgbouncer' else haproxy_version()
    results = {}
    if a.allocs or a.syscalls or a.instructions:
        per_client = max(1, a.txns // a.clients)

        def count(pid, host, port, args, script):
            if a.instructions:
                return counting.count_instructions(pid, host, port, args, per_client, script)
            if a.allocs:
                return counting.count_allocs(pid, host, port, args, per_client, script)
            return counting.count_syscalls(pid, host, port, args, per_client, script, a.tracer)

        def line(got):
            if not got:
                return "FAILED"
            if a.instructions:
                return f"{got[0]:9.0f} instructions/txn over {got[1]} txns"
            if a.allocs:
                return f"{got[0]:6.2f} mallocs/txn over {got[1]} txns"
            per, _, n = got
            top = sorted(per.items(), key=lambda kv: -kv[1])[:4]
            return f"{sum(per.values()):6.2f} calls/txn over {n} txns: " + ", ".join(f"{k} {v:.2f}" for k, v in top)

        for r in range(a.repeats):
            for wname, args, s1 in syscall_workloads(a.split, a.clients):
                order = targets if r % 2 == 0 else list(reversed(targets))
                for tname, host, port, pid in order:
                    got = count(pid, host, port, args, scripts.get(s1))
                    results.setdefault((wname, tname), []).append(got)
                    print(f"repeat {r+1} {wname:12} {tname:9} {line(got)}", flush=True)
        runs = f"{a.clients} pgbench clients, {per_client * a.clients} transactions per counted run, {a.repeats} interleaved repeats"
        if a.instructions:
            text = counting.alloc_table(results, "user-space instructions per transaction", 0) + (
                f"\n\n{runs}, each proxy under valgrind's callgrind (user space only; after a warm-up run, less a"
                f" run of one transaction per client, so logins do not count); {R} {version}.")
        elif a.allocs:
            text = counting.alloc_table(results) + f"\n\n{runs}, glibc malloc calls counted with a perf uprobe; {R} {version}."
        else:
            tracer = 'perf trace -s' if a.tracer == 'perf' else 'strace -c -f'
            text = counting.syscall_table(results, targets, ref) + f"\n\n{runs}, counted with {tracer}; {R} {version}."
    else:
        for r in range(a.repeats):
            order = targets if r % 2 == 0 else list(reversed(targets))
            for tname, host, port, pid in order:
                got = counting.busy_beside_idle(host, port, a.busy_idle, ["-S", "-M", "simple", "-c", "16", "-j", "2"],
                                                a.seconds)
                results.setdefault(tname, []).append(got)
                print(f"repeat {r+1} {tname:9} " + (f"p50 {got[0]} µs p99 {got[1]} µs tps {got[2]:.0f}" if got else "FAILED"),
                      flush=True)
        lines = ["| target | p50 µs (min / median / max) | p99 µs (min / median / max) | TPS (median) |",
                 "| --- | ---: | ---: | ---: |"]
        for tname, *_ in targets:
            xs = [x for x in results.get(tname, []) if x]
            if not xs:
                lines.append(f"| {tname} | fails | fails | |"); continue
            f = lambda i: "/".join(str(v) for v in (min(x[i] for x in xs), int(statistics.median(x[i] for x in xs)), max(x[i] for x in xs)))
            lines.append(f"| {tname} | {f(0)} | {f(1)} | {statistics.median(x[2] for x in xs):,.0f} |")
        text = "\n".join(lines) + (f"\n\n16 busy `-S` simple clients for {a.seconds} s beside {a.busy_idle} idle clients, "
                                   f"{a.repeats} interleaved repeats; {R} {version}.")
    print("\n" + text)
    if a.out:
        open(a.out, "w").write(text + "\n")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--split", action="store_true", help="split port vs pgbouncer instead of leader port vs HAProxy")
    ap.add_argument("--repeats", type=int, default=4)
    ap.add_argument("--seconds", type=int, default=5)
    ap.add_argument("--idle", type=int, default=1000, help="idle clients for the RSS figure (0: no RSS figure)")
    ap.add_argument("--only", action="append", default=[], metavar="TEXT",
                    help="run only the workloads whose name contains TEXT (repeatable)")
    ap.add_argument("--out")
    ap.add_argument("--idle-rounds", type=int, default=3, help="rounds of idle clients on the same processes, each measured against the RSS before the first (the worst is reported)")
    ap.add_argument("--idle-only", action="store_true", help="only the idle-client RSS measurement")
    ap.add_argument("--pgbouncer", default=PGBOUNCER, help="pgbouncer binary (e.g. ../shared/anchors/pgbouncer-1.25/pgbouncer)")
    ap.add_argument("--baseline", help="an older pgvane release binary, run as a fourth interleaved target ('before'), idle-memory rounds included")
    ap.add_argument("--pgvane-arg", action="append", default=[], help="extra argument for pgvane (repeatable), e.g. --pgvane-arg=--threads=1")
    ap.add_argument("--pgvane-config", action="append", default=[], metavar="LINE",
                    help="top-level config line for pgvane (repeatable), e.g. --pgvane-config 'worker_packing: true'")
    ap.add_argument("--baseline-arg", action="append", default=[], help="extra argument for the baseline pgvane (repeatable)")
    ap.add_argument("--syscalls", action="store_true", help="count system calls per transaction (strace -c -f) instead of timing")
    ap.add_argument("--allocs", action="store_true", help="count glibc malloc calls per transaction (a perf uprobe) instead of timing")
    ap.add_argument("--instructions", action="store_true",
                    help="count user-space instructions per transaction (each proxy under valgrind's callgrind, pgvane with io_uring: off) instead of timing")
    ap.add_argument("--tracer", choices=["perf", "strace"], default="perf", help="--syscalls: perf trace -s (default) or strace -c -f")
    ap.add_argument("--txns", type=int, default=8000, help="--syscalls, --allocs, --instructions: transactions per counted run")
    ap.add_argument("--clients", type=int, default=4, help="--syscalls, --allocs, --instructions: pgbench clients")
    ap.add_argument("--busy-idle", type=int, default=0, metavar="N",
                    help="p50/p99 of 16 busy -S clients with N idle clients connected (split port vs pgbouncer)")
    a = ap.parse_args()
    counting.raise_nofile(max(a.busy_idle, a.idle) * 2 + 1000)
    globals()["PGBOUNCER"] = os.path.abspath(a.pgbouncer)
    EXTRA_ARGS.update(pgvane=a.pgvane_arg, before=a.baseline_arg)
    EXTRA_TOP.update(pgvane=a.pgvane_config)
    if a.idle_only:
        a.repeats = 0
    tmp = tempfile.mkdtemp(prefix="pgvane-bench-")
    if a.instructions:
        counting.WRAP[:] = counting.callgrind_wrap(tmp)
        # Under valgrind the io_uring probe hangs: role ports relay with
        # epoll here (split ports always do).
        for name in ("pgvane", "before"):
            EXTRA_TOP.setdefault(name, []).append("io_uring: off")
    leader_ip = leader()
    subprocess.run([f"{PGBIN}/pgbench", "-h", leader_ip, "-U", "postgres", "-i", "-q", "-s", "10", "postgres"],
                   env=ENV, check=True, capture_output=True)
    time.sleep(2)  # let the replicas replay the new tables
    scripts = {}
    for key, text in SCRIPTS.items():
        scripts[key] = os.path.join(tmp, f"{key}.sql"); open(scripts[key], "w").write(text)
    ref = "pgbouncer" if a.split else "haproxy"
    workloads = SPLIT_WORKLOADS if a.split else WORKLOADS
    if a.only:
        workloads = [w for w in workloads if any(t in w[0] for t in a.only)]
    procs = {}
    results = {}  # (workload, target) -> list of (tps, lat, cpu_us_per_txn); None = failed
    try:
        pv, pv_port = (start_pgvane_split if a.split else start_pgvane)(leader_ip, tmp); procs["pgvane"] = pv
        rp, rp_port = (start_pgbouncer if a.split else start_haproxy)(leader_ip, tmp); procs[ref] = rp
        targets = [("direct", leader_ip, 5432, None), ("pgvane", "127.0.0.1", pv_port, pv.pid), (ref, "127.0.0.1", rp_port, rp.pid)]
        if a.baseline:
            bp, bp_port = (start_pgvane_split if a.split else start_pgvane)(leader_ip, tmp, os.path.abspath(a.baseline), "before")
            procs["before"] = bp
            targets.append(("before", "127.0.0.1", bp_port, bp.pid))
        if a.syscalls or a.allocs or a.instructions or a.busy_idle:
            return special(a, targets[1:], scripts, ref)
        for r in range(a.repeats):
            for wname, args, s1 in workloads:
                order = targets if r % 2 == 0 else list(reversed(targets))
                for tname, host, port, pid in order:
                    c0 = cpu_seconds(pid) if pid else 0
                    w0 = wakeups(pid) if pid else 0
                    got = pgbench(host, port, args, a.seconds, scripts.get(s1))
                    if got is None:
                        results.setdefault((wname, tname), []).append(None)
                        print(f"repeat {r+1} {wname:42} {tname:9} FAILED", flush=True)
                        continue
                    tps, lat, n = got
                    cpu = (cpu_seconds(pid) - c0) * 1e6 / n if pid else None
                    sw = (wakeups(pid) - w0) / n if pid else None
                    results.setdefault((wname, tname), []).append((tps, lat, cpu, sw))
                    print(f"repeat {r+1} {wname:42} {tname:9} tps={tps:9.0f} lat={lat} cpu_us/txn={cpu and round(cpu,1)} wakeups/txn={sw and round(sw,2)}", flush=True)
        rss, rounds, base = {}, {}, {}
        # pgvane, the reference proxy and, with --baseline, the older build.
        proxies = targets[1:]
        for tname, host, port, pid in proxies if a.idle else []:
            # Warm-up: pools, thread caches and the first map are fixed
            # costs, not per client; the base is taken after them.
            idle_rss(pid, port, 20)
            base[tname] = rss_kib(pid)
        for rnd in range(a.idle_rounds if a.idle else 0):
            for tname, host, port, pid in proxies:
                rounds.setdefault(tname, []).append(idle_rss(pid, port, a.idle, base[tname]))
                print(f"idle RSS round {rnd+1} {tname}: {rounds[tname][-1]:.2f} KiB per client", flush=True)
        rss = {t: max(v) for t, v in rounds.items()}
    finally:
        for p in procs.values():
            p.send_signal(signal.SIGTERM)
        for p in procs.values():
            try:
                p.wait(timeout=15)
            except subprocess.TimeoutExpired:
                p.kill()

    def med(w, t, i):
        xs = [x[i] for x in results.get((w, t), []) if x is not None and x[i] is not None]
        return statistics.median(xs) if xs else None

    R = "HAProxy" if ref == "haproxy" else "pgbouncer"
    if a.idle_only:
        print(f"RSS per idle client ({a.idle} clients, worst of {a.idle_rounds} rounds: "
              + "; ".join(f"{t} " + " / ".join(f"{x:.2f}" for x in v) for t, v in rounds.items()) + " KiB): "
              f"pgvane {rss['pgvane']:.2f} KiB, {R} {rss[ref]:.2f} KiB"
              + (f", before {rss['before']:.2f} KiB." if "before" in rss else "."))
        return
    B = bool(a.baseline)
    lines = [f"| workload | direct TPS | pgvane TPS (× direct) | {R} TPS (× direct) | pgvane / {R} | pgvane CPU µs/txn | {R} CPU µs/txn | CPU pgvane / {R} |"
             + (" before TPS | pgvane / before | before CPU µs/txn |" if B else ""),
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |" + (" ---: | ---: | ---: |" if B else "")]
    fmt = lambda v, d: "fails" if v is None else f"{v:,.0f} ({v/d:.2f}×)"
    for wname, _, _ in workloads:
        d, p_, h = med(wname, "direct", 0), med(wname, "pgvane", 0), med(wname, ref, 0)
        pc, hc = med(wname, "pgvane", 2), med(wname, ref, 2)
        ratio = f"{p_/h:.2f}×" if p_ and h else "—"
        row = f"| {wname} | {d:,.0f} | {fmt(p_, d)} | {fmt(h, d)} | {ratio} | {pc if pc is None else round(pc, 1)} | {hc if hc is None else round(hc, 1)} | {f'{pc/hc:.2f}×' if pc and hc else '—'} |"
        if B:
            b, bc = med(wname, "before", 0), med(wname, "before", 2)
            row += f" {fmt(b, d)} | {f'{p_/b:.2f}×' if p_ and b else '—'} | {bc if bc is None else round(bc, 1)} |"
        lines.append(row)
    lines.append("")
    lines.append("Wake-ups per transaction (voluntary context switches of all the proxy's threads, median): "
                 + "; ".join(f"{wname}: " + ", ".join(f"{t} {med(wname, t, 3):.2f}" for t, *_ in targets[1:] if med(wname, t, 3) is not None)
                             for wname, _, _ in workloads) + ".")
    lat = {t: med("SELECT 1, 1 client", t, 1) for t, *_ in targets}
    lines.append("")
    if all(lat.values()):
        lines.append(f"Latency at 1 client (SELECT 1): direct {lat['direct']*1000:.0f} µs, pgvane {lat['pgvane']*1000:.0f} µs "
                     f"(+{(lat['pgvane']-lat['direct'])*1000:.0f} µs), {R} {lat[ref]*1000:.0f} µs (+{(lat[ref]-lat['direct'])*1000:.0f} µs).")
    if rss:
        lines.append(f"RSS per idle client ({a.idle} clients, worst of {a.idle_rounds} rounds on one process): "
                 f"pgvane {rss['pgvane']:.2f} KiB, {R} {rss[ref]:.2f} KiB (rounds: "
                 + "; ".join(f"{t} " + " / ".join(f"{x:.2f}" for x in v) for t, v in rounds.items()) + ").")
    lines.append(f"Medians of {a.repeats} interleaved repeats of {a.seconds} s each; machine: {os.cpu_count()} cores; "
                 f"{R} {'.'.join(map(str, pgbouncer_version(PGBOUNCER))) if ref == 'pgbouncer' else haproxy_version()}.")
    lines.append("")
    lines.append("min / median / max TPS per target and workload:")
    for wname, _, _ in workloads:
        parts = []
        for t, *_ in targets:
            xs = sorted(x[0] for x in results.get((wname, t), []) if x)
            parts.append(f"{t} {xs[0]:,.0f}/{statistics.median(xs):,.0f}/{xs[-1]:,.0f}" if xs else f"{t} fails")
        lines.append(f"- {wname}: " + ", ".join(parts))
    text = "\n".join(lines)
    print("\n" + text)
    if a.out:
        open(a.out, "w").write(text + "\n")


if __name__ == "__main__":
    main()
