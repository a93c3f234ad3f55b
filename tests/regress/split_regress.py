#!/usr/bin/env python3
"""PostgreSQL 15's regression suite through pgvane's split port, compared
with the same statements sent straight to the leader. Needs the lab up
(deploy/lab/lab.sh up) and a build (cargo build). Stdlib + psql only.

    tests/regress/split_regress.py [--pgvane target/debug/pgvane] [--only FILE...] [--out FILE]

The statements are the suite's own (tests/fixtures/sqlcorpus: every
src/test/regress/sql/*.sql file split as psql would, psql meta-commands
left out). Each file is fed to psql (-a: echo, so outputs align) three
times, in three fresh databases named `regression`, one after another:
twice straight to the leader (A, then A2: what differs between those is
the suite's own nondeterminism: OIDs, timings, random()) and once through a
split port (B). A file passes when B's output equals A's, or differs only
where A2 differs from A too. Roles and tablespaces the suite creates are
dropped between runs, so each run starts from the same cluster state.

Every process it starts it stops by pid.
"""
import argparse, difflib, gzip, json, os, re, signal, socket, subprocess, sys, tempfile, time, urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PGBIN = "/usr/lib/postgresql/15/bin"
CORPUS = os.path.join(ROOT, "tests/fixtures/sqlcorpus/pg15-regress-statements.jsonl.gz")
ENV = dict(os.environ, PGPASSWORD="postgres", PGOPTIONS="", PGTZ="PST8PDT", PGDATESTYLE="Postgres, MDY")
FILE_TIMEOUT = 120


