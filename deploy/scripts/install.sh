#!/bin/bash
# install.sh — install a release of Aragora in the layout the runbook's rollback uses:
#
#   /opt/aragora/releases/vX.Y.Z/aragora     the binary (plus docs/ and deploy/)
#   /opt/aragora/current -> releases/vX.Y.Z  what the systemd unit runs
#
# Usage (as root, from a source checkout after `cargo build --release`):
#   deploy/scripts/install.sh [BINARY] [--no-activate]
# BINARY defaults to target/release/aragora; the version is the one the binary reports
# (`aragora --version`), which is also what GET /api/health shows as "version".
# ARAGORA_PREFIX (default /opt/aragora) and ARAGORA_SYSTEMD_DIR (default /etc/systemd/system)
# relocate the install (used by the tests); with ARAGORA_NO_SYSTEM=1 no user, unit or systemctl
# is touched.
set -euo pipefail

HERE="$(cd "$(dirname "$0")" && pwd)"
SRC="$(cd "$HERE/../.." && pwd)"
BINARY="${1:-$SRC/target/release/aragora}"
ACTIVATE=1
[ "${2:-}" = "--no-activate" ] && ACTIVATE=0
PREFIX="${ARAGORA_PREFIX:-/opt/aragora}"
SYSTEMD_DIR="${ARAGORA_SYSTEMD_DIR:-/etc/systemd/system}"
NO_SYSTEM="${ARAGORA_NO_SYSTEM:-0}"

[ -x "$BINARY" ] || { echo "install.sh: no executable at $BINARY" >&2; exit 1; }
VERSION="$("$BINARY" --version | awk '{print $2}')"
[ -n "$VERSION" ] || { echo "install.sh: cannot read the version of $BINARY" >&2; exit 1; }
RELEASE="$PREFIX/releases/v$VERSION"

if [ "$NO_SYSTEM" != 1 ]; then
  getent group aragora >/dev/null || groupadd --system aragora
  getent passwd aragora >/dev/null || useradd --system --gid aragora --home-dir /var/lib/aragora \
    --shell /usr/sbin/nologin aragora
  install -d -o aragora -g aragora -m 0750 /var/lib/aragora /var/lib/aragora/data /var/log/aragora
  install -d -m 0750 -g aragora /etc/aragora
  [ -f /etc/aragora/aragora.env ] || install -m 0640 -g aragora "$SRC/deploy/aragora.env.example" /etc/aragora/aragora.env
fi

install -d "$RELEASE"
install -m 0755 "$BINARY" "$RELEASE/aragora.new"
mv -f "$RELEASE/aragora.new" "$RELEASE/aragora"
rm -rf "$RELEASE/docs" "$RELEASE/deploy"
cp -r "$SRC/docs" "$SRC/deploy" "$RELEASE/"
[ -f "$SRC/README.md" ] && cp "$SRC/README.md" "$RELEASE/"
echo "installed $RELEASE"

if [ "$ACTIVATE" = 1 ]; then
  # Relative link, flipped atomically (the runbook's rollback makes the same kind of link).
  ln -sfn "releases/v$VERSION" "$PREFIX/current.new"
  mv -T "$PREFIX/current.new" "$PREFIX/current"
  echo "current -> releases/v$VERSION"
  if [ "$NO_SYSTEM" != 1 ]; then
    install -m 0644 "$SRC/deploy/aragora.service" "$SYSTEMD_DIR/aragora.service"
    systemctl daemon-reload
    systemctl enable aragora >/dev/null
    echo "now: systemctl restart aragora && curl -s http://localhost:8080/api/health | jq '.version'"
  fi
fi
ls -la "$PREFIX/releases/"
