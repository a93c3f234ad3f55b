#!/usr/bin/env bash
# pgvane's Patroni lab: a real 3-node PostgreSQL 15 + Patroni 4.1 + etcd
# cluster on loopback, no Docker. Node N: PostgreSQL 127.0.0.(10+N):5432,
# Patroni REST 127.0.0.(10+N):8008; etcd 127.0.0.10:2379. PostgreSQL and
# Patroni run as the `postgres` user; every process is tracked by pid file
# and stopped by pid.
#
# Usage: lab.sh install|up|down|status|switchover|kill-leader|stop-node N|
#               start-node N|lag N [--no-wait]|unlag N|receive-lag N|unreceive-lag N|
#               timing LOOP_WAIT TTL RETRY_TIMEOUT|tag N noloadbalance|
#               untag N noloadbalance|sync on|off|quorum|pause-api|resume-api|
#               ssl on|off|ca|restapi-tls on|off|paths|leader|wait-healthy|psql N SQL|
#               delay MS|undelay|delayed|delay-node N MS
#
# TLS: every node gets a certificate from the lab's own CA ($LAB/tls/ca.pem,
# made with openssl at first start; SANs: the node's IP, 127.0.0.1 and
# localhost, so a TLS pass-through proxy on 127.0.0.1 verifies too).
# PostgreSQL runs with ssl off; `ssl on` turns it on cluster-wide through
# Patroni's dynamic config, `ssl off` and `up` turn it off. `restapi-tls on`
# serves every node's REST API over https with the node's certificate and
# requires a client certificate from the lab CA (`verify_client: required`;
# Patroni presents its own to other members); `restapi-tls paths` prints the
# CA, the client certificate and its key; `restapi-tls off` and `up` go back
# to plain http.
#
# Apply delay: `delay MS` sets recovery_min_apply_delay on every replica
# through Patroni's dynamic config (a reload, no restart) and waits until
# each replica reports it; `undelay` removes it and waits until every
# replica has replayed up to the leader's position. `up` leaves delays
# alone (tests call it while another test's delay must hold).
# `delay-node N MS` delays one node only, through its own patroni.yml
# (`postgresql.recovery_conf`, SIGHUP), and only while no cluster-wide
# delay is set (that one wins); `undelay` clears those as well. `delayed`
# prints the cluster-wide delay (nothing when there is none).
# (ALTER SYSTEM does not hold: Patroni removes the setting from
# postgresql.auto.conf within a second. pg_wal_replay_pause() does not
# hold either: Patroni resumes paused replay on PostgreSQL 14+.)
#
# Patroni's timing: the lab bootstraps with LAB_LOOP_WAIT (2), LAB_TTL (20)
# and LAB_RETRY_TIMEOUT (5); `timing` changes them on a running lab
# (Patroni's defaults are `timing 10 30 10`), and `up` puts them back.
set -euo pipefail

LAB=${PGVANE_LAB_DIR:-/tmp/pgvane-lab}
VENV=${PGVANE_LAB_VENV:-/opt/pgvane-lab-venv}
PGBIN=${PGVANE_PGBIN:-/usr/lib/postgresql/15/bin}
PATRONI_VERSION=${PATRONI_VERSION:-4.1.5}
NODES=(1 2 3)
SCOPE=lab
LAG_BYTES=$((16 * 1024 * 1024))
LOOP_WAIT=${LAB_LOOP_WAIT:-2}
TTL=${LAB_TTL:-20}
RETRY_TIMEOUT=${LAB_RETRY_TIMEOUT:-5}
export PGOPTIONS='-c client_min_messages=warning'

log() { printf '%s lab: %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { log "error: $*"; exit 1; }
ip_of() { echo "127.0.0.$((10 + $1))"; }
api() {
  if [ -f "$LAB/restapi-tls" ]; then
    curl -fsS --max-time 2 --cacert "$LAB/tls/ca.pem" --cert "$LAB/tls/client.crt" \
      --key "$LAB/tls/client.key" "https://$(ip_of "$1"):8008$2"
  else
    curl -fsS --max-time 2 "http://$(ip_of "$1"):8008$2"
  fi
}

as_pg() {
  if [ "$(id -u)" = 0 ]; then
    env HOME="$LAB" setpriv --reuid=postgres --regid=postgres --init-groups "$@"
  else
    "$@"
  fi
}

# Closes every inherited descriptor above 2 in this (sub)shell, so a lab
# daemon never keeps a caller's lock file (`flock lock lab.sh up`) open.
close_inherited() {
  local fd
  for fd in /proc/$BASHPID/fd/*; do
    fd=${fd##*/}
    [ "$fd" -gt 2 ] 2>/dev/null && eval "exec $fd>&-" 2>/dev/null || true
  done
}

