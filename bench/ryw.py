#!/usr/bin/env python3
"""pgvane read-after-write benchmark (CONSISTENCY.md §4, issue item 11).

With every replica's replay delayed (recovery_min_apply_delay through
Patroni, default 1000 ms), pgbench runs a write-then-read-back script
through one split port per read-your-writes scope and directly against the
leader, interleaved, and reports per target TPS, stale reads (reads that
returned less than the value the same client had just written) and the
share of reads replicas served. Then pgbench tpcb-like, with the delay
cleared, through the `off` and `session` ports and directly: the cost of
the commit-position capture. Needs the lab up (deploy/lab/lab.sh up) and a
release build. Stdlib only; shares bench/run.py's helpers.

    bench/ryw.py [--pgvane PATH] [--repeats 3] [-t 500] [-c 8] [--delay-ms 1000]

The lab is shared: the script refuses to start when a delay is already
set, stops when someone changes its delay mid-run, and clears its own delay
in a finally block (also on Ctrl-C), not one that someone else set;
`--undelay` clears a delay a killed run left (/tmp/pgvane-ryw.delay says
so). It stops only the pgvane it started, by pid.
"""
import argparse, json, os, re, shlex, signal, statistics, subprocess, sys, tempfile, time, urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import run  # noqa: E402  (bench/run.py: free_port, leader, spawn_pgvane_ports, PGBIN, ENV)

ROOT = run.ROOT
PGBIN, ENV = run.PGBIN, run.ENV
LAB = os.environ.get("PGVANE_LAB_DIR", "/tmp/pgvane-lab")
VENV = os.environ.get("PGVANE_LAB_VENV", "/opt/pgvane-lab-venv")
LAB_SH = os.path.join(ROOT, "deploy/lab/lab.sh")
MARK = "/tmp/pgvane-ryw.delay"  # the delay a run set, until it clears it
SCOPES = ["off", "window", "session", "user", "database", "cluster"]
MODES = ["simple", "extended"]


# ---------- the one place scopes become configuration ----------

def ryw_fields(scope, style, wait_ms, window_ms):
    """The split-port YAML fields (flow-mapping text) for `scope`, or None
    when this config style cannot express it. style "new": the
    `read_your_writes` field; "legacy": today's loader, which knows only
    `read_your_writes_ms` (a window after each write; 0 = off)."""
    if style == "new":
        if scope == "off":
            return 'read_your_writes: "off"'  # quoted: YAML 1.1 readers take off for false
        if scope == "window":
            return f"read_your_writes: window, read_your_writes_ms: {window_ms}"
        return f"read_your_writes: {scope}, read_your_writes_wait_ms: {wait_ms}"
    return {"off": "read_your_writes_ms: 0", "window": f"read_your_writes_ms: {window_ms}"}.get(scope)


def cluster_yaml(scopes, style, a):
    """The lab cluster block: one split port per scope, named ryw_<scope>."""
    lines = ["    users: [{{name: postgres, password: postgres}}]", "    ports:"]
    for s in scopes:
        lines.append(f"      ryw_{s}: {{{{listen: 127.0.0.1:{{{s}}}, mode: split, roles: [sync, async], "
                     f"pool_size: {run.POOL_SIZE}, {ryw_fields(s, style, a.wait_ms, a.window_ms)}}}}}")
    return "\n".join(lines) + "\n"


def config_style(binary, scopes, a, tmp):
    """"new" when the binary accepts `read_your_writes:` (pgvane --check), else "legacy"."""
    if a.config_style != "auto":
        return a.config_style, ""
    cfg = os.path.join(tmp, "check.yaml")
    ports = {s: run.free_port() for s in scopes}
    open(cfg, "w").write("clusters:\n  lab:\n    hosts: [http://127.0.0.11:8008]\n"
                         + cluster_yaml(scopes, "new", a).format(**ports))
    r = subprocess.run([binary, "--check", "--config", cfg], capture_output=True, text=True, timeout=30)
    if r.returncode == 0:
        return "new", ""
    errors = (r.stderr or r.stdout).strip().splitlines()[1:] or ["?"]
    return "legacy", errors[0][:100]