def _bench():
    """bench/run.py's lab helpers (free_port, leader)."""
    import importlib.util
    spec = importlib.util.spec_from_file_location("pgvane_bench", os.path.join(ROOT, "bench/run.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


free_port, leader = _bench().free_port, _bench().leader


def files():
    """Statements per file, in corpus order; test_setup first."""
    out = {}
    with gzip.open(CORPUS, "rt") as f:
        for line in f:
            s = json.loads(line)
            out.setdefault(s["file"], []).append(s["sql"])
    names = sorted(out, key=lambda n: (n != "test_setup.sql", n))
    return [(n, out[n]) for n in names]


def psql(host, port, dbname, *args, input=None, timeout=60):
    return subprocess.run(
        [f"{PGBIN}/psql", "-X", "-h", host, "-p", str(port), "-U", "postgres", "-d", dbname, *args],
        input=input, capture_output=True, text=True, env=ENV, timeout=timeout)


def admin(host, sql):
    r = psql(host, 5432, "postgres", "-At", "-c", sql)
    if r.returncode != 0:
        raise SystemExit(f"admin SQL failed: {sql}\n{r.stderr}")
    return r.stdout


def fresh_cluster_state(host):
    """Drops the `regression` database and every role and tablespace the
    suite creates, so the next run starts where the previous one did."""
    admin(host, "select pg_terminate_backend(pid) from pg_stat_activity where datname = 'regression'")
    admin(host, "drop database if exists regression")
    for ts in admin(host, "select spcname from pg_tablespace where spcname like 'regress%'").split():
        admin(host, f'drop tablespace if exists "{ts}"')
    for role in admin(host, "select rolname from pg_roles where rolname like 'regress%' or rolname like 'pg_regress%'").split():
        psql(host, 5432, "postgres", "-c", f'drop role if exists "{role}"')
    admin(host, "create database regression template template0 encoding 'UTF8' lc_collate 'C' lc_ctype 'C'")


def run_suite(host, port, chosen, label):
    outputs = {}
    leader_ip = leader()
    fresh_cluster_state(leader_ip)
    t0 = time.time()
    for name, stmts in chosen:
        text = "\\set VERBOSITY terse\n" + "".join(s + ";\n" for s in stmts)
        try:
            r = psql(host, port, "regression", "-a", "-q", input=text, timeout=FILE_TIMEOUT)
            outputs[name] = r.stdout + r.stderr
        except subprocess.TimeoutExpired:
            outputs[name] = "TIMEOUT"
    print(f"{label}: {len(chosen)} files in {time.time() - t0:.0f} s", file=sys.stderr)
    return outputs


def differing_lines(a, b):
    """Indices (in a) of lines that differ between a and b."""
    out = set()
    for tag, i1, i2, j1, j2 in difflib.SequenceMatcher(None, a, b, autojunk=False).get_opcodes():
        if tag != "equal":
            out.update(range(i1, max(i2, i1 + 1)))
    return out


def compare(a, a2, b):
    la, la2, lb = a.splitlines(), a2.splitlines(), b.splitlines()
    noise = differing_lines(la, la2)
    real = []
    for tag, i1, i2, j1, j2 in difflib.SequenceMatcher(None, la, lb, autojunk=False).get_opcodes():
        if tag == "equal":
            continue
        span = set(range(i1, max(i2, i1 + 1)))
        if span <= noise:
            continue
        real.append("".join(
            [f"  leader: {l}\n" for l in la[i1:i2]] + [f"  split:  {l}\n" for l in lb[j1:j2]]))
    return real


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--pgvane", default=os.path.join(ROOT, "target/debug/pgvane"))
    ap.add_argument("--only", nargs="*", help="run only these files (e.g. date.sql)")
    ap.add_argument("--out", help="write the full report here")
    ap.add_argument("--dump", help="write every output to this directory (NAME.leader, .leader2, .split)")
    args = ap.parse_args()
    chosen = files()
    if args.only:
        keep = set(args.only) | {"test_setup.sql"}
        chosen = [f for f in chosen if f[0] in keep]
    leader_ip = leader()
    split, admin_port = free_port(), free_port()
    cfg = tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False)
    cfg.write(f"""cluster_update_interval: 1
listen_address: 127.0.0.1:{admin_port}
clusters:
  lab:
    hosts: [http://127.0.0.11:8008, http://127.0.0.12:8008, http://127.0.0.13:8008]
    users:
      - {{name: postgres, password: postgres}}
    ports:
      app: {{listen: 127.0.0.1:{split}, mode: split, roles: [sync, async], pool_size: 8}}
""")
    cfg.close()
    log = open(cfg.name + ".log", "w")
    proc = subprocess.Popen([args.pgvane, "--config", cfg.name], stdout=log, stderr=log)
    try:
        deadline = time.time() + 30
        while time.time() < deadline:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{admin_port}/ready", timeout=1) as r:
                    if r.status == 200:
                        break
            except OSError:
                time.sleep(0.2)
        a = run_suite(leader_ip, 5432, chosen, "leader (A)")
        a2 = run_suite(leader_ip, 5432, chosen, "leader again (A2)")
        b = run_suite("127.0.0.1", split, chosen, "split port (B)")
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
        fresh_cluster_state(leader())
        admin(leader(), "drop database if exists regression")
    if args.dump:
        os.makedirs(args.dump, exist_ok=True)
        for name, _ in chosen:
            for suffix, out in (("leader", a), ("leader2", a2), ("split", b)):
                with open(os.path.join(args.dump, f"{name}.{suffix}"), "w") as f:
                    f.write(out[name])
    report, failed = [], []
    for name, _ in chosen:
        diffs = compare(a[name], a2[name], b[name])
        if diffs:
            failed.append(name)
            report.append(f"== {name}: {len(diffs)} differing places\n" + "".join(diffs[:20]))
    summary = f"{len(chosen) - len(failed)} of {len(chosen)} files give the leader's output through the split port; differing: {' '.join(failed) or 'none'}"
    if args.out:
        with open(args.out, "w") as f:
            f.write(summary + "\n\n" + "\n".join(report))
    print("\n".join(report)[:20000])
    print(summary)
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
