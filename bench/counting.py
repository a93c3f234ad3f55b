"""bench/run.py's counting modes: system calls per transaction under strace,
user-space instructions per transaction under callgrind, and p99 latency of
busy clients beside thousands of idle ones. Stdlib only;
imported by run.py, not run on its own.

System calls are counted, not timed: `perf trace -s` (default) or
`strace -c -f` attached to every thread of the proxy while pgbench runs a
fixed number of transactions. The count per transaction is what the proxy
asks of the kernel, and it repeats from run to run where TPS on a shared
machine does not. perf counts from kernel tracepoints and barely slows the
proxy; under strace's ptrace every call costs tens of microseconds, which
changes how often an `epoll_wait` finds work already waiting, so strace
counts more `epoll_wait`s and fewer failed reads than happen untraced.
"""
import os, pwd, re, resource, signal, statistics, subprocess, tempfile, time

PGBIN = "/usr/lib/postgresql/15/bin"
ENV = dict(os.environ, PGPASSWORD="postgres")
LINE = re.compile(r"^\s*([\d.]+)\s+([\d.]+)\s+(\d+)\s+(\d+)\s+(\d+)?\s*(\w+)\s*$")


def threads(pid):
    return sorted(int(t) for t in os.listdir(f"/proc/{pid}/task"))


def parse_strace(text):
    """`strace -c` summary → {syscall: (calls, errors)}."""
    out = {}
    for line in text.splitlines():
        m = LINE.match(line)
        if m and m.group(6) != "total":
            out[m.group(6)] = (int(m.group(4)), int(m.group(5) or 0))
    return out


def pgbench_txns(host, port, args, per_client, script=None, cwd=None, extra=()):
    """Runs pgbench for `per_client` transactions per client; returns the
    number of transactions processed (None when any failed)."""
    cmd = [f"{PGBIN}/pgbench", "-h", host, "-p", str(port), "-U", "postgres", "-n", "-t", str(per_client)] + list(args) + list(extra)
    if script:
        cmd += ["-f", script]
    cmd.append("postgres")
    out = subprocess.run(cmd, env=ENV, capture_output=True, text=True, timeout=600, cwd=cwd)
    n = re.search(r"number of transactions actually processed: (\d+)", out.stdout)
    failed = re.search(r"number of failed transactions: (\d+)", out.stdout)
    if not n or "aborted" in out.stderr or (failed and int(failed.group(1)) > 0):
        print(out.stdout[-500:], out.stderr[-500:], flush=True)
        return None
    return int(n.group(1))


