#!/usr/bin/env bash
# Builds pgvane's static binary (x86_64, musl) and a .deb holding it, the
# systemd units, the sysctl file and a default config. Prints the paths.
#
#   deploy/package/build.sh            # → target/package/pgvane_<version>_amd64.deb
#
# The binary is static: the package depends on nothing and installs on any
# Debian or Ubuntu release with systemd.
set -euo pipefail
cd "$(dirname "$0")/../.."
here=deploy/package
target=x86_64-unknown-linux-musl
out=target/package

# The musl target and its C compiler (ring and mimalloc build C code).
rustup target list --installed | grep -qx "$target" || rustup target add "$target"
command -v musl-gcc >/dev/null || {
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq musl-tools >/dev/null
}
cargo build --release --locked --target "$target" --bin pgvane
bin="target/$target/release/pgvane"
# Static, or the package would need a libc it does not declare.
if readelf -d "$bin" | grep -q '(NEEDED)'; then
  echo "build.sh: $bin is not static" >&2; exit 1
fi

version=$(sed -n 's/^version = "\(.*\)"$/\1/p' Cargo.toml | head -n 1)
root="$out/pgvane_${version}_amd64"
rm -rf "$root"; mkdir -p "$root"
install -D -m 0755 "$bin" "$root/usr/bin/pgvane"
strip --strip-debug "$root/usr/bin/pgvane"
install -D -m 0644 "$here/pgvane.service" "$root/lib/systemd/system/pgvane.service"
# A second instance on the same config, for restarts and upgrades that
# refuse no client (docs/operations.md): the same unit, named by instance.
sed -e 's/^Description=.*/Description=pgvane (instance %i beside pgvane.service, same config)/' \
  -e '/^\[Install\]/,$d' "$here/pgvane.service" >"$root/lib/systemd/system/pgvane@.service"
chmod 0644 "$root/lib/systemd/system/pgvane@.service"
install -D -m 0644 "$here/60-pgvane.conf" "$root/usr/lib/sysctl.d/60-pgvane.conf"
install -D -m 0640 config.example.yaml "$root/etc/pgvane/pgvane.yaml"
for f in README.md docs/*.md; do install -D -m 0644 "$f" "$root/usr/share/doc/pgvane/$(basename "$f")"; done
install -D -m 0644 config.example.yaml "$root/usr/share/doc/pgvane/examples/pgvane.yaml"
cat >"$root/usr/share/doc/pgvane/copyright" <<COPY
Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/
Upstream-Name: pgvane
License: Apache-2.0
Files: *
Copyright: the pgvane authors
License: Apache-2.0
 On Debian systems, the full text is in /usr/share/common-licenses/Apache-2.0.
COPY

mkdir -p "$root/DEBIAN"
installed_kb=$(du -sk --exclude=DEBIAN "$root" | cut -f1)
cat >"$root/DEBIAN/control" <<CONTROL
Package: pgvane
Version: $version
Architecture: amd64
Maintainer: pgvane developers <pgvane@localhost>
Installed-Size: $installed_kb
Section: database
Priority: optional
Homepage: https://github.com/pgvane/pgvane
Description: PostgreSQL router for Patroni clusters
 Applications connect to pgvane as to PostgreSQL. It follows the Patroni
 REST API and sends each connection (role ports) or each statement (split
 ports) to the right node, with read-your-writes on replicas.
CONTROL
echo /etc/pgvane/pgvane.yaml >"$root/DEBIAN/conffiles"
install -m 0755 "$here/postinst" "$root/DEBIAN/postinst"
install -m 0755 "$here/prerm" "$root/DEBIAN/prerm"
install -m 0755 "$here/postrm" "$root/DEBIAN/postrm"
deb="$out/pgvane_${version}_amd64.deb"
dpkg-deb --build --root-owner-group -Zxz "$root" "$deb" >/dev/null
echo "static binary: $bin"
echo "package:       $deb"
