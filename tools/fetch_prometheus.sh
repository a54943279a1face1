#!/usr/bin/env bash
# Fetch Prometheus from Debian's package (pinned version, sha256-verified) and unpack its
# server binary into build/prometheus/ without installing anything; the metrics test scrapes
# both daemons with it. A failure here is reported, and the test then says why it cannot run.
set -euo pipefail
cd "$(dirname "$0")/.."

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
mkdir -p build/downloads "$OUT"
if [ ! -f "build/downloads/$DEB" ] || [ "$(sha256sum "build/downloads/$DEB" | cut -d' ' -f1)" != "$SHA256" ]; then
  echo "prometheus: downloading $DEB from deb.debian.org"
  if command -v curl >/dev/null; then
    curl -fsSL --retry 3 -o "build/downloads/$DEB.part" "$URL"
  else
    python3 -c 'import sys, urllib.request; urllib.request.urlretrieve(sys.argv[1], sys.argv[2])' "$URL" "build/downloads/$DEB.part"
  fi
  mv "build/downloads/$DEB.part" "build/downloads/$DEB"
fi
got=$(sha256sum "build/downloads/$DEB" | cut -d' ' -f1)
if [ "$got" != "$SHA256" ]; then
  echo "prometheus: sha256 mismatch for $DEB: got $got, pinned $SHA256" >&2
  rm -f "build/downloads/$DEB"
  exit 1
fi
tmp=$(mktemp -d "$OUT/.extract.XXXXXX")
trap 'rm -rf "$tmp"' EXIT
dpkg-deb -x "build/downloads/$DEB" "$tmp"
mv "$tmp/usr/bin/prometheus" "$BIN"
echo "$SHA256" > "$OUT/.deb-sha256"
echo "prometheus: $("$BIN" --version 2>&1 | head -n1)"
