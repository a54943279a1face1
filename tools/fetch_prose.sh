#!/usr/bin/env bash
# Ordinary prose for the data-class detectors' false-positive measurement (`bench/run.sh
# dataclass`): the King James Bible (Debian's bible-kjv-text, decoded with bible-kjv's own
# reader, unpacked without installing) and the Python 3.11 documentation sources
# (python3.11-doc), pinned and sha256-verified, into build/prose/{kjv,python-docs}.txt.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=tools/fetch_lib.sh
. tools/fetch_lib.sh
OUT=build/prose
POOL=http://deb.debian.org/debian/pool/main
DEBS=(
  "b/bible-kjv/bible-kjv-text_4.38_all.deb d61b6aad4c51ba9e2800b825325fa6a09e99a0d02a9bb6dc4724fcc4995a1b7a"
  "b/bible-kjv/bible-kjv_4.38_amd64.deb 75a49c032a6efa9faa2beb4a9acb70974380122906329d0e100de36cc88ff02d"
  "p/python3.11/python3.11-doc_3.11.2-6+deb12u7_all.deb eafa42c54a08dcf3892d2e9f8e29644877c241d09186ca19a4d06129a339c9f3"
)
if [ -s "$OUT/kjv.txt" ] && [ -s "$OUT/python-docs.txt" ]; then
  echo "prose: $OUT is up to date"
  exit 0
fi
mkdir -p "$OUT"
tmp=$(mktemp -d "$OUT/.extract.XXXXXX")
trap 'rm -rf "$tmp"' EXIT
for entry in "${DEBS[@]}"; do
  read -r path sha <<<"$entry"
  deb=build/downloads/$(basename "$path")
  fetch_verified prose "$POOL/$path" "$deb" "$sha"
  dpkg-deb -x "$deb" "$tmp/x"
done
"$tmp/x/usr/bin/bible" -f -p "$tmp/x/usr/lib" "gen1:1-rev22:21" > "$OUT/kjv.txt.part"
find "$tmp/x/usr/share/doc/python3.11/html/_sources" -name '*.txt' | sort | xargs cat > "$OUT/python-docs.txt.part"
mv "$OUT/kjv.txt.part" "$OUT/kjv.txt"
mv "$OUT/python-docs.txt.part" "$OUT/python-docs.txt"
echo "prose: $(wc -c < "$OUT/kjv.txt") bytes of KJV, $(wc -c < "$OUT/python-docs.txt") bytes of Python docs"
