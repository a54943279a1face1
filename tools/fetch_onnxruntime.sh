#!/usr/bin/env bash
# Fetch libonnxruntime.so.1.31.1 from the official onnxruntime==1.31.1 wheel on PyPI,
# verify the wheel's sha256, and extract the library into build/onnxruntime/.
set -euo pipefail
cd "$(dirname "$0")/.."

VERSION=1.31.1
OUT=build/onnxruntime
LIB="$OUT/libonnxruntime.so.$VERSION"
case "$(uname -m)" in
  x86_64)  PLATFORM=manylinux_2_28_x86_64;  SHA256=5752bd508126ae7c49894d3b9d2e83f0c3d487319246d04c444b393308d7ad7f ;;
  aarch64) PLATFORM=manylinux_2_28_aarch64; SHA256=da05378364c44d4407e463982d2bf8d5e4cfea873283757e48beeb41df97b7f3 ;;
  *) echo "onnxruntime: no pinned wheel for $(uname -m) (x86_64 and aarch64 are supported)" >&2; exit 1 ;;
esac
WHEEL="onnxruntime-$VERSION-cp311-cp311-$PLATFORM.whl"

if [ -f "$LIB" ] && [ -f "$OUT/.wheel-sha256" ] && [ "$(cat "$OUT/.wheel-sha256")" = "$SHA256" ]; then
  echo "onnxruntime: $LIB is up to date"
  exit 0
fi
command -v python3 >/dev/null || { echo "onnxruntime: python3 with pip is needed to fetch the wheel" >&2; exit 1; }
mkdir -p build/downloads "$OUT"
if [ ! -f "build/downloads/$WHEEL" ] || [ "$(sha256sum "build/downloads/$WHEEL" | cut -d' ' -f1)" != "$SHA256" ]; then
  echo "onnxruntime: downloading $WHEEL from PyPI"
  python3 -m pip download --no-deps --only-binary=:all: --python-version 3.11 --platform "$PLATFORM" \
    --progress-bar on -d build/downloads "onnxruntime==$VERSION"
fi
got=$(sha256sum "build/downloads/$WHEEL" | cut -d' ' -f1)
if [ "$got" != "$SHA256" ]; then
  echo "onnxruntime: sha256 mismatch for $WHEEL: got $got, pinned $SHA256" >&2
  rm -f "build/downloads/$WHEEL"
  exit 1
fi
tmp=$(mktemp -d "$OUT/.extract.XXXXXX")
trap 'rm -rf "$tmp"' EXIT
python3 - "build/downloads/$WHEEL" "$tmp/libonnxruntime.so.$VERSION" <<'PY'
import shutil, sys, zipfile
with zipfile.ZipFile(sys.argv[1]) as z, z.open("onnxruntime/capi/libonnxruntime.so.1.31.1") as src, open(sys.argv[2], "wb") as out:
    shutil.copyfileobj(src, out)
PY
mv "$tmp/libonnxruntime.so.$VERSION" "$LIB"
ln -sf "libonnxruntime.so.$VERSION" "$OUT/libonnxruntime.so.1"
echo "$SHA256" > "$OUT/.wheel-sha256"
echo "onnxruntime: wrote $LIB ($(stat -c %s "$LIB") bytes)"
