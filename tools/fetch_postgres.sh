#!/usr/bin/env bash
# A PostgreSQL server for the shared-ledger tests. A machine that has one (pg_config, or
# Debian's /usr/lib/postgresql/*/bin) uses it; otherwise Debian's postgresql-15 and libpq5
# packages (pinned versions, sha256-verified) are unpacked into build/postgres/ without
# installing anything, with build/postgres/bin pointing at the server's binaries.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=tools/fetch_lib.sh
. tools/fetch_lib.sh

VERSION=15.18-0+deb12u1
POOL=http://deb.debian.org/debian/pool/main/p/postgresql-15
PACKAGES=(
  "postgresql-15_${VERSION}_amd64.deb 6974c43ddec4f383d099e7d642cd59d0af83c2c90c0fb153a4179aa1bb4d73c1"
  "libpq5_${VERSION}_amd64.deb baef57c288d7d8c09c84cd461da35d28f981aa71c60448c1d95b52110cc9faf9"
)
OUT=build/postgres

have=""
if command -v pg_config >/dev/null && [ -x "$(pg_config --bindir)/initdb" ]; then
  have=$(pg_config --bindir)
else
  for d in /usr/lib/postgresql/*/bin; do
    [ -x "$d/initdb" ] && have=$d
  done
fi
if [ -n "$have" ]; then
  echo "postgres: using the machine's server in $have ($("$have/postgres" --version))"
  exit 0
fi
if [ "$(uname -m)" != x86_64 ]; then
  echo "postgres: only the amd64 packages are pinned; install PostgreSQL for the ledger tests" >&2
  exit 1
fi
stamp=$(printf '%s\n' "${PACKAGES[@]}" | sha256sum | cut -d' ' -f1)
if [ -x "$OUT/bin/initdb" ] && [ "$(cat "$OUT/.stamp" 2>/dev/null)" = "$stamp" ]; then
  echo "postgres: $OUT is up to date"
  exit 0
fi
rm -rf "$OUT"
mkdir -p "$OUT"
tmp=$(mktemp -d build/.postgres.XXXXXX)
trap 'rm -rf "$tmp"' EXIT
for p in "${PACKAGES[@]}"; do
  read -r deb sha <<<"$p"
  fetch_verified postgres "$POOL/$deb" "build/downloads/$deb" "$sha"
  dpkg-deb -x "build/downloads/$deb" "$tmp"
done
mv "$tmp"/* "$OUT/"
ln -s "usr/lib/postgresql/15/bin" "$OUT/bin"
# the server finds its libpq beside it; its share files by its relative install layout
cat > "$OUT/env" <<ENV
LD_LIBRARY_PATH=$PWD/$OUT/usr/lib/x86_64-linux-gnu
ENV
echo "$stamp" > "$OUT/.stamp"
echo "postgres: $(LD_LIBRARY_PATH="$PWD/$OUT/usr/lib/x86_64-linux-gnu" "$OUT/bin/postgres" --version)"