def while_pgbench(counter, host, port, args, per_client, script=None):
    """Runs pgbench (see pgbench_txns) with `counter` (perf, strace)
    attached around it, stopped with SIGINT; returns pgbench's count."""
    c = subprocess.Popen(counter, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(0.5)  # attached before the first transaction
    try:
        return pgbench_txns(host, port, args, per_client, script)
    finally:
        c.send_signal(signal.SIGINT)
        c.wait(timeout=30)


PERF_LINE = re.compile(r"^\s+([a-z_0-9]+)\s+(\d+)\s+(\d+)\s+[\d.]+")


def parse_perf_trace(text):
    """`perf trace -s` summary (one table per thread) → {syscall: (calls, errors)}, summed."""
    out = {}
    for line in text.splitlines():
        m = PERF_LINE.match(line)
        if m and m.group(1) != "syscall":
            c, e = out.get(m.group(1), (0, 0))
            out[m.group(1)] = (c + int(m.group(2)), e + int(m.group(3)))
    return out


def count_syscalls(pid, host, port, args, per_client, script=None, tracer="perf"):
    """Traces every thread of `pid` while pgbench runs; returns
    ({syscall: calls per transaction}, failed calls (EAGAIN…) per
    transaction, transactions)."""
    out = tempfile.NamedTemporaryFile(prefix="syscalls-", suffix=".txt", delete=False).name
    if tracer == "perf":
        cmd = ["perf", "trace", "-s", "-o", out, "-p", str(pid)]  # every thread of the process
    else:
        cmd = ["strace", "-c", "-f", "-o", out]
        for t in threads(pid):
            cmd += ["-p", str(t)]
    n = while_pgbench(cmd, host, port, args, per_client, script)
    text = open(out).read()
    counts = parse_perf_trace(text) if tracer == "perf" else parse_strace(text)
    os.unlink(out)
    if not n:
        return None
    per = {k: c / n for k, (c, _) in counts.items()}
    errors = sum(e for _, e in counts.values()) / n
    return per, errors, n


MALLOC_EVENT = "probe_libc:malloc"


def malloc_probe():
    """Adds a perf uprobe on glibc's malloc unless one is there; returns its
    event name. (pgvane's glibc build, pgbouncer and HAProxy all allocate
    through it; a musl or mimalloc build would not be counted.)"""
    listed = subprocess.run(["perf", "probe", "-l"], capture_output=True, text=True).stdout
    if MALLOC_EVENT not in listed:
        libc = next(p for p in ("/lib/x86_64-linux-gnu/libc.so.6", "/usr/lib/x86_64-linux-gnu/libc.so.6")
                    if os.path.exists(p))
        subprocess.run(["perf", "probe", "-x", libc, "malloc"], check=True, capture_output=True)
    return MALLOC_EVENT


def count_allocs(pid, host, port, args, per_client, script=None):
    """Counts glibc malloc calls in every thread of `pid` while pgbench runs
    a fixed number of transactions; returns (calls per transaction,
    transactions). Background work (topology polls) counts too, so the
    figure is an upper bound on the per-request allocations."""
    ev = malloc_probe()
    out = tempfile.NamedTemporaryFile(prefix="allocs-", suffix=".csv", delete=False).name
    n = while_pgbench(["perf", "stat", "-x,", "-e", ev, "-p", str(pid), "-o", out], host, port, args, per_client, script)
    calls = next((int(line.split(",")[0]) for line in open(out) if ev in line and line.split(",")[0].isdigit()), None)
    os.unlink(out)
    if not n or calls is None:
        return None
    return calls / n, n


WRAP = []  # a command the proxies are started under (--instructions: valgrind)


def callgrind_wrap(tmp):
    """The valgrind prefix for --instructions: callgrind counting every
    instruction a proxy's threads execute in user space (the kernel's share
    is not counted), no cache simulation, a dump file per process."""
    return ["valgrind", "--tool=callgrind", "--quiet", "--fair-sched=yes",
            f"--callgrind-out-file={tmp}/callgrind.%p"]


def count_instructions(pid, host, port, args, per_client, script=None):
    """Runs pgbench for `per_client` transactions per client and again for
    one, each between a zeroing and a dump of the callgrind counters of
    `pid` (a proxy started under callgrind_wrap); returns (instructions per
    transaction, transactions), the difference of the two over the
    difference of their transactions, so the clients' logins (SCRAM) do
    not count. It moves less than time between runs (a few per cent: the
    threads still race under valgrind), so the ratio of two builds in one
    run is the A/B of a code change."""
    # Warm-up, not counted: the pool's backends log in (SCRAM) on first use.
    instructions_of(pid, host, port, args, 50, script)
    long = instructions_of(pid, host, port, args, per_client, script)
    short = instructions_of(pid, host, port, args, 1, script)
    if not long or not short or long[1] <= short[1]:
        return None
    return (long[0] - short[0]) / (long[1] - short[1]), long[1] - short[1]


def instructions_of(pid, host, port, args, per_client, script=None):
    """(instructions, transactions) of one pgbench run under callgrind."""
    if open(f"/proc/{pid}/comm").read().strip() == "runuser":
        pid = int(open(f"/proc/{pid}/task/{pid}/children").read().split()[0])  # the proxy runuser started
    # As the process's user (pgbouncer runs as postgres).
    user = open(f"/proc/{pid}/status").read().split("Uid:")[1].split()[0]
    as_user = [] if user == str(os.getuid()) else ["runuser", "-u", pwd.getpwuid(int(user)).pw_name, "--"]
    ctl = lambda *o: subprocess.run(as_user + ["callgrind_control", *o, str(pid)], capture_output=True, text=True, timeout=120)
    ctl("--zero")
    n = pgbench_txns(host, port, args, per_client, script)
    out = ctl("--dump=counted")
    if not n:
        return None
    # The dump lands beside the process's out file, named after it.
    d = next((a.split("=", 1)[1] for a in open(f"/proc/{pid}/cmdline").read().split("\0")
              if a.startswith("--callgrind-out-file=")), None)
    total = None
    if d:
        base = d.replace("%p", str(pid))
        dumps = sorted((f for f in os.listdir(os.path.dirname(base)) if os.path.basename(f).startswith(os.path.basename(base) + ".")),
                       key=lambda f: os.path.getmtime(os.path.join(os.path.dirname(base), f)))
        if dumps:
            path = os.path.join(os.path.dirname(base), dumps[-1])
            for line in open(path):
                if line.startswith("summary:") or line.startswith("totals:"):
                    total = int(line.split()[1])
            os.unlink(path)
    if total is None:
        print(out.stdout[-300:], out.stderr[-300:], flush=True)
        return None
    return total, n


def alloc_table(results, what="malloc calls per transaction", digits=2):
    """results: {(workload, target): [(per, n) | None, ...]} → markdown."""
    lines = [f"| workload | target | {what} (min / median / max) |",
             "| --- | --- | ---: |"]
    for (w, t), runs in results.items():
        xs = sorted(r[0] for r in runs if r)
        lines.append(f"| {w} | {t} | " + (f"{xs[0]:,.{digits}f} / {statistics.median(xs):,.{digits}f} / {xs[-1]:,.{digits}f} |"
                                           if xs else "failed |"))
    return "\n".join(lines)


def syscall_table(results, targets, ref_name):
    """results: {(workload, target): [(per, errors, n), ...]} → markdown."""
    lines = []
    for (w, t), runs in results.items():
        runs = [r for r in runs if r]
        if not runs:
            lines.append(f"- {w}, {t}: failed")
            continue
        totals = sorted(sum(p.values()) for p, _, _ in runs)
        kinds = {}
        for p, _, _ in runs:
            for k, v in p.items():
                kinds.setdefault(k, []).append(v)
        top = sorted(kinds.items(), key=lambda kv: -statistics.median(kv[1]))[:6]
        errs = sorted(e for _, e, _ in runs)
        lines.append(f"| {w} | {t} | {totals[0]:.2f} / {statistics.median(totals):.2f} / {totals[-1]:.2f} | "
                     + ", ".join(f"{k} {statistics.median(v):.2f}" for k, v in top)
                     + f" | {statistics.median(errs):.2f} |")
    head = ["| workload | target | system calls per transaction (min / median / max) | by kind (median) | failed calls (EAGAIN…) per txn |",
            "| --- | --- | ---: | --- | ---: |"]
    return "\n".join(head + lines)


def raise_nofile(n):
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = max(n, soft)
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, max(want, hard)))
    except (ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(want, hard), hard))


