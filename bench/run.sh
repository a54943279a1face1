#!/usr/bin/env bash
# `make bench`: every measurement against a reference taken in the same run, then
# BENCHMARKS.md is rewritten from the results. One part alone: `bench/run.sh overhead`,
# `bench/run.sh decide` or `bench/run.sh footprint`.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=target/release
OUT=build/bench
mkdir -p "$OUT"
parts=("$@")
[ ${#parts[@]} -gt 0 ] || parts=(decide overhead footprint)
pids=()
cleanup() { [ ${#pids[@]} -eq 0 ] || { kill "${pids[@]}" 2>/dev/null; wait "${pids[@]}" 2>/dev/null; }; }
trap cleanup EXIT

overhead() {
  local dir=$OUT/overhead
  rm -rf "$dir"; mkdir -p "$dir/models" "$dir/policies"
  cp -r tests/fixtures/models/tiny-classify "$dir/models/"
  cat > "$dir/agent.toml" <<TOML
[server]
listen = "127.0.0.1:7501"
[models]
dir = "models"
[models.limits.tiny-classify]
max_concurrency = 64
max_queue = 256
[batching]
max_batch_size = 32
max_delay_ms = 0
[runtime]
intra_op_threads = 1
[report]
gateways = ["http://127.0.0.1:7500"]
interval_ms = 1000
[state]
dir = "state/agent"
TOML
  cat > "$dir/gateway.toml" <<TOML
[server]
listen = "127.0.0.1:7500"
id = "bench"
[policies]
paths = ["policies"]
[state]
dir = "state/gateway"
TOML
  printf 'routes:\n  - name: local\n    min_quality: 0\n    spill: wait\n' > "$dir/policies/bench.yaml"
  EDGEWISE_LOG=warn "$BIN/edgewise-gateway" --config "$dir/gateway.toml" run & local gw=$!; pids+=("$gw")
  EDGEWISE_LOG=warn "$BIN/edgewise-agent" --config "$dir/agent.toml" run & pids+=($!)
  "$BIN/edgewise-agent" call --addr http://127.0.0.1:7501 wait-ready --timeout-secs 60 >/dev/null
  for _ in $(seq 1 100); do
    "$BIN/edgewise" --gateway http://127.0.0.1:7500 fleet status 2>/dev/null | grep -q "tiny-classify .* ready" && break
    sleep 0.1
  done
  echo "== gateway overhead (tiny-classify fixture, open loop, direct and gateway interleaved)"
  "$BIN/edgewise-bench" overhead --agent http://127.0.0.1:7501 --gateway http://127.0.0.1:7500 \
    --model tiny-classify --rates "${RATES:-500,1000,2000}" --seconds "${SECONDS_PER_RATE:-10}" \
    --gateway-pid "$gw" | tee "$OUT/overhead.jsonl"
  cleanup; pids=()
}

decide() {
  echo "== routing decision (criterion)"
  cargo bench -q -p edgewise-gateway --bench decide -- --noplot 2>&1 | grep -E "^decide|time:" || true
  python3 - > "$OUT/decide.jsonl" <<'PY'
import json, pathlib
for n in (10, 100, 1000):
    p = pathlib.Path(f"target/criterion/decide/nodes_x10_models/{n}/new/estimates.json")
    e = json.loads(p.read_text())
    print(json.dumps({"bench": "decide", "nodes": n, "models": n * 10,
                      "median_us": e["median"]["point_estimate"] / 1e3,
                      "ci_low_us": e["median"]["confidence_interval"]["lower_bound"] / 1e3,
                      "ci_high_us": e["median"]["confidence_interval"]["upper_bound"] / 1e3}))
PY
  cat "$OUT/decide.jsonl"
}

footprint() {
  echo "== footprint (minilm-l6-int8 vs Python onnxruntime on the same file)"
  "$BIN/edgewise-bench" footprint --bin-dir "$BIN" --model models/minilm-l6-int8 --python build/venv/bin/python \
    | tee "$OUT/footprint.jsonl"
}

for p in "${parts[@]}"; do "$p"; done
python3 bench/report.py "$OUT" BENCHMARKS.md
echo "BENCHMARKS.md updated from $OUT"
