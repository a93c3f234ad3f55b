#!/usr/bin/env python3
"""RSS per idle role-port client, per relay engine, without the lab.

Starts a fake Patroni (one leader member) and a sink that echoes whatever it
receives, runs pgvane (target/release/pgvane) with `io_uring: <engine>`,
opens N clients through the role port, sends each a startup packet and a
4 KiB message both ways (so the relay's buffers grow, then shrink), leaves
them idle and reports pgvane's RSS growth per client. Touches nothing but
127.0.0.1.

    bench/idle_relay.py [--clients 1000] [--engines off,on] [--bin PATH]

`--engines none` leaves the setting out (a build from before it existed).
"""
import argparse, http.server, json, os, selectors, socket, subprocess, sys, tempfile, threading, time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


def sink(listener):
    """Echoes every byte back, on every connection, forever (daemon thread)."""
    sel = selectors.DefaultSelector()
    listener.setblocking(False)
    sel.register(listener, selectors.EVENT_READ)
    while True:
        for key, _ in sel.select():
            if key.fileobj is listener:
                c, _ = listener.accept()
                c.setblocking(True)
                sel.register(c, selectors.EVENT_READ)
            else:
                data = key.fileobj.recv(65536)
                if data:
                    key.fileobj.sendall(data)
                else:
                    sel.unregister(key.fileobj)
                    key.fileobj.close()


def fake_patroni(sink_port):
    body = json.dumps({"members": [{"name": "sink", "role": "leader", "state": "running",
                                    "host": "127.0.0.1", "port": sink_port, "lag": 0}]}).encode()

    class H(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            if self.path.startswith("/cluster"):
                self.send_response(200)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)
            else:
                self.send_response(404)
                self.send_header("content-length", "0")
                self.end_headers()

        def log_message(self, *a):
            pass

    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), H)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    return srv.server_address[1]


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError("no VmRSS")


def recv_exact(s, n):
    got = b""
    while len(got) < n:
        chunk = s.recv(n - len(got))
        if not chunk:
            raise RuntimeError("relay closed")
        got += chunk
    return got


def measure(binary, engine, n, api_port):
    admin, port = free_port(), free_port()
    tmp = tempfile.mkdtemp(prefix="pgvane-idle-")
    cfg = os.path.join(tmp, "pgvane.yaml")
    with open(cfg, "w") as f:
        setting = "" if engine == "none" else f"io_uring: {engine}\n"
        f.write(f"{setting}listen_address: 127.0.0.1:{admin}\ncluster_update_interval: 1\n"
                f"clusters:\n  fake:\n    hosts: ['http://127.0.0.1:{api_port}']\n"
                f"    ports:\n      rw: {{listen: 127.0.0.1:{port}, roles: [leader]}}\n")
    log = open(os.path.join(tmp, "pgvane.log"), "w")
    p = subprocess.Popen([binary, "--config", cfg, "--threads", "2"], stdout=log, stderr=log)
    try:
        deadline = time.time() + 15
        while time.time() < deadline:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                time.sleep(0.1)
        time.sleep(2)  # a map is published
        startup = b"\0\0\0\x12\0\x03\0\0user\0app\0\0"
        message = os.urandom(4096)
        # Warm-up connection, then the baseline.
        w = socket.create_connection(("127.0.0.1", port))
        w.sendall(startup + message)
        recv_exact(w, len(startup) + len(message))
        w.close()
        time.sleep(0.5)
        before = rss_kib(p.pid)
        clients = []
        # One at a time, as bench/run.py's psycopg clients connect.
        for _ in range(n):
            c = socket.create_connection(("127.0.0.1", port))
            c.sendall(startup + message)
            recv_exact(c, len(startup) + len(message))
            clients.append(c)
        time.sleep(1.5)
        after = rss_kib(p.pid)
        for c in clients:
            c.close()
        with open(os.path.join(tmp, "pgvane.log")) as f:
            line = next((l.strip() for l in f if "role ports relay with" in l), "?")
        return (after - before) / n, before, after, line
    finally:
        p.terminate()
        p.wait(timeout=20)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--clients", type=int, default=1000)
    ap.add_argument("--engines", default="off,on")
    ap.add_argument("--bin", default=os.path.join(ROOT, "target/release/pgvane"))
    a = ap.parse_args()
    lst = socket.socket()
    lst.bind(("127.0.0.1", 0))
    lst.listen(4096)
    threading.Thread(target=sink, args=(lst,), daemon=True).start()
    api = fake_patroni(lst.getsockname()[1])
    for engine in a.engines.split(","):
        per, before, after, line = measure(a.bin, engine, a.clients, api)
        print(f"io_uring: {engine:4}  {a.clients} idle clients: {per:.2f} KiB RSS each "
              f"({before} -> {after} KiB)  [{line[-60:]}]", flush=True)


if __name__ == "__main__":
    sys.exit(main())