# Starts "$@" as postgres in the background; $! is the program's own pid.
spawn_pg() { # logfile pidfile command...
  local logf=$1 pidf=$2; shift 2
  # In $LAB, not the caller's directory: a lab started from a checkout that
  # is later deleted would leave Patroni without a working directory (its
  # next PostgreSQL start fails in os.getcwd()).
  if [ "$(id -u)" = 0 ]; then
    ( close_inherited; cd "$LAB"; exec env HOME="$LAB" setpriv --reuid=postgres --regid=postgres --init-groups "$@" >>"$logf" 2>&1 </dev/null ) &
  else
    ( close_inherited; cd "$LAB"; exec "$@" >>"$logf" 2>&1 </dev/null ) &
  fi
  echo $! >"$pidf"
}

# ---------- install ----------
install() {
  local t0=$SECONDS need=()
  [ -x "$PGBIN/postgres" ] || need+=(postgresql-15)
  command -v etcd >/dev/null || need+=(etcd-server)
  command -v curl >/dev/null || need+=(curl)
  command -v setpriv >/dev/null || need+=(util-linux)
  command -v openssl >/dev/null || need+=(openssl)
  /usr/bin/python3 -c 'import ensurepip' 2>/dev/null || need+=(python3-venv)
  if [ ${#need[@]} -gt 0 ]; then
    log "installing ${need[*]} from Debian"
    [ "$(id -u)" = 0 ] || die "need root to install ${need[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
  fi
  if ! "$VENV/bin/patroni" --version 2>/dev/null | grep -q "$PATRONI_VERSION" \
     || ! grep -q '^home = /usr/bin' "$VENV/pyvenv.cfg" 2>/dev/null; then
    log "installing Patroni $PATRONI_VERSION + psycopg into $VENV"
    rm -rf "$VENV"
    /usr/bin/python3 -m venv "$VENV"
    "$VENV/bin/pip" install -q --disable-pip-version-check "patroni[etcd3]==$PATRONI_VERSION" 'psycopg[binary]>=3.1'
  fi
  log "dependencies ready in $((SECONDS - t0)) s"
}

# ---------- process helpers ----------
# A pid file's process, if it is alive and still the lab's own: its
# command line names the lab directory (etcd, Patroni and PostgreSQL all
# do). A pid file a stopped run left behind may name a reused pid.
pid_alive() {
  local pid
  [ -f "$1" ] || return 1
  pid=$(head -1 "$1")
  [[ $pid =~ ^[0-9]+$ ]] && kill -0 "$pid" 2>/dev/null || return 1
  tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -qF "$LAB"
}

stop_pid() { # pidfile signal timeout
  local f=$1 sig=${2:-TERM} t=${3:-20} pid
  [ -f "$f" ] || return 0
  pid=$(head -1 "$f")
  if pid_alive "$f"; then
    kill "-$sig" "$pid" 2>/dev/null || true
    for _ in $(seq $((t * 10))); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -0 "$pid" 2>/dev/null && kill -KILL "$pid" 2>/dev/null || true
  fi
  rm -f "$f"
}

postmaster_pid() { head -1 "$LAB/node$1/data/postmaster.pid" 2>/dev/null || true; }

# ---------- etcd ----------
start_etcd() {
  pid_alive "$LAB/etcd.pid" && return 0
  mkdir -p "$LAB/etcd"
  chown postgres: "$LAB/etcd"
  spawn_pg "$LAB/etcd/etcd.log" "$LAB/etcd.pid" etcd --name lab --data-dir "$LAB/etcd/data" \
    --listen-client-urls http://127.0.0.10:2379 --advertise-client-urls http://127.0.0.10:2379 \
    --listen-peer-urls http://127.0.0.10:2380 --initial-advertise-peer-urls http://127.0.0.10:2380 \
    --initial-cluster lab=http://127.0.0.10:2380 --enable-v2=true
  for _ in $(seq 100); do
    curl -fsS --max-time 1 http://127.0.0.10:2379/health >/dev/null 2>&1 && return 0
    sleep 0.1
  done
  die "etcd did not start; see $LAB/etcd/etcd.log"
}

# ---------- TLS ----------
# The lab CA and node N's certificate (idempotent).
make_certs() { # node
  local n=$1 t="$LAB/tls" ip
  ip=$(ip_of "$n")
  mkdir -p "$t"
  if [ ! -f "$t/ca.pem" ]; then
    openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 3650 \
      -subj "/CN=pgvane lab CA" -keyout "$t/ca.key" -out "$t/ca.pem" 2>/dev/null
  fi
  [ -f "$LAB/node$n/server.crt" ] && return 0
  openssl req -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -subj "/CN=node$n" \
    -keyout "$LAB/node$n/server.key" -out "$t/node$n.csr" 2>/dev/null
  printf 'subjectAltName=IP:%s,IP:127.0.0.1,DNS:localhost\n' "$ip" >"$t/node$n.ext"
  openssl x509 -req -in "$t/node$n.csr" -CA "$t/ca.pem" -CAkey "$t/ca.key" -CAcreateserial \
    -days 3650 -extfile "$t/node$n.ext" -out "$LAB/node$n/server.crt" 2>/dev/null
  chmod 600 "$LAB/node$n/server.key"
  chmod 755 "$t"; chmod 644 "$t/ca.pem"
}

# The client certificate curl and the tests present to a TLS REST API.
make_client_cert() {
  local t="$LAB/tls"
  [ -f "$t/client.crt" ] && return 0
  openssl req -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -subj "/CN=pgvane lab client" \
    -keyout "$t/client.key" -out "$t/client.csr" 2>/dev/null
  # An X.509 v3 certificate (an extension makes it one; webpki refuses v1).
  printf 'extendedKeyUsage=clientAuth\n' >"$t/client.ext"
  openssl x509 -req -in "$t/client.csr" -CA "$t/ca.pem" -CAkey "$t/ca.key" -CAcreateserial \
    -days 3650 -extfile "$t/client.ext" -out "$t/client.crt" 2>/dev/null
  chmod 644 "$t/client.key" "$t/client.crt" # read by test processes (a lab, not a secret)
}

restapi_is() { # on|off: every running node's REST API answers that way, and only that way
  local n ip
  for n in "${NODES[@]}"; do
    pid_alive "$LAB/node$n/patroni.pid" || continue
    ip=$(ip_of "$n")
    api "$n" /patroni >/dev/null || return 1
    if [ "$1" = on ]; then
      curl -fsS --max-time 1 "http://$ip:8008/patroni" >/dev/null 2>&1 && return 1
      # No client certificate, no answer.
      curl -fsS --max-time 1 --cacert "$LAB/tls/ca.pem" "https://$ip:8008/patroni" >/dev/null 2>&1 && return 1
    fi
  done
  return 0
}

set_restapi_tls() { # on|off: rewrite every node's restapi section, SIGHUP Patroni
  local n
  if [ "$1" = on ]; then
    [ -f "$LAB/restapi-tls" ] && restapi_is on && return 0
    make_client_cert; touch "$LAB/restapi-tls"
  else
    [ -f "$LAB/restapi-tls" ] || return 0
    rm -f "$LAB/restapi-tls"
  fi
  for n in "${NODES[@]}"; do
    pid_alive "$LAB/node$n/patroni.pid" || continue
    load_tags; write_config "$n"
    kill -HUP "$(cat "$LAB/node$n/patroni.pid")"
  done
  wait_for 60 "REST API tls=$1 on every node" restapi_is "$1"
  log "Patroni REST API tls=$1"
}

ssl_is() { # on|off: every running node's PostgreSQL reports it
  local n
  for n in "${NODES[@]}"; do
    pid_alive "$LAB/node$n/patroni.pid" || continue
    [ "$(sql "$n" "show ssl" 2>/dev/null)" = "$1" ] || return 1
  done
}

ssl_report() { # what each running node says, errors included
  local n out
  for n in "${NODES[@]}"; do
    pid_alive "$LAB/node$n/patroni.pid" || { printf 'node%s: stopped; ' "$n"; continue; }
    out=$(sql "$n" "show ssl" 2>&1 | tr '\n' ' ')
    printf 'node%s: %s; ' "$n" "$out"
  done
  printf 'DCS parameters: %s' "$(api 1 /config 2>/dev/null | tr -d '\n' | head -c 400)"
}

set_ssl() { # on|off
  ssl_is "$1" 2>/dev/null && return 0
  patronictl edit-config "$SCOPE" --force -s "postgresql.parameters.ssl=$1" >/dev/null
  wait_until 60 ssl_is "$1" ||
    die "timed out after 60s waiting for ssl=$1 on every node ($(ssl_report); cluster: $(summary 2>/dev/null || echo unreachable))"
  log "PostgreSQL ssl=$1"
}

# ---------- patroni ----------
write_config() {
  local n=$1 ip dir
  ip=$(ip_of "$n"); dir="$LAB/node$n"
  mkdir -p "$dir"
  make_certs "$n"
  cat >"$dir/patroni.yml" <<YAML
scope: $SCOPE
name: node$n
restapi:
  listen: $ip:8008
  connect_address: $ip:8008
$(if [ -f "$LAB/restapi-tls" ]; then
    printf '  certfile: %s\n  keyfile: %s\n  cafile: %s\n  verify_client: required\n' \
      "$dir/server.crt" "$dir/server.key" "$LAB/tls/ca.pem"
  fi)
etcd3:
  hosts: 127.0.0.10:2379
bootstrap:
  dcs:
    ttl: $TTL
    loop_wait: $LOOP_WAIT
    retry_timeout: $RETRY_TIMEOUT
    maximum_lag_on_failover: 1073741824
    postgresql:
      use_pg_rewind: true
      use_slots: true
      parameters:
        wal_level: replica
        hot_standby: "on"
        max_connections: 1200
        max_wal_senders: 10
        max_replication_slots: 10
        wal_keep_size: 512MB
        wal_log_hints: "on"
  initdb:
    - encoding: UTF8
    - data-checksums
postgresql:
  listen: $ip:5432
  connect_address: $ip:5432
  data_dir: $dir/data
  bin_dir: $PGBIN
  pgpass: $dir/pgpass
$(if [ -f "$dir/apply_delay" ]; then
    printf '  recovery_conf:\n    recovery_min_apply_delay: %s\n' "$(cat "$dir/apply_delay")"
  fi)
  authentication:
    superuser: {username: postgres, password: postgres}
    replication: {username: replicator, password: replicator}
    rewind: {username: rewinder, password: rewinder}
  # pg_hba.conf as a whole (initdb's own trust lines for 127.0.0.1 would
  # otherwise come first and let every TCP login in without a password).
  pg_hba:
    - local all all trust
    - host replication replicator 127.0.0.0/8 scram-sha-256
    - host all all 127.0.0.0/8 scram-sha-256
  parameters:
    unix_socket_directories: $dir
    shared_buffers: 64MB
    fsync: "off"
    synchronous_commit: "on"
    ssl_cert_file: $dir/server.crt
    ssl_key_file: $dir/server.key
tags:
  noloadbalance: ${NOLB[$n]:-false}
YAML
  chown -R postgres: "$dir"
}

declare -A NOLB=()
load_tags() { local n; for n in "${NODES[@]}"; do [ -f "$LAB/node$n/noloadbalance" ] && NOLB[$n]=true; done; return 0; }

start_node() {
  local n=$1
  pid_alive "$LAB/node$n/patroni.pid" && return 0
  load_tags; write_config "$n"
  spawn_pg "$LAB/node$n/patroni.log" "$LAB/node$n/patroni.pid" "$VENV/bin/patroni" "$LAB/node$n/patroni.yml"
}

# ---------- cluster queries ----------
cluster_json() {
  local n
  for n in "${NODES[@]}"; do api "$n" /cluster 2>/dev/null && return 0; done
  return 1
}

# Prints "name=role/state[:lag]" for each member.
summary() {
  cluster_json | /usr/bin/python3 -c '
import json,sys
d=json.load(sys.stdin)
out=[]
for m in d.get("members",[]):
    lag=m.get("replay_lag", m.get("lag"))
    s="%s=%s/%s"%(m["name"],m["role"],m["state"])
    if lag not in (None,0): s+=":lag=%s"%lag
    out.append(s)
print(" ".join(out))'
}

leader() { cluster_json | /usr/bin/python3 -c '
import json,sys
d=json.load(sys.stdin)
print(next((m["name"] for m in d["members"] if m["role"] in ("leader","standby_leader")), ""))'; }

wait_until() { # timeout command...: true once the command succeeds, false at the deadline
  local end=$((SECONDS + $1)); shift
  while [ $SECONDS -lt $end ]; do
    "$@" >/dev/null 2>&1 && return 0
    sleep 0.2
  done
  return 1
}

wait_for() { # timeout description command...
  local t=$1 what=$2; shift 2
  wait_until "$t" "$@" && return 0
  die "timed out after ${t}s waiting for $what (cluster: $(summary 2>/dev/null || echo unreachable))"
}

# Healthy: one leader, every started node listed as a streaming or sync/quorum replica.
healthy() {
  local want=0 n
  for n in "${NODES[@]}"; do pid_alive "$LAB/node$n/patroni.pid" && want=$((want + 1)); done
  cluster_json | /usr/bin/python3 -c '
import json,sys
want=int(sys.argv[1]); d=json.load(sys.stdin); ms=d["members"]
leaders=[m for m in ms if m["role"] in ("leader",) and m["state"]=="running"]
reps=[m for m in ms if m["role"]!="leader" and m["state"]=="streaming" and (m.get("replay_lag", m.get("lag")) or 0) < 1048576]
sys.exit(0 if len(leaders)==1 and len(reps)==want-1 and len(ms)==want else 1)' "$want"
}

member_lag_at_least() { cluster_json | /usr/bin/python3 -c '
import json,sys
d=json.load(sys.stdin)
m=[m for m in d["members"] if m["name"]==sys.argv[1]]
lag=m[0].get("replay_lag", m[0].get("lag")) if m else None
sys.exit(0 if isinstance(lag,int) and lag>=int(sys.argv[2]) else 1)' "node$1" "$2"; }

member_absent_or_stopped() { cluster_json | /usr/bin/python3 -c '
import json,sys
d=json.load(sys.stdin)
m=[m for m in d["members"] if m["name"]==sys.argv[1]]
sys.exit(0 if not m or m[0]["state"]!="running" and m[0]["state"]!="streaming" else 1)' "node$1"; }

leader_is_not() { local l; l=$(leader); [ -n "$l" ] && [ "$l" != "$1" ]; }

sql() { # node sql...
  local n=$1; shift
  as_pg "$PGBIN/psql" -X -q -At -h "$LAB/node$n" -p 5432 -U postgres -d postgres -c "$*"
}

patronictl() { "$VENV/bin/patronictl" -c "$LAB/node1/patroni.yml" "$@"; }

# ---------- commands ----------
cmd_up() {
  local t0=$SECONDS
  install
  id postgres >/dev/null 2>&1 || die "no postgres user (installed with postgresql-15)"
  mkdir -p "$LAB"; chmod 755 "$LAB"
  # A pgvane replaced by a new one beside it (SO_REUSEPORT) hands the
  # connections queued on its closing listeners over to the new one only
  # with tcp_migrate_req (Linux 5.14+); without it the kernel resets them.
  if [ -w /proc/sys/net/ipv4/tcp_migrate_req ]; then echo 1 >/proc/sys/net/ipv4/tcp_migrate_req; fi
  local fresh=0
  pid_alive "$LAB/etcd.pid" || fresh=1
  start_etcd
  for n in "${NODES[@]}"; do start_node "$n"; done
  set_restapi_tls off
  undo_faults
  wait_for 120 "a healthy 3-node cluster" healthy
  set_timing "$LOOP_WAIT" "$TTL" "$RETRY_TIMEOUT"
  # Only when this call started etcd: a running lab keeps what a test set
  # (tests call `up` to make sure of a healthy lab while holding a delay).
  [ "$fresh" = 0 ] || set_baseline_dynamic
  set_ssl off
  log "cluster ready in $((SECONDS - t0)) s: $(summary)"
}

cmd_down() {
  local n pm
  for n in "${NODES[@]}"; do stop_pid "$LAB/node$n/patroni.pid" TERM 30; done
  for n in "${NODES[@]}"; do
    pm=$(postmaster_pid "$n")
    if [ -n "$pm" ] && kill -0 "$pm" 2>/dev/null; then
      echo "$pm" >"$LAB/node$n/pg.pid"; stop_pid "$LAB/node$n/pg.pid" INT 20
    fi
  done
  stop_pid "$LAB/etcd.pid" TERM 10
  rm -rf "$LAB"
  log "lab stopped and removed"
}

cmd_switchover() {
  local old t0=$SECONDS
  old=$(leader); [ -n "$old" ] || die "no leader"
  patronictl switchover "$SCOPE" --leader "$old" --force >/dev/null
  wait_for 60 "a new leader" leader_is_not "$old"
  log "switchover: $old -> $(leader) after $((SECONDS - t0)) s"
  wait_for 60 "healthy cluster after switchover" healthy
}

cmd_kill_leader() {
  local old n pm
  old=$(leader); [ -n "$old" ] || die "no leader"
  n=${old#node}
  pm=$(postmaster_pid "$n")
  kill -KILL "$(cat "$LAB/node$n/patroni.pid")" 2>/dev/null || true
  [ -n "$pm" ] && kill -KILL "$pm" 2>/dev/null || true
  rm -f "$LAB/node$n/patroni.pid"
  log "killed -9 leader $old (patroni and postmaster $pm)"
  echo "$old"
}

cmd_stop_node() {
  local n=$1
  stop_pid "$LAB/node$n/patroni.pid" TERM 60
  log "node$n stopped"
}

cmd_start_node() {
  local n=$1 t0=$SECONDS
  start_node "$n"
  wait_for 120 "node$n back and the cluster healthy" healthy
  log "node$n up after $((SECONDS - t0)) s"
}

# Real replay lag on replica N: a reader there holds a lock that the
# leader's TRUNCATE (an ACCESS EXCLUSIVE lock in the WAL) conflicts with,
# so N's replay waits (up to max_standby_streaming_delay, 30 s) while it
# keeps receiving; the leader then moves 3 WAL segments on. (Pausing replay
# does not work under Patroni: its HA loop resumes paused replay on
# PostgreSQL 14+.) `--no-wait` returns once the WAL is written; otherwise
# it waits until /cluster shows the lag.
cmd_lag() {
  local n=$1 l pid i t0=$SECONDS
  l=$(leader); [ "node$n" != "$l" ] || die "node$n is the leader"
  sql "${l#node}" "create table if not exists lab_lag(x int)" >/dev/null
  wait_for 30 "lab_lag replicated to node$n" sql "$n" "select 1 from lab_lag limit 1"
  (
    close_inherited
    exec env HOME="$LAB" setpriv --reuid=postgres --regid=postgres --init-groups "$PGBIN/psql" -X -q \
      "host=$LAB/node$n port=5432 user=postgres dbname=postgres application_name=lab-lag" \
      -c "begin; select count(*) from lab_lag; select pg_sleep(120)" >/dev/null 2>&1
  ) &
  echo $! >"$LAB/node$n/lag.pid"
  wait_for 10 "the lock holder on node$n" lock_held "$n"
  sql "${l#node}" "truncate lab_lag" >/dev/null
  for i in 1 2 3; do
    sql "${l#node}" "insert into lab_lag values ($i); select pg_switch_wal();" >/dev/null
  done
  [ "${2:-}" = --no-wait ] && { log "node$n replay blocked, leader 3 segments on"; return 0; }
  wait_for 60 "node$n lag >= $LAG_BYTES" member_lag_at_least "$n" "$LAG_BYTES"
  log "node$n lags >= $LAG_BYTES bytes after $((SECONDS - t0)) s"
}

lock_held() {
  [ "$(sql "$1" "select count(*) from pg_locks l join pg_stat_activity a using (pid) where a.application_name = 'lab-lag' and l.relation = 'lab_lag'::regclass")" -ge 1 ]
}

# Ends replica N's blocking reader (its replay goes on) and waits for health.
release_lag() {
  local n=$1
  sql "$n" "select pg_terminate_backend(pid) from pg_stat_activity where application_name = 'lab-lag'" >/dev/null 2>&1 || true
  [ -f "$LAB/node$n/lag.pid" ] && kill "$(cat "$LAB/node$n/lag.pid")" 2>/dev/null || true
  rm -f "$LAB/node$n/lag.pid"
}

cmd_unlag() {
  local n=$1 t0=$SECONDS
  release_lag "$n"
  wait_for 60 "node$n caught up" healthy
  log "node$n caught up after $((SECONDS - t0)) s"
}

# Undoes what a failed test may have left: a stopped WAL receiver, a
# replay-blocking reader, paused replay.
undo_faults() {
  local n f
  for n in "${NODES[@]}"; do
    f="$LAB/node$n/walreceiver.stopped"
    if [ -f "$f" ]; then kill -CONT "$(cat "$f")" 2>/dev/null || true; rm -f "$f"; fi
    pid_alive "$LAB/node$n/patroni.pid" || continue
    [ -f "$LAB/node$n/lag.pid" ] && release_lag "$n"
    sql "$n" "select pg_wal_replay_resume() where pg_is_in_recovery()" >/dev/null 2>&1 || true
  done
}

config_json() {
  local n
  for n in "${NODES[@]}"; do api "$n" /config 2>/dev/null && return 0; done
  return 1
}

timing_is() { # loop_wait ttl retry_timeout
  config_json | /usr/bin/python3 -c '
import json,sys
c=json.load(sys.stdin)
sys.exit(0 if [c.get("loop_wait"),c.get("ttl"),c.get("retry_timeout")]==[int(a) for a in sys.argv[1:]] else 1)' "$@"
}

# The dynamic settings tests change and a killed test run may leave in
# etcd (the lab directory survives a run stopped without its cleanup),
# put back when `up` finds the lab stopped: synchronous_mode off, and no
# apply delay (set_undelay).
sync_is_off() {
  config_json | /usr/bin/python3 -c '
import json,sys
sys.exit(0 if json.load(sys.stdin).get("synchronous_mode", False) in (False, "off", "false") else 1)'
}

set_baseline_dynamic() {
  set_undelay
  sync_is_off 2>/dev/null || cmd_sync off
}

set_timing() { # loop_wait ttl retry_timeout
  timing_is "$@" 2>/dev/null && return 0
  patronictl edit-config "$SCOPE" --force -s "loop_wait=$1" -s "ttl=$2" -s "retry_timeout=$3" >/dev/null
  wait_for 30 "loop_wait=$1 ttl=$2 retry_timeout=$3 in /config" timing_is "$@"
  log "Patroni timing: loop_wait=$1 ttl=$2 retry_timeout=$3"
}

# ---------- apply delay ----------
# Every running node in recovery reports recovery_min_apply_delay = $1 ms
# (`node` and a number: that node only).
delay_is() { # ms [node]
  local n v
  for n in "${NODES[@]}"; do
    [ -n "${2:-}" ] && [ "$n" != "$2" ] && continue
    pid_alive "$LAB/node$n/patroni.pid" || continue
    v=$(sql "$n" "select case when pg_is_in_recovery() then setting end from pg_settings where name = 'recovery_min_apply_delay'") || return 1
    [ -z "$v" ] || [ "$v" = "$1" ] || return 1
  done
}

# Every running replica has replayed up to the leader's current position.
caught_up() {
  local l lsn n
  l=$(leader); [ -n "$l" ] || return 1
  lsn=$(sql "${l#node}" "select pg_current_wal_flush_lsn()") || return 1
  for n in "${NODES[@]}"; do
    [ "node$n" = "$l" ] && continue
    pid_alive "$LAB/node$n/patroni.pid" || continue
    [ "$(sql "$n" "select coalesce(pg_last_wal_replay_lsn() >= '$lsn'::pg_lsn, false)")" = t ] || return 1
  done
}

dyn_delay() { # the dynamic config's recovery_min_apply_delay, empty if none
  config_json | /usr/bin/python3 -c '
import json,sys
v=(json.load(sys.stdin).get("postgresql") or {}).get("parameters",{}).get("recovery_min_apply_delay")
print("" if v is None else v)'
}

cmd_delay() {
  local ms=$1 t0=$SECONDS
  [[ $ms =~ ^[0-9]+$ ]] || die "delay MS: a whole number of milliseconds"
  patronictl edit-config "$SCOPE" --force -s "postgresql.parameters.recovery_min_apply_delay=$ms" >/dev/null
  wait_for 60 "recovery_min_apply_delay=$ms on every replica" delay_is "$ms"
  log "replicas apply WAL ${ms} ms late (set in $((SECONDS - t0)) s)"
}

cmd_delay_node() {
  local n=$1 ms=$2 t0=$SECONDS
  [[ $ms =~ ^[0-9]+$ ]] || die "delay-node N MS: a whole number of milliseconds"
  pid_alive "$LAB/node$n/patroni.pid" || die "node$n is not running"
  # The dynamic config's postgresql.parameters win over a node's recovery_conf.
  [ -z "$(dyn_delay)" ] || die "a cluster-wide delay is set (it wins over per-node ones): undelay first"
  echo "$ms" >"$LAB/node$n/apply_delay"
  load_tags; write_config "$n"
  kill -HUP "$(cat "$LAB/node$n/patroni.pid")"
  wait_for 60 "recovery_min_apply_delay=$ms on node$n" delay_is "$ms" "$n"
  log "node$n applies WAL ${ms} ms late (set in $((SECONDS - t0)) s)"
}

# Removes every delay (dynamic and per node); quiet when there is none.
set_undelay() {
  local n changed=0
  if [ -n "$(dyn_delay 2>/dev/null)" ]; then
    patronictl edit-config "$SCOPE" --force -s "postgresql.parameters.recovery_min_apply_delay=null" >/dev/null
    changed=1
  fi
  for n in "${NODES[@]}"; do
    [ -f "$LAB/node$n/apply_delay" ] || continue
    rm -f "$LAB/node$n/apply_delay"; changed=1
    pid_alive "$LAB/node$n/patroni.pid" || continue
    load_tags; write_config "$n"
    kill -HUP "$(cat "$LAB/node$n/patroni.pid")"
  done
  wait_for 60 "recovery_min_apply_delay=0 on every replica" delay_is 0
  wait_for 60 "every replica caught up with the leader" caught_up
  [ $changed = 0 ] || log "apply delay removed, replicas caught up"
}

cmd_undelay() {
  local t0=$SECONDS
  set_undelay
  log "undelay done in $((SECONDS - t0)) s"
}

# Cuts replica N off from WAL (its WAL receiver stopped with SIGSTOP), then
# writes WAL on the leader: N's receive (and so replay) lag grows.
cmd_receive_lag() {
  local n=$1 l pid i
  l=$(leader); [ "node$n" != "$l" ] || die "node$n is the leader"
  pid=$(sql "$n" "select pid from pg_stat_wal_receiver")
  [ -n "$pid" ] || die "node$n has no WAL receiver"
  kill -STOP "$pid"
  echo "$pid" >"$LAB/node$n/walreceiver.stopped"
  sql "${l#node}" "create table if not exists lab_lag(x int)" >/dev/null
  for i in 1 2 3; do
    sql "${l#node}" "insert into lab_lag values ($i); select pg_switch_wal();" >/dev/null
  done
  log "node$n cut off from WAL (walreceiver $pid stopped), leader 3 segments on"
}

cmd_unreceive_lag() {
  local n=$1 f t0=$SECONDS
  f="$LAB/node$n/walreceiver.stopped"
  [ -f "$f" ] && kill -CONT "$(cat "$f")" 2>/dev/null
  rm -f "$f"
  wait_for 60 "node$n caught up" healthy
  log "node$n receives WAL again, caught up after $((SECONDS - t0)) s"
}

cmd_tag() { # on|off N tag
  local on=$1 n=$2 tag=$3
  [ "$tag" = noloadbalance ] || die "only the noloadbalance tag is supported"
  if [ "$on" = on ]; then touch "$LAB/node$n/noloadbalance"; else rm -f "$LAB/node$n/noloadbalance"; fi
  load_tags; NOLB[$n]=$([ "$on" = on ] && echo true || echo false); write_config "$n"
  kill -HUP "$(cat "$LAB/node$n/patroni.pid")"
  local want; want=$([ "$on" = on ] && echo True || echo False)
  wait_for 30 "node$n noloadbalance=$want" tag_is "$n" "$want"
  log "node$n noloadbalance=$want"
}

tag_is() { cluster_json | /usr/bin/python3 -c '
import json,sys
d=json.load(sys.stdin)
m=[m for m in d["members"] if m["name"]==sys.argv[1]][0]
sys.exit(0 if str(bool((m.get("tags") or {}).get("noloadbalance")))==sys.argv[2] else 1)' "node$1" "$2"; }

cmd_sync() {
  local mode=$1 want
  case $mode in on) want=sync_standby ;; quorum) want=quorum_standby ;; off) want=off ;; *) die "sync on|off|quorum" ;; esac
  patronictl edit-config "$SCOPE" --force -s "synchronous_mode=$mode" >/dev/null
  if [ "$want" = off ]; then
    wait_for 30 "no sync standby" sh -c "! $0 summary | grep -Eq 'sync_standby|quorum_standby'"
  else
    wait_for 30 "a $want" sh -c "$0 summary | grep -q '$want'"
  fi
  log "synchronous_mode=$mode: $(summary)"
}

case ${1:-} in
  install) install ;;
  up) cmd_up ;;
  down) cmd_down ;;
  status) summary ;;
  summary) summary ;;
  leader) leader ;;
  ssl) case "${2:?on|off|ca}" in on|off) set_ssl "$2" ;; ca) echo "$LAB/tls/ca.pem" ;; *) die "ssl on|off|ca" ;; esac ;;
  restapi-tls) case "${2:?on|off|paths}" in
      on|off) set_restapi_tls "$2" ;;
      paths) make_client_cert; printf '%s\n' "$LAB/tls/ca.pem" "$LAB/tls/client.crt" "$LAB/tls/client.key" ;;
      *) die "restapi-tls on|off|paths" ;;
    esac ;;
  wait-healthy) wait_for "${2:-120}" "a healthy cluster" healthy ;;
  switchover) cmd_switchover ;;
  kill-leader) cmd_kill_leader ;;
  stop-node) cmd_stop_node "${2:?node}" ;;
  start-node) cmd_start_node "${2:?node}" ;;
  lag) cmd_lag "${2:?node}" "${3:-}" ;;
  unlag) cmd_unlag "${2:?node}" ;;
  receive-lag) cmd_receive_lag "${2:?node}" ;;
  unreceive-lag) cmd_unreceive_lag "${2:?node}" ;;
  timing) set_timing "${2:?loop_wait}" "${3:?ttl}" "${4:?retry_timeout}" ;;
  tag) cmd_tag on "${2:?node}" "${3:?tag}" ;;
  untag) cmd_tag off "${2:?node}" "${3:?tag}" ;;
  sync) cmd_sync "${2:?on|off|quorum}" ;;
  pause-api) for n in "${NODES[@]}"; do pid_alive "$LAB/node$n/patroni.pid" && kill -STOP "$(cat "$LAB/node$n/patroni.pid")"; done; log "every Patroni paused (SIGSTOP); PostgreSQL keeps running" ;;
  resume-api) for n in "${NODES[@]}"; do pid_alive "$LAB/node$n/patroni.pid" && kill -CONT "$(cat "$LAB/node$n/patroni.pid")"; done; log "every Patroni resumed" ;;
  delay) cmd_delay "${2:?ms}" ;;
  undelay) cmd_undelay ;;
  delayed) dyn_delay ;;
  delay-node) cmd_delay_node "${2:?node}" "${3:?ms}" ;;
  psql) n=${2:?node}; shift 2; sql "$n" "$@" ;;
  *) sed -n '2,13p' "$0"; exit 2 ;;
esac
