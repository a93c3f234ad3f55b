#!/usr/bin/env bash
# Starts the Patroni lab and pgvane on config.example.yaml, then prints
# where to connect. Stop with: deploy/start.sh stop
set -euo pipefail
cd "$(dirname "$0")/.."
RUN=${PGVANE_RUN_DIR:-/tmp/pgvane-run}
mkdir -p "$RUN"

if [ "${1:-}" = stop ]; then
  if [ -f "$RUN/pgvane.pid" ] && kill -0 "$(cat "$RUN/pgvane.pid")" 2>/dev/null; then
    kill -TERM "$(cat "$RUN/pgvane.pid")"
    echo "pgvane stopping (pid $(cat "$RUN/pgvane.pid"))"
  fi
  rm -f "$RUN/pgvane.pid"
  deploy/lab/lab.sh down
  exit 0
fi

deploy/lab/lab.sh up
cargo build --release --locked --bin pgvane
if [ -f "$RUN/pgvane.pid" ] && kill -0 "$(cat "$RUN/pgvane.pid")" 2>/dev/null; then
  kill -TERM "$(cat "$RUN/pgvane.pid")"; sleep 1
fi
target/release/pgvane --config config.example.yaml >>"$RUN/pgvane.log" 2>&1 </dev/null &
echo $! >"$RUN/pgvane.pid"
for _ in $(seq 100); do
  curl -fsS --max-time 1 http://127.0.0.1:8009/ready >/dev/null 2>&1 && break
  sleep 0.1
done
curl -fsS http://127.0.0.1:8009/ready >/dev/null || { tail -20 "$RUN/pgvane.log"; exit 1; }
cat <<TXT

pgvane is running (pid $(cat "$RUN/pgvane.pid"), log $RUN/pgvane.log) on the lab cluster:
  leader port   psql "host=127.0.0.1 port=6432 user=postgres password=postgres"
  replica port  psql "host=127.0.0.1 port=6433 user=postgres password=postgres"
  any node      psql "host=127.0.0.1 port=6434 user=postgres password=postgres"
  split port    psql "host=127.0.0.1 port=6435 user=postgres password=postgres"   (reads to replicas, writes to the leader)
  admin API     curl http://127.0.0.1:8009/clusters   (also /metrics, /update_clusters, /reload)
  the lab       deploy/lab/lab.sh status | switchover | kill-leader | lag 2 | ...
Stop everything: deploy/start.sh stop
TXT
