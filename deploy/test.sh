#!/usr/bin/env bash
# Installs what the tests need and runs every test: format and lint checks,
# unit tests, then the end-to-end tests against a real Patroni lab started
# here (deploy/lab/lab.sh) and stopped afterwards by pid, then the package
# (deploy/package: built, installed on a clean Debian, run against the lab).
set -euo pipefail
cd "$(dirname "$0")/.."
t0=$SECONDS
step() { printf '\n=== %s (%ss)\n' "$*" "$((SECONDS - t0))"; }

step "install: PostgreSQL 15, etcd, Patroni venv (deploy/lab/lab.sh install)"
deploy/lab/lab.sh install
need=()
command -v psql >/dev/null || need+=(postgresql-client-15)
[ -f /usr/share/java/postgresql.jar ] || need+=(libpostgresql-jdbc-java)
command -v java >/dev/null || need+=(default-jdk-headless)
command -v node >/dev/null || need+=(nodejs npm)
command -v promtool >/dev/null || need+=(prometheus)
if [ ${#need[@]} -gt 0 ]; then
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
fi

step "install: driver test dependencies (asyncpg in the lab venv, node-postgres)"
/opt/pgvane-lab-venv/bin/python -c 'import asyncpg' 2>/dev/null || /opt/pgvane-lab-venv/bin/pip install -q --disable-pip-version-check 'asyncpg>=0.29'
[ -d tests/drivers/node/node_modules/pg ] || npm install --prefix tests/drivers/node --silent --no-audit --no-fund
rustup component list --installed 2>/dev/null | grep -q clippy || rustup component add clippy rustfmt || true

step "cargo fmt --check"
cargo fmt --all -- --check

step "cargo clippy --all-targets -- -D warnings"
cargo clippy --all-targets --locked -- -D warnings

step "build"
cargo build --all-targets --locked

step "unit tests (no network)"
cargo test --locked --lib

step "lab up"
started_lab=0
if ! deploy/lab/lab.sh status >/dev/null 2>&1; then started_lab=1; fi
cleanup() { [ "$started_lab" = 1 ] && deploy/lab/lab.sh down || true; }
trap cleanup EXIT
# No lab answering: clear what a run stopped without its cleanup left
# (data and etcd state under the lab directory), so this run starts fresh.
[ "$started_lab" = 0 ] || deploy/lab/lab.sh down
deploy/lab/lab.sh up

step "end-to-end tests against the lab (one at a time: they share one cluster)"
cargo test --locked --test '*' -- --test-threads=1 --nocapture

step "package: static binary and .deb built, installed on a clean Debian 12, run against the lab"
deploy/package/build.sh
deploy/package/test.sh

step "all tests passed in $((SECONDS - t0)) s"
