#!/usr/bin/env bash
# Fetch Prometheus from Debian's package (pinned version, sha256-verified) and unpack its
# server binary into build/prometheus/ without installing anything; the metrics test scrapes
# both daemons with it. A failure here is reported, and the test then says why it cannot run.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=tools/fetch_lib.sh
. tools/fetch_lib.sh

VERSION=2.42.0+ds-5+b6
DEB="prometheus_${VERSION}_amd64.deb"
SHA256=3b0e0255b059a7696bd4a139a4a4eb24d71df067936a61ece5093559cbc7991c
URL="http://deb.debian.org/debian/pool/main/p/prometheus/$DEB"
OUT=build/prometheus
BIN="$OUT/prometheus"

if [ "$(uname -m)" != x86_64 ]; then
  echo "prometheus: only the amd64 package is pinned; the metrics test will say it cannot run" >&2
  exit 0
fi
if [ -x "$BIN" ] && [ "$(cat "$OUT/.deb-sha256" 2>/dev/null)" = "$SHA256" ]; then
  echo "prometheus: $BIN is up to date"
  exit 0
fi
mkdir -p "$OUT"
fetch_verified prometheus "$URL" "build/downloads/$DEB" "$SHA256"
tmp=$(mktemp -d "$OUT/.extract.XXXXXX")
trap 'rm -rf "$tmp"' EXIT
dpkg-deb -x "build/downloads/$DEB" "$tmp"
mv "$tmp/usr/bin/prometheus" "$BIN"
echo "$SHA256" > "$OUT/.deb-sha256"
echo "prometheus: $("$BIN" --version 2>&1 | head -n1)"