# ---------- the lab: leader, replicas, delay ----------

def cluster_members():
    for n in (1, 2, 3):
        try:
            with urllib.request.urlopen(f"http://127.0.0.{10+n}:8008/cluster", timeout=2) as r:
                return json.load(r)["members"]
        except OSError:
            pass
    sys.exit("no lab: run deploy/lab/lab.sh up")


def replicas():
    return [m["host"] for m in cluster_members() if m["role"] != "leader"]


def psql(host, sql, timeout=30):
    r = subprocess.run([f"{PGBIN}/psql", "-X", "-q", "-At", "-v", "ON_ERROR_STOP=1", "-h", host, "-U", "postgres",
                        "-d", "postgres", "-c", sql], env=ENV, capture_output=True, text=True, timeout=timeout)
    if r.returncode:
        raise RuntimeError(f"psql {host}: {sql[:80]}: {r.stderr.strip()}")
    return r.stdout.strip()


def wait_until(what, pred, deadline_s=60):
    end = time.time() + deadline_s
    while time.time() < end:
        try:
            if pred():
                return
        except (RuntimeError, subprocess.TimeoutExpired):
            pass
        time.sleep(0.5)
    raise RuntimeError(f"timed out after {deadline_s} s waiting for {what}")


def delay_on_replicas():
    """{replica: recovery_min_apply_delay in ms}."""
    return {h: int(psql(h, "select setting from pg_settings where name = 'recovery_min_apply_delay'", 10))
            for h in replicas()}


def configured_delay():
    """recovery_min_apply_delay in Patroni's dynamic configuration, or None."""
    for n in (1, 2, 3):
        try:
            with urllib.request.urlopen(f"http://127.0.0.{10+n}:8008/config", timeout=2) as r:
                return ((json.load(r).get("postgresql") or {}).get("parameters") or {}).get("recovery_min_apply_delay")
        except OSError:
            pass
    return None


def lab_has(cmd):
    return re.search(rf"^\s*{cmd}\)", open(LAB_SH).read(), re.M) is not None


def set_delay(ms):
    """recovery_min_apply_delay = ms on every replica through Patroni (None:
    removed), then waits until each replica reports it. Uses `lab.sh
    delay|undelay` when this tree's lab.sh has them."""
    if ms is not None and lab_has("delay"):
        subprocess.run([LAB_SH, "delay", str(ms)], check=True, timeout=120)
    elif ms is None and lab_has("undelay"):
        subprocess.run([LAB_SH, "undelay"], check=True, timeout=120)
    else:
        value = "null" if ms is None else str(ms)
        subprocess.run([f"{VENV}/bin/patronictl", "-c", f"{LAB}/node1/patroni.yml", "edit-config", "lab", "--force",
                        "-s", f"postgresql.parameters.recovery_min_apply_delay={value}"],
                       check=True, capture_output=True, timeout=60)
    want = ms or 0
    wait_until(f"recovery_min_apply_delay={want} ms on every replica",
               lambda: set(delay_on_replicas().values()) == {want}, 90)
    print(f"replicas: recovery_min_apply_delay = {want} ms", flush=True)


# ---------- tables, scripts, pgbench, metrics ----------

def setup_tables(leader_ip, n, scale):
    psql(leader_ip, "drop table if exists ryw_probe; "
                    "create table ryw_probe (k int primary key, v bigint not null); "
                    f"insert into ryw_probe select g, 0 from generate_series(1, {n}) g; "
                    "create table if not exists ryw_stale (at timestamptz default now(), scope text, "
                    "k int, w bigint, r bigint)", 120)
    have = psql(leader_ip, "select to_regclass('pgbench_branches') is not null") == "t" \
        and int(psql(leader_ip, "select count(*) from pgbench_branches"))
    if have != scale:
        subprocess.run([f"{PGBIN}/pgbench", "-h", leader_ip, "-U", "postgres", "-i", "-q", "-s", str(scale),
                        "postgres"], env=ENV, check=True, capture_output=True, timeout=600)
    for h in replicas():
        wait_until(f"ryw_probe and pgbench tables replayed on {h}",
                   lambda: psql(h, "select (select count(*) from ryw_probe), (select count(*) from pgbench_branches)",
                                10) == f"{n}|{scale}", 120)


