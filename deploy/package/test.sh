#!/usr/bin/env bash
# Checks the .deb from build.sh as an operator would meet it:
#   - the systemd units pass `systemd-analyze verify`;
#   - it installs with dpkg on a clean Debian 12 (debootstrap, minbase
#     with systemd),
#     creates the pgvane user, owns the config, and installs again over
#     itself (an upgrade);
#   - the installed binary runs as the pgvane user: `--check` passes on the
#     packaged config and, with the lab up (deploy/lab/lab.sh up), it
#     starts, becomes ready and routes a query on the leader port;
#   - purge removes the binary, the config and the user.
set -euo pipefail
cd "$(dirname "$0")/../.."
out=target/package
root="$out/debian-root"
deb=$(ls -t "$out"/pgvane_*_amd64.deb 2>/dev/null | head -n 1)
[ -n "$deb" ] || { echo "test.sh: no package; run deploy/package/build.sh first" >&2; exit 1; }
fail() { echo "package test: FAILED: $*" >&2; exit 1; }
ok() { echo "package test: ok: $*"; }
in_root() { chroot "$root" "$@"; }

# A clean Debian 12, made once and kept under target/ (purged after each run).
command -v debootstrap >/dev/null || {
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq debootstrap >/dev/null
}
# With systemd and procps (kill), as a server has them: the units are
# verified against this root.
if [ ! -x "$root/usr/bin/dpkg" ] || [ ! -x "$root/lib/systemd/systemd" ]; then
  rm -rf "$root"
  debootstrap --variant=minbase --include=systemd,procps bookworm "$root" http://deb.debian.org/debian \
    >"$out/debootstrap.log" 2>&1 || fail "debootstrap (see $out/debootstrap.log)"
fi
if in_root dpkg -s pgvane >/dev/null 2>&1; then in_root dpkg --purge pgvane >/dev/null; fi
in_root getent passwd pgvane >/dev/null && fail "the clean root already has a pgvane user"

# The units, checked against the installed tree (ExecStart must exist there).
in_root mkdir -p /tmp/pkg
cp "$deb" "$root/tmp/pkg/pgvane.deb"
in_root dpkg -i /tmp/pkg/pgvane.deb >"$out/dpkg-install.log" 2>&1 || fail "dpkg -i (see $out/dpkg-install.log)"
[ "$(in_root dpkg-query -W -f '${Status}' pgvane)" = "install ok installed" ] || fail "dpkg status"
ok "installed on a clean Debian 12"
for u in pgvane.service pgvane@.service; do
  # verify prints findings and exits non-zero on errors; warnings count too.
  findings=$(systemd-analyze verify --root="$root" "$root/lib/systemd/system/$u" 2>&1) || fail "$u: $findings"
  [ -z "$findings" ] || fail "$u: $findings"
done
ok "systemd-analyze verify: pgvane.service, pgvane@.service"
grep -qx 'Type=notify' "$root/lib/systemd/system/pgvane.service" || fail "unit is not Type=notify"
grep -q '^ExecReload=/bin/kill -HUP \$MAINPID$' "$root/lib/systemd/system/pgvane.service" || fail "ExecReload is not SIGHUP"

in_root getent passwd pgvane >/dev/null || fail "no pgvane user"
perms=$(in_root stat -c '%a %U:%G' /etc/pgvane/pgvane.yaml)
[ "$perms" = "640 root:pgvane" ] || fail "config is $perms, not 640 root:pgvane"
[ "$(in_root stat -c '%a' /usr/bin/pgvane)" = 755 ] || fail "binary mode"
in_root cat /usr/lib/sysctl.d/60-pgvane.conf | grep -qx 'net.ipv4.tcp_migrate_req = 1' || fail "sysctl file"
ok "user, config ownership ($perms), sysctl file"

in_root /usr/bin/pgvane --version | grep -q '^pgvane ' || fail "--version"
check=$(chroot --userspec=pgvane:pgvane "$root" /usr/bin/pgvane --check 2>&1) || fail "--check as pgvane: $check"
ok "as the pgvane user, --check on the default path: $check"

# Run it as the unit would, when the lab the default config names is up.
if curl -fsS --max-time 2 http://127.0.0.11:8008/patroni >/dev/null 2>&1; then
  if curl -fsS --max-time 1 http://127.0.0.1:8009/health >/dev/null 2>&1; then
    fail "something already answers on 127.0.0.1:8009"
  fi
  chroot --userspec=pgvane:pgvane "$root" /usr/bin/pgvane /etc/pgvane/pgvane.yaml >"$out/run.log" 2>&1 &
  pid=$!
  trap 'kill "$pid" 2>/dev/null || true' EXIT
  ready=0
  for _ in $(seq 1 100); do
    if curl -fsS --max-time 1 http://127.0.0.1:8009/ready >/dev/null 2>&1; then ready=1; break; fi
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.1
  done
  [ "$ready" = 1 ] || fail "not ready within 10 s (see $out/run.log)"
  got=$(PGPASSWORD=postgres PGCONNECT_TIMEOUT=5 psql -X -At -h 127.0.0.1 -p 6432 -U postgres -d postgres \
    -c "select pg_is_in_recovery()" 2>&1) || fail "query on the leader port: $got"
  [ "$got" = f ] || fail "leader port reached a node in recovery: $got"
  kill -TERM "$pid"
  wait "$pid" || fail "exit status $? after SIGTERM (see $out/run.log)"
  trap - EXIT
  ok "installed binary started as pgvane, ready, leader port answered, exited 0 on SIGTERM"
else
  echo "package test: the lab is not up: the run check is left out"
fi

# An upgrade (the same package over itself) keeps the user and the config.
echo "# kept" >>"$root/etc/pgvane/pgvane.yaml"
chmod 0600 "$root/etc/pgvane/pgvane.yaml"
in_root dpkg -i --force-confold /tmp/pkg/pgvane.deb >>"$out/dpkg-install.log" 2>&1 || fail "reinstall"
in_root grep -qx '# kept' /etc/pgvane/pgvane.yaml || fail "upgrade replaced an edited config"
[ "$(in_root stat -c '%a' /etc/pgvane/pgvane.yaml)" = 600 ] || fail "upgrade reset the config's mode"
ok "installed again over itself: the edited config and its mode were kept"

# Enabled as `systemctl enable` would; the admin's own file in /etc/pgvane.
in_root mkdir -p /etc/systemd/system/multi-user.target.wants
in_root ln -sf /lib/systemd/system/pgvane.service /etc/systemd/system/multi-user.target.wants/pgvane.service
echo "not ours" >"$root/etc/pgvane/admin-cert.pem"
in_root dpkg --purge pgvane >"$out/dpkg-purge.log" 2>&1 || fail "purge (see $out/dpkg-purge.log)"
[ -e "$root/etc/pgvane/admin-cert.pem" ] || fail "purge removed a file the admin put in /etc/pgvane"
[ ! -e "$root/etc/pgvane/pgvane.yaml" ] || fail "purge left the conffile"
[ ! -L "$root/etc/systemd/system/multi-user.target.wants/pgvane.service" ] || fail "purge left the unit enabled"
rm -rf "$root/etc/pgvane"
for f in /usr/bin/pgvane /lib/systemd/system/pgvane.service; do
  [ ! -e "$root$f" ] || fail "$f left after purge"
done
in_root getent passwd pgvane >/dev/null && fail "pgvane user left after purge"
ok "purged: binary, conffile, enablement and user gone; the admin's own file kept"
rm -rf "$root/tmp/pkg"