IDLE_CODE = """
import psycopg, resource, sys
resource.setrlimit(resource.RLIMIT_NOFILE, ({n} + 100, {n} + 100))
conns = []
for i in range({n}):
    conns.append(psycopg.connect(host='127.0.0.1', port={port}, user='postgres', password='postgres', dbname='postgres', connect_timeout=30, autocommit=True))
for c in conns[::50]: c.execute('select 1')
print('ready', flush=True)
sys.stdin.readline()
"""


def busy_beside_idle(host, port, idle, args, seconds, script=None):
    """Connects `idle` idle clients, then runs pgbench (`args`) for
    `seconds` with per-transaction logging; returns (p50 µs, p99 µs, TPS)
    or None."""
    py = "/opt/pgvane-lab-venv/bin/python"
    p = subprocess.Popen([py, "-c", IDLE_CODE.format(n=idle, port=port)], stdin=subprocess.PIPE,
                         stdout=subprocess.PIPE, text=True)
    try:
        line = p.stdout.readline()
        if line.strip() != "ready":
            return None
        d = tempfile.mkdtemp(prefix="pgbench-log-")
        cmd = [f"{PGBIN}/pgbench", "-h", host, "-p", str(port), "-U", "postgres", "-n", "-T", str(seconds),
               "-l", "--log-prefix", os.path.join(d, "tx")] + list(args)
        if script:
            cmd += ["-f", script]
        cmd.append("postgres")
        out = subprocess.run(cmd, env=ENV, capture_output=True, text=True, timeout=seconds * 4 + 60, cwd=d)
        lat = []
        for f in os.listdir(d):
            for row in open(os.path.join(d, f)):
                parts = row.split()
                if len(parts) >= 3 and parts[2].isdigit():
                    lat.append(int(parts[2]))
        m = re.search(r"tps = ([\d.]+)", out.stdout)
        if not lat or not m:
            return None
        lat.sort()
        return lat[len(lat) // 2], lat[int(len(lat) * 0.99)], float(m.group(1))
    finally:
        if p.poll() is None:
            p.stdin.write("\n"); p.stdin.flush()
            try:
                p.wait(timeout=120)
            except subprocess.TimeoutExpired:
                p.kill()