def probe_script(tmp, label):
    """The read-after-write transaction; a stale read-back inserts a row
    labelled `label` into ryw_stale (a write: it goes to the leader)."""
    path = os.path.join(tmp, f"ryw-{label.replace('/', '-')}.sql")
    open(path, "w").write(f"""\\set k random(1, :n)
\\set k2 1 + (:k + random(0, :n - 2)) % :n
UPDATE ryw_probe SET v = v + 1 WHERE k = :k RETURNING v AS w \\gset
SELECT v AS r, inet_server_port() AS port FROM ryw_probe WHERE k = :k \\gset
\\if :r < :w
INSERT INTO ryw_stale (scope, k, w, r) VALUES ('{label}', :k, :w, :r);
\\endif
SELECT v, inet_server_port() AS port2 FROM ryw_probe WHERE k = :k2 \\gset
""")
    return path


def pgbench(host, port, args, timeout):
    """TPS and transactions of one pgbench run, or (None, error text)."""
    cmd = [f"{PGBIN}/pgbench", "-h", host, "-p", str(port), "-U", "postgres", "-n"] + args + ["postgres"]
    try:
        out = subprocess.run(cmd, env=ENV, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return None, f"timed out after {timeout} s"
    tps = re.search(r"tps = ([\d.]+)", out.stdout)
    n = re.search(r"number of transactions actually processed: (\d+)", out.stdout)
    failed = re.search(r"number of failed transactions: (\d+)", out.stdout)
    if out.returncode or not tps or not n or (failed and int(failed.group(1))):
        return None, (out.stderr.strip().splitlines() or ["?"])[-1]
    return float(tps.group(1)), int(n.group(1))


def routed(admin):
    """pgvane_statements_routed_total by (port, role)."""
    with urllib.request.urlopen(f"http://127.0.0.1:{admin}/metrics", timeout=5) as r:
        text = r.read().decode()
    out = {}
    for m in re.finditer(r"^pgvane_statements_routed_total\{([^}]*)\} (\S+)$", text, re.M):
        labels = dict(re.findall(r'(\w+)="([^"]*)"', m.group(1)))
        key = (labels.get("port"), labels.get("role"))
        out[key] = out.get(key, 0) + float(m.group(2))
    return out


# ---------- main ----------

def mmm(xs, f="{:,.0f}"):
    xs = sorted(xs)
    return "/".join(f.format(x) for x in (xs[0], statistics.median(xs), xs[-1])) if xs else "fails"


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--pgvane", default=os.path.join(ROOT, "target/release/pgvane"), help="pgvane binary")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("-t", "--transactions", type=int, default=500, help="pgbench -t, per client")
    ap.add_argument("-c", "--clients", type=int, default=8)
    ap.add_argument("--rows", type=int, default=10000, help="ryw_probe rows")
    ap.add_argument("--delay-ms", type=int, default=1000, help="recovery_min_apply_delay on every replica")
    ap.add_argument("--wait-ms", type=int, default=20, help="read_your_writes_wait_ms")
    ap.add_argument("--window-ms", type=int, default=1000, help="read_your_writes_ms of the window scope")
    ap.add_argument("--scopes", default=",".join(SCOPES))
    ap.add_argument("--tpcb-scopes", default="off,session", help="split ports in the tpcb-like comparison")
    ap.add_argument("--tpcb-t", type=int, default=200, help="tpcb-like pgbench -t, per client")
    ap.add_argument("--scale", type=int, default=10, help="pgbench -i -s (run once, when the scale differs)")
    ap.add_argument("--config-style", choices=["auto", "new", "legacy"], default="auto",
                    help="new: read_your_writes field; legacy: read_your_writes_ms only (off, window)")
    ap.add_argument("--max-minutes", type=float, default=30, help="start no run after this")
    ap.add_argument("--no-tpcb", action="store_true")
    ap.add_argument("--undelay", action="store_true",
                    help="only clear the replicas' delay a run of this script left (refuses anyone else's)")
    ap.add_argument("--out")
    a = ap.parse_args()
    if a.undelay:
        mine = open(MARK).read().strip() if os.path.exists(MARK) else None
        cur = configured_delay()
        if cur is None:
            print("no delay set"); return
        if mine is None or str(cur) != mine:
            sys.exit(f"recovery_min_apply_delay = {cur} was not set by this script ({MARK}): not touching it")
        set_delay(None); os.unlink(MARK); return
    t_end = time.time() + a.max_minutes * 60
    binary = os.path.abspath(a.pgvane)
    tmp = tempfile.mkdtemp(prefix="pgvane-ryw-")
    want = [s.strip() for s in a.scopes.split(",") if s.strip()]
    tpcb_want = [s.strip() for s in a.tpcb_scopes.split(",") if s.strip()] if not a.no_tpcb else []
    style, why = config_style(binary, sorted(set(want + tpcb_want), key=SCOPES.index), a, tmp)
    scopes = [s for s in SCOPES if s in want + tpcb_want and ryw_fields(s, style, a.wait_ms, a.window_ms)]
    skipped = [s for s in want + tpcb_want if s not in scopes]
    if skipped:
        print(f"config style {style} ({why}): skipping {', '.join(dict.fromkeys(skipped))}", flush=True)
    leader_ip = run.leader()
    before = configured_delay()
    if before not in (None, 0, "0"):
        sys.exit(f"the lab already has recovery_min_apply_delay = {before} (someone's test, or a run that died): "
                 "not touching it; bench/ryw.py --undelay clears it")
    setup_tables(leader_ip, a.rows, a.scale)
    runid = time.strftime("%H%M%S")
    tx = a.clients * a.transactions
    # Waits at most wait_ms per read; pgbench gets that and more, then is stopped.
    timeout = 60 + a.transactions * (2 * a.wait_ms + 100) / 1000 * 2
    pv = None
    res, tpcb = {}, {}   # (target, mode) -> [(tps, stale, replica share)]; target -> [tps]
    cut = False
    try:
        pv, ports, admin = run.spawn_pgvane_ports(tmp, cluster_yaml(scopes, style, a), scopes, binary, "pgvane-ryw")
        targets = [("leader", leader_ip, 5432)] + [(s, "127.0.0.1", ports[s]) for s in scopes if s in want]
        try:
            open(MARK, "w").write(f"{a.delay_ms}\n")
            set_delay(a.delay_ms)
            for r in range(a.repeats):
                for mode in MODES:
                    order = targets if r % 2 == 0 else targets[::-1]
                    for name, host, port in order:
                        if time.time() > t_end:
                            cut = True; break
                        label = f"{runid}/{name}/{mode}/{r+1}"
                        m0 = routed(admin)
                        got = pgbench(host, port, ["-f", probe_script(tmp, label), "-M", mode, "-D", f"n={a.rows}",
                                                   "-c", str(a.clients), "-j", str(min(a.clients, 2)),
                                                   "-t", str(a.transactions)], timeout)
                        m1 = routed(admin)
                        if str(configured_delay()) != str(a.delay_ms):
                            raise RuntimeError(f"recovery_min_apply_delay changed to {configured_delay()} by "
                                               "someone else mid-run: stopping (this run's figures discarded)")
                        if got[0] is None:
                            print(f"repeat {r+1} {mode:8} {name:8} FAILED: {got[1]}", flush=True)
                            res.setdefault((name, mode), []).append(None); continue
                        tps, n = got
                        stale = int(psql(leader_ip, f"select count(*) from ryw_stale where scope = '{label}'"))
                        rep = m1.get((f"ryw_{name}", "replica"), 0) - m0.get((f"ryw_{name}", "replica"), 0)
                        share = rep / (2 * n) if name != "leader" else None
                        res.setdefault((name, mode), []).append((tps, stale, share))
                        print(f"repeat {r+1} {mode:8} {name:8} tps={tps:8.0f} txns={n} stale={stale}"
                              + (f" replica share={share:.0%}" if share is not None else ""), flush=True)
        finally:
            # Someone else's test may have changed it meanwhile: clear only ours.
            cur = configured_delay()
            if cur is None or str(cur) == str(a.delay_ms):
                print("clearing the replicas' delay", flush=True)
                set_delay(None)
                os.unlink(MARK)
            else:
                print(f"recovery_min_apply_delay is now {cur}, not this run's {a.delay_ms}: left alone", flush=True)
        tt = [("leader", leader_ip, 5432)] + [(s, "127.0.0.1", ports[s]) for s in scopes if s in tpcb_want]
        for r in range(a.repeats if len(tt) > 1 else 0):
            for name, host, port in (tt if r % 2 == 0 else tt[::-1]):
                if time.time() > t_end:
                    cut = True; break
                got = pgbench(host, port, ["-b", "tpcb-like", "-M", "simple", "-c", str(a.clients),
                                           "-j", str(min(a.clients, 2)), "-t", str(a.tpcb_t)], 60 + a.tpcb_t)
                if got[0] is None:
                    print(f"tpcb repeat {r+1} {name:8} FAILED: {got[1]}", flush=True); continue
                tpcb.setdefault(name, []).append(got[0])
                print(f"tpcb repeat {r+1} {name:8} tps={got[0]:8.0f}", flush=True)
    finally:
        if pv:
            pv.send_signal(signal.SIGTERM)
            try:
                pv.wait(timeout=15)
            except subprocess.TimeoutExpired:
                pv.kill(); pv.wait()

    tree = os.path.dirname(os.path.dirname(os.path.dirname(binary)))
    rev = subprocess.run(["git", "-C", tree, "describe", "--always", "--dirty"], capture_output=True, text=True).stdout.strip()
    lines = [f"Command: `python3 bench/ryw.py {shlex.join(sys.argv[1:])}`", "",
             f"pgvane {binary} ({rev or '?'}), config style {style}; replicas delayed {a.delay_ms} ms; "
             f"{a.clients} clients × {a.transactions} transactions per run ({tx} read-after-write pairs), "
             f"{a.repeats} interleaved repeats{' (cut short by --max-minutes)' if cut else ''}; "
             f"read_your_writes_wait_ms {a.wait_ms}; machine: {os.cpu_count()} cores.", "",
             "| target | protocol | TPS min/median/max | stale reads min/median/max (of "
             f"{tx}) | replica share of reads (median) |", "| --- | --- | ---: | ---: | ---: |"]
    for name in ["leader"] + [s for s in scopes if s in want]:
        for mode in MODES:
            rs = [x for x in res.get((name, mode), []) if x]
            fails = len(res.get((name, mode), [])) - len(rs)
            shares = [x[2] for x in rs if x[2] is not None]
            lines.append(f"| {'direct leader' if name == 'leader' else name} | {mode} | {mmm([x[0] for x in rs])} | "
                         f"{mmm([x[1] for x in rs], '{:g}')}{f' ({fails} failed)' if fails else ''} | "
                         f"{f'{statistics.median(shares):.0%}' if shares else '—'} |")
    if tpcb:
        base = statistics.median(tpcb["off"]) if tpcb.get("off") else None
        direct = statistics.median(tpcb["leader"]) if tpcb.get("leader") else None
        lines += ["", f"pgbench tpcb-like (-M simple, {a.clients} clients × {a.tpcb_t} transactions, scale {a.scale}, "
                  "no delay):", "",
                  "| target | TPS min/median/max | vs `off` | vs direct leader |", "| --- | ---: | ---: | ---: |"]
        for name, *_ in tt:
            xs = tpcb.get(name, [])
            med = statistics.median(xs) if xs else None
            pct = lambda b, of: f"{(med - b) / b:+.1%}" if med and b and name != of else "—"
            lines.append(f"| {'direct leader' if name == 'leader' else name} | {mmm(xs)} | {pct(base, 'off')} | "
                         f"{pct(direct, 'leader')} |")
    text = "\n".join(lines)
    print("\n" + text)
    if a.out:
        open(a.out, "w").write(text + "\n")


if __name__ == "__main__":
    main()
