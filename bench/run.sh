#!/usr/bin/env bash
# `make bench`: every measurement against a reference taken in the same run, then
# BENCHMARKS.md is rewritten from the results. One part alone: `bench/run.sh PART` with
# PART one of decide, ledger, dataclass, overhead, embed, generate, batching, structured, fleet,
# footprint, lifecycle, routing.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=target/release
OUT=build/bench
mkdir -p "$OUT"
parts=("$@")
[ ${#parts[@]} -gt 0 ] || parts=(decide ledger dataclass overhead embed generate batching structured fleet footprint lifecycle routing)
PY=build/venv/bin/python
THREADS=2
pids=()
cleanup() { [ ${#pids[@]} -eq 0 ] || { kill "${pids[@]}" 2>/dev/null; wait "${pids[@]}" 2>/dev/null; }; }
trap cleanup EXIT

overhead() {
  local dir=$OUT/overhead
  rm -rf "$dir"; mkdir -p "$dir/models" "$dir/policies"
  cp -r tests/fixtures/models/tiny-classify tests/fixtures/models/tiny-embed "$dir/models/"
  cat > "$dir/agent.toml" <<TOML
[server]
listen = "127.0.0.1:7501"
[tls]
plaintext = true
[models]
dir = "models"
[models.limits.tiny-classify]
max_concurrency = 64
max_queue = 256
[models.limits.tiny-embed]
max_concurrency = 64
max_queue = 256
[batching]
max_batch_size = 32
max_delay_ms = 0
[runtime]
intra_op_threads = 1
[report]
gateways = ["http://127.0.0.1:7500", "http://127.0.0.1:7510"]
interval_ms = 1000
[state]
dir = "state/agent"
TOML
  cat > "$dir/gateway.toml" <<TOML
[server]
listen = "127.0.0.1:7500"
id = "bench"
[tls]
plaintext = true
[http]
listen = "127.0.0.1:7580"
[policies]
paths = ["policies"]
[state]
dir = "state/gateway"
TOML
  printf 'routes:\n  - name: local\n    min_quality: 0\n    spill: wait\n' > "$dir/policies/bench.yaml"
  # a second gateway, the same but for a policy that never scans request text
  mkdir -p "$dir/off/policies"
  sed -e 's/7500/7510/; s/7580/7590/; s/"bench"/"bench-off"/; s#state/gateway#state/gateway-off#; s#"policies"#"off/policies"#' \
    "$dir/gateway.toml" > "$dir/gateway-off.toml"
  printf 'routes:\n  - name: local\n    min_quality: 0\n    spill: wait\n    inference: off\n' > "$dir/off/policies/bench.yaml"
  EDGEWISE_LOG=warn "$BIN/edgewise-gateway" --config "$dir/gateway.toml" run & local gw=$!; pids+=("$gw")
  EDGEWISE_LOG=warn "$BIN/edgewise-gateway" --config "$dir/gateway-off.toml" run & pids+=($!)
  EDGEWISE_LOG=warn "$BIN/edgewise-agent" --config "$dir/agent.toml" run & pids+=($!)
  "$BIN/edgewise-agent" call --addr http://127.0.0.1:7501 wait-ready --timeout-secs 60 >/dev/null
  for _ in $(seq 1 100); do
    s=$("$BIN/edgewise" --gateway http://127.0.0.1:7500 fleet status 2>/dev/null || true)
    o=$("$BIN/edgewise" --gateway http://127.0.0.1:7510 fleet status 2>/dev/null || true)
    grep -q "tiny-classify .* ready" <<<"$s" && grep -q "tiny-embed .* ready" <<<"$s" &&
      grep -q "tiny-classify .* ready" <<<"$o" && break
    sleep 0.1
  done
  echo "== gateway overhead (tiny-classify fixture, open loop, direct and gateway interleaved)"
  "$BIN/edgewise-bench" overhead --agent http://127.0.0.1:7501 --gateway http://127.0.0.1:7500 \
    --model tiny-classify --rates "${RATES:-500,1000,2000}" --seconds "${SECONDS_PER_RATE:-10}" \
    --gateway-pid "$gw" | tee "$OUT/overhead.jsonl"
  echo "== the data-class scan's share (1 KB of identifiers and secrets; a gateway that scans and one that does not, interleaved)"
  "$BIN/edgewise-bench" inference --on http://127.0.0.1:7500 --off http://127.0.0.1:7510 \
    --texts eval/dataclass/held-out.jsonl --rpc classify --rates "${INFERENCE_RATES:-400}" \
    --seconds "${SECONDS_PER_RATE:-10}" | tee "$OUT/inference_overhead.jsonl"
  "$BIN/edgewise-bench" inference --on http://127.0.0.1:7500 --off http://127.0.0.1:7510 \
    --texts eval/dataclass/held-out.jsonl --rpc explain --rates "${EXPLAIN_RATES:-1000,2000}" \
    --seconds "${SECONDS_PER_RATE:-10}" | tee -a "$OUT/inference_overhead.jsonl"
  echo "== the HTTP front (tiny-embed fixture, gRPC Embed and POST /v1/embeddings interleaved, open loop)"
  "$BIN/edgewise-bench" http-front --grpc http://127.0.0.1:7500 --http http://127.0.0.1:7580 \
    --rates "${HTTP_RATES:-500,1000}" --seconds "${SECONDS_PER_RATE:-10}" | tee "$OUT/http_front.jsonl"
  cleanup; pids=()
}

decide() {
  echo "== routing decision (criterion)"
  cargo bench -q -p edgewise-gateway --bench decide -- --noplot 2>&1 | grep -E "^decide|time:" || true
  python3 - > "$OUT/decide.jsonl" <<'PY'
import json, pathlib
for group in ("decide", "decide_and_trace", "served_mixed"):
    for n in (10, 100, 1000):
        p = pathlib.Path(f"target/criterion/{group}/nodes_x10_models/{n}/new/estimates.json")
        e = json.loads(p.read_text())
        print(json.dumps({"bench": group, "nodes": n, "models": n * 10,
                          "median_us": e["median"]["point_estimate"] / 1e3,
                          "ci_low_us": e["median"]["confidence_interval"]["lower_bound"] / 1e3,
                          "ci_high_us": e["median"]["confidence_interval"]["upper_bound"] / 1e3}))
PY
  cat "$OUT/decide.jsonl"
}

# A PostgreSQL server for the shared ledger's runs (the machine's, else the one
# tools/fetch_postgres.sh unpacks), on a unix socket in a temporary directory, fsync on.
start_postgres() {
  bash tools/fetch_postgres.sh >/dev/null
  PG_BIN=build/postgres/bin
  if [ -x "$PG_BIN/initdb" ]; then
    export LD_LIBRARY_PATH="$PWD/build/postgres/usr/lib/x86_64-linux-gnu"
  else
    PG_BIN=$(pg_config --bindir 2>/dev/null || true)
    [ -x "$PG_BIN/initdb" ] || PG_BIN=$(ls -d /usr/lib/postgresql/*/bin | tail -n1)
  fi
  PG_DIR=$(mktemp -d /tmp/edgewise-bench-pg.XXXXXX)
  PG_AS=()
  if [ "$(id -u)" = 0 ]; then
    local u=postgres
    id -u postgres >/dev/null 2>&1 || u=nobody
    chown "$u" "$PG_DIR"
    PG_AS=(runuser -u "$u" --)
  fi
  "${PG_AS[@]}" "$PG_BIN/initdb" -D "$PG_DIR/data" -U edgewise --auth=trust >/dev/null
  "${PG_AS[@]}" "$PG_BIN/pg_ctl" -D "$PG_DIR/data" -l "$PG_DIR/log" \
    -o "-c listen_addresses='' -c unix_socket_directories='$PG_DIR' -c max_connections=200" -w start >/dev/null
  export LEDGER_POSTGRES="host=$PG_DIR user=edgewise dbname=postgres"
}

stop_postgres() {
  "${PG_AS[@]}" "$PG_BIN/pg_ctl" -D "$PG_DIR/data" -m fast -w stop >/dev/null || true
  rm -rf "$PG_DIR"
  unset LEDGER_POSTGRES
}

ledger() {
  echo "== budget ledger: reserve + settle cycles through the gateway's store, the design it replaced, and the shared ledger (PostgreSQL)"
  start_postgres
  cargo bench -q -p edgewise-gateway --bench ledger 2>/dev/null | tee "$OUT/ledger.jsonl"
  stop_postgres
}

dataclass() {
  echo "== data-class inference: quality on the labelled sets, prose false positives, scan cost"
  bash tools/fetch_prose.sh
  cargo bench -q -p edgewise-gateway --bench dataclass 2>/dev/null | tee "$OUT/dataclass.jsonl"
}

# An agent config: agent_toml PORT MODELS_INCLUDE EXTRA_TOML
agent_toml() {
  cat <<TOML
[server]
listen = "127.0.0.1:$1"
[tls]
plaintext = true
[models]
dir = "$PWD/models"
include = [$2]
[runtime]
intra_op_threads = $THREADS
$3
TOML
}

structured() {
  local dir=$OUT/structured model=qwen2.5-coder-0.5b-q4
  rm -rf "$dir"; mkdir -p "$dir"
  agent_toml 7551 "\"$model\"" "[models.limits.\"$model\"]
max_concurrency = 8
max_queue = 16
[state]
dir = \"$dir/state\"" > "$dir/agent.toml"
  EDGEWISE_LOG=warn "$BIN/edgewise-agent" --config "$dir/agent.toml" run & pids+=($!)
  "$BIN/edgewise-agent" call --addr http://127.0.0.1:7551 wait-ready --timeout-secs 300 >/dev/null
  echo "== structured output ($model, $THREADS threads): the mask per token; decoding with a JSON schema against without"
  "$BIN/edgewise-bench" structured --model-dir "models/$model" --agent http://127.0.0.1:7551 --model "$model" \
    | tee "$OUT/structured.jsonl"
  cleanup; pids=()
}

embed() {
  local dir=$OUT/embed model=minilm-l6-int8
  rm -rf "$dir"; mkdir -p "$dir"
  agent_toml 7511 "\"$model\"" "[batching]
max_batch_size = 32
max_delay_ms = 2
[state]
dir = \"$dir/state-batched\"" > "$dir/batched.toml"
  agent_toml 7512 "\"$model\"" "[batching]
max_batch_size = 1
[models.limits.$model]
max_concurrency = 1
max_queue = 64
[state]
dir = \"$dir/state-unbatched\"" > "$dir/unbatched.toml"
  EDGEWISE_LOG=warn "$BIN/edgewise-agent" --config "$dir/batched.toml" run & pids+=($!)
  EDGEWISE_LOG=warn "$BIN/edgewise-agent" --config "$dir/unbatched.toml" run & pids+=($!)
  "$BIN/edgewise-agent" call --addr http://127.0.0.1:7511 wait-ready --timeout-secs 120 >/dev/null
  "$BIN/edgewise-agent" call --addr http://127.0.0.1:7512 wait-ready --timeout-secs 120 >/dev/null
  local base="Small open models now run on a mini PC, so teams can keep requests on their own hardware for privacy, compliance and cost, and send them to a hosted model only when nothing local is good enough and the policy allows it. "
  local t17="Edge boxes keep private requests on their own hardware, close to the data."
  local t114="$base${base}The gateway reads the routing policy, then picks the smallest adequate local model on a node with capacity."
  echo "== embeddings ($model, $THREADS threads): agent batched / unbatched, then Python onnxruntime"
  "$BIN/edgewise-bench" embed --batched http://127.0.0.1:7511 --unbatched http://127.0.0.1:7512 \
    --model "$model" --text "$t17" --text "$t114" | tee "$OUT/embed.jsonl"
  cleanup; pids=()
  "$PY" bench/reference.py embed --model "models/$model" --threads "$THREADS" \
    --text "$t17" --text "$t114" | tee -a "$OUT/embed.jsonl"
}

generate() {
  local dir=$OUT/generate
  local prompt="Write a detailed, step by step guide to baking sourdough bread at home."
  # the ladder's models that are prepared (the 1.5B only after `make models LADDER=full`)
  local ladder=() m
  for m in qwen2.5-coder-0.5b-q4 qwen2.5-coder-1.5b-q4; do
    [ -f "models/$m/model.onnx" ] && [ -f "build/downloads/work/$m.gguf" ] && ladder+=("$m")
  done
  rm -rf "$dir"; mkdir -p "$dir"
  local include='"smollm2-135m-int8", "smollm2-135m-q4"' limits=""
  for m in "${ladder[@]}"; do include+=", \"$m\""; limits+="[models.limits.\"$m\"]
max_concurrency = 1
"; done
  agent_toml 7521 "$include" "[models.limits.smollm2-135m-int8]
max_concurrency = 1
[models.limits.smollm2-135m-q4]
max_concurrency = 1
$limits[state]
dir = \"$dir/state\"" > "$dir/agent.toml"
  EDGEWISE_LOG=warn "$BIN/edgewise-agent" --config "$dir/agent.toml" run & pids+=($!)
  "$BIN/edgewise-agent" call --addr http://127.0.0.1:7521 wait-ready --timeout-secs 300 >/dev/null
  echo "== generation (greedy, 64 new tokens, $THREADS threads): agent, Python onnxruntime loop, llama.cpp"
  local args=()
  for m in smollm2-135m-int8 smollm2-135m-q4 "${ladder[@]}"; do args+=(--model "$m"); done
  "$BIN/edgewise-bench" generate --agent http://127.0.0.1:7521 "${args[@]}" --prompt "$prompt" \
    --max-tokens 64 | tee "$OUT/generate.jsonl"
  cleanup; pids=()
  local n
  n=$(python3 -c 'import json,sys; print(min(json.loads(l)["new_tokens"] for l in open(sys.argv[1])))' "$OUT/generate.jsonl")
  for m in smollm2-135m-int8 smollm2-135m-q4 "${ladder[@]}"; do
    # the prompt through the model's own chat template (model.toml), as the agent renders it
    "$PY" bench/reference.py generate --model "models/$m" --threads "$THREADS" \
      --prompt "$prompt" --new-tokens "$n" | tee -a "$OUT/generate.jsonl"
    "$PY" bench/reference.py weights --model "models/$m" | tee -a "$OUT/generate.jsonl"
  done
  local llama
  if llama=$(bash bench/llama/setup.sh); then
    "$llama" bench/reference.py llama --gguf build/bench/SmolLM2-135M-Instruct.Q4_1.gguf \
      --template-from models/smollm2-135m-q4 --threads "$THREADS" --prompt "$prompt" \
      --new-tokens "$n" | tee -a "$OUT/generate.jsonl"
    for m in "${ladder[@]}"; do
      "$llama" bench/reference.py llama --gguf "build/downloads/work/$m.gguf" \
        --template-from "models/$m" --threads "$THREADS" --prompt "$prompt" \
        --new-tokens "$n" | tee -a "$OUT/generate.jsonl"
    done
  else
    echo '{"ref": "llama.cpp", "error": "llama-cpp-python did not build here; see build/bench/llama-build.log"}' | tee -a "$OUT/generate.jsonl"
  fi
  "$BIN/edgewise-bench" bandwidth --threads "$THREADS" | tee -a "$OUT/generate.jsonl"
}

# Concurrent generations of one model: through the agent (batched decode steps), the same
# engine stepping the same rows with no server (the ceiling), llama.cpp's batch API, and the
# inter-token gaps of running streams while a long prompt arrives (chunked prefill vs none).
batching() {
  local dir=$OUT/batching model=smollm2-135m-q4
  local prompt="Write a detailed, step by step guide to baking sourdough bread at home."
  local filler="Edge boxes keep private requests on their own hardware, close to the data, and send them to a hosted model only when the policy allows it."
  rm -rf "$dir"; mkdir -p "$dir"
  : > "$OUT/batching.jsonl"
  for chunk in 128 32 4096; do
    agent_toml 7541 "\"$model\"" "prefill_chunk_tokens = $chunk
[models.limits.$model]
max_concurrency = 8
max_queue = 16
[state]
dir = \"$dir/state-$chunk\"" > "$dir/agent-$chunk.toml"
    EDGEWISE_LOG=warn "$BIN/edgewise-agent" --config "$dir/agent-$chunk.toml" run & pids+=($!)
    "$BIN/edgewise-agent" call --addr http://127.0.0.1:7541 wait-ready --timeout-secs 180 >/dev/null
    if [ "$chunk" = 128 ]; then
      echo "== concurrent generations ($model, $THREADS threads, 96 new tokens each): agent"
      "$BIN/edgewise-bench" concurrency --agent http://127.0.0.1:7541 --model "$model" --prompt "$prompt" \
        --max-tokens 96 | tee -a "$OUT/batching.jsonl"
    fi
    echo "== running streams while a 1,000-token prompt arrives (prefill chunk $chunk)"
    "$BIN/edgewise-bench" prefill-stall --agent http://127.0.0.1:7541 --model "$model" --prompt "$prompt" \
      --filler "$filler" --long-tokens 1000 --streams 4 --label "chunk $chunk" | tee -a "$OUT/batching.jsonl"
    cleanup; pids=()
  done
  echo "== the lm_head encoding: perplexity and batched steps, 8-bit MatMulNBits vs per-tensor int8"
  "$PY" bench/head_choice.py build/downloads/work/SmolLM2-135M-Instruct.Q4_1.gguf | tee -a "$OUT/batching.jsonl"
  echo "== the engine's batched step, no server (the ceiling)"
  "$BIN/edgewise-bench" batch-step --model "models/$model" --threads "$THREADS" --steps 95 | tee -a "$OUT/batching.jsonl"
  local llama
  if llama=$(bash bench/llama/setup.sh); then
    echo "== llama.cpp decoding the same number of sequences in one batch per step"
    "$llama" bench/reference.py llama-batch --gguf build/bench/SmolLM2-135M-Instruct.Q4_1.gguf \
      --template-from "models/$model" --threads "$THREADS" --prompt "$prompt" --new-tokens 96 \
      | tee -a "$OUT/batching.jsonl"
  else
    echo '{"ref": "llama.cpp-batch", "error": "llama-cpp-python did not build here; see build/bench/llama-build.log"}' | tee -a "$OUT/batching.jsonl"
  fi
}

fleet() {
  local dir=$OUT/fleet
  rm -rf "$dir"; mkdir -p "$dir/policies"
  printf '[server]\nlisten = "127.0.0.1:7530"\nid = "bench-fleet"\n[tls]\nplaintext = true\n[policies]\npaths = ["policies"]\n[state]\ndir = "state"\n' > "$dir/gateway.toml"
  printf 'routes:\n  - name: local\n    min_quality: 0\n    spill: wait\n' > "$dir/policies/bench.yaml"
  # one connection per simulated agent, as in a real fleet: raise the open-file limit
  ulimit -n "$(ulimit -Hn)"
  # a second gateway, the same but for a policy that never scans request text
  mkdir -p "$dir/off/policies"
  sed -e 's/7500/7510/; s/7580/7590/; s/"bench"/"bench-off"/; s#state/gateway#state/gateway-off#; s#"policies"#"off/policies"#' \
    "$dir/gateway.toml" > "$dir/gateway-off.toml"
  printf 'routes:\n  - name: local\n    min_quality: 0\n    spill: wait\n    inference: off\n' > "$dir/off/policies/bench.yaml"
  EDGEWISE_LOG=warn "$BIN/edgewise-gateway" --config "$dir/gateway.toml" run & local gw=$!; pids+=("$gw")
  EDGEWISE_LOG=warn "$BIN/edgewise-gateway" --config "$dir/gateway-off.toml" run & pids+=($!)
  for _ in $(seq 1 100); do
    "$BIN/edgewise" --gateway http://127.0.0.1:7530 fleet status >/dev/null 2>&1 && break
    sleep 0.1
  done
  echo "== fleet scale (simulated agents reporting every second into one gateway)"
  "$BIN/edgewise-bench" fleet --gateway http://127.0.0.1:7530 --agents "${FLEET_AGENTS:-1000,10000}" \
    --gateway-pid "$gw" | tee "$OUT/fleet.jsonl"
  cleanup; pids=()
}

footprint() {
  echo "== footprint (minilm-l6-int8 vs Python onnxruntime on the same file)"
  "$BIN/edgewise-bench" footprint --bin-dir "$BIN" --model models/minilm-l6-int8 --python build/venv/bin/python \
    | tee "$OUT/footprint.jsonl"
}

lifecycle() {
  local dir=$OUT/lifecycle m run
  rm -rf "$dir"; mkdir -p "$dir"
  : > "$OUT/lifecycle.jsonl"
  echo "== model lifecycle: load time (files in the page cache) and resident memory against file size, one model per process"
  for m in smollm2-135m-q4 smollm2-135m-int8 qwen2.5-coder-0.5b-q4 qwen2.5-coder-1.5b-q4 minilm-l6-int8; do
    [ -f "models/$m/model.onnx" ] || continue
    rm -rf "$dir/one"; mkdir -p "$dir/one"; ln -s "$PWD/models/$m" "$dir/one/$m"
    # run 0 reads the files into the page cache; runs 1-3 are measured, from the source and
    # from a mapped copy (written by run w, as an agent writes it at its first load), interleaved
    rm -rf "$dir/mapped"
    "$BIN/edgewise-agent" models check --models-dir "$dir/one" --json > "$dir/$m-0.json" 2>/dev/null
    "$BIN/edgewise-agent" models check --models-dir "$dir/one" --mapped-dir "$dir/mapped" --json > "$dir/$m-w.json" 2>/dev/null
    for run in 1 2 3; do
      "$BIN/edgewise-agent" models check --models-dir "$dir/one" --json > "$dir/$m-$run.json" 2>/dev/null
      "$BIN/edgewise-agent" models check --models-dir "$dir/one" --mapped-dir "$dir/mapped" --json > "$dir/$m-m$run.json" 2>/dev/null
    done
    python3 - "$m" "$dir" >> "$OUT/lifecycle.jsonl" <<'PY'
import json, statistics, sys
m, d = sys.argv[1], sys.argv[2]
runs = [json.load(open(f"{d}/{m}-{i}.json"))[0] for i in (1, 2, 3)]
mapped = [json.load(open(f"{d}/{m}-m{i}.json"))[0] for i in (1, 2, 3)]
write = json.load(open(f"{d}/{m}-w.json"))[0]
assert all(r["state"] == "ready" for r in runs + mapped + [write]), runs + mapped
med = lambda rs, k: statistics.median(r[k] for r in rs)
print(json.dumps({"bench": "lifecycle", "model": m, "runs": 3, "size_bytes": runs[0]["size_bytes"],
                  "source": {"load_ms": med(runs, "load_ms"), "smoke_ms": med(runs, "smoke_ms"), "resident_bytes": med(runs, "resident_bytes")},
                  "mapped": {"load_ms": med(mapped, "load_ms"), "smoke_ms": med(mapped, "smoke_ms"), "resident_bytes": med(mapped, "resident_bytes")},
                  "writing_copy_load_ms": write["load_ms"],
                  "mapped_over_source_load": med(mapped, "load_ms") / med(runs, "load_ms")}))
PY
    tail -1 "$OUT/lifecycle.jsonl"
  done
  residency
}

# An agent under a budget for two of three models: first token after an unload against
# resident, then callers cycling over the three for CHURN_SECS (default 120).
residency() {
  local dir=$OUT/residency pid
  rm -rf "$dir"; mkdir -p "$dir"
  cat > "$dir/agent.toml" <<TOML
[server]
listen = "127.0.0.1:7520"
[tls]
plaintext = true
[models]
dir = "$PWD/models"
include = ["paraphrase-minilm-l3", "smollm2-135m-int8", "smollm2-135m-q4"]
[models.limits.smollm2-135m-int8]
kv_budget_mb = 64
[models.limits.smollm2-135m-q4]
kv_budget_mb = 64
[runtime]
intra_op_threads = $THREADS
[state]
dir = "state"
TOML
  # first without a budget: the first start writes the mapped copies, the second loads from
  # them as every later start does; each model's cost is measured, kept in the state store
  "$BIN/edgewise-agent" --config "$dir/agent.toml" run 2>"$dir/agent-copies.log" & pid=$!; pids+=("$pid")
  "$BIN/edgewise-agent" call --addr http://127.0.0.1:7520 wait-ready --timeout-secs 120 >/dev/null
  kill -TERM "$pid"; wait "$pid" 2>/dev/null || true
  "$BIN/edgewise-agent" --config "$dir/agent.toml" run 2>"$dir/agent-measure.log" & pid=$!; pids+=("$pid")
  "$BIN/edgewise-agent" call --addr http://127.0.0.1:7520 wait-ready --timeout-secs 120 >/dev/null
  echo "== residency: first token after an unload against resident (smollm2-135m-q4, then qwen2.5-coder-0.5b-q4 alone)"
  "$BIN/edgewise-bench" cold-start --agent http://127.0.0.1:7520 --model smollm2-135m-q4 | tee -a "$OUT/lifecycle.jsonl"
  local costs
  costs=$("$BIN/edgewise-agent" models list --addr http://127.0.0.1:7520 | awk 'NR>1 && $3 ~ /^[0-9]+$/ {print $3}' | sort -n | tr '\n' ' ')
  kill -TERM "$pid"; wait "$pid" 2>/dev/null || true
  # the budget: the two larger costs and half the smaller (two fit, three do not)
  local budget
  budget=$(echo "$costs" | awk '{printf "%d", ($2 + $3 + $1 / 2) * 1048576}')
  sed -i "s|^\[models\]$|[models]\nmemory_budget = $budget|" "$dir/agent.toml"
  "$BIN/edgewise-agent" --config "$dir/agent.toml" run 2>"$dir/agent-churn.log" & pid=$!; pids+=("$pid")
  "$BIN/edgewise-agent" call --addr http://127.0.0.1:7520 wait-ready --timeout-secs 120 >/dev/null
  echo "== residency: churn for ${CHURN_SECS:-120} s, 3 callers over 3 models, budget for two ($(($budget >> 20)) MiB)"
  "$BIN/edgewise-bench" churn --agent http://127.0.0.1:7520 --pid "$pid" --secs "${CHURN_SECS:-120}" \
    --models paraphrase-minilm-l3 smollm2-135m-int8 smollm2-135m-q4 | tee -a "$OUT/lifecycle.jsonl"
  kill -TERM "$pid"; wait "$pid" 2>/dev/null || true
  if [ -f models/qwen2.5-coder-0.5b-q4/model.onnx ]; then
    sed -i 's|^include = .*|include = ["qwen2.5-coder-0.5b-q4"]|; /^memory_budget/d' "$dir/agent.toml"
    "$BIN/edgewise-agent" --config "$dir/agent.toml" run 2>"$dir/agent-qwen.log" & pid=$!; pids+=("$pid")
    "$BIN/edgewise-agent" call --addr http://127.0.0.1:7520 wait-ready --timeout-secs 120 >/dev/null
    "$BIN/edgewise-bench" cold-start --agent http://127.0.0.1:7520 --model qwen2.5-coder-0.5b-q4 | tee -a "$OUT/lifecycle.jsonl"
    kill -TERM "$pid"; wait "$pid" 2>/dev/null || true
  fi
}

# Each local generate model of make up's fleet answers every item of the sets named:
# routing_outcomes DIR SET... (writes DIR/SET.jsonl; sets "want" to the number of agents)
routing_outcomes() {
  local dir=$1; shift
  EDGEWISE_LOG=warn "$BIN/edgewise-gateway" --config deploy/dev/gateway.toml run 2>"$dir/gateway.log" & pids+=($!)
  for n in a b; do
    EDGEWISE_LOG=warn "$BIN/edgewise-agent" --config "deploy/dev/agent-$n.toml" run 2>"$dir/agent-$n.log" & pids+=($!)
  done
  local ports=(7301 7302)
  want=2
  # ROUTING_LADDER=full: also the opt-in Qwen2.5-Coder-1.5B (make models LADDER=full) on a
  # third agent; its report goes to routing-full.md (about 30 more minutes)
  if [ "${ROUTING_LADDER:-default}" = full ]; then
    sed -e 's/7302/7303/; s/agent-b/agent-c/g; s/include = .*/include = ["qwen2.5-coder-1.5b-q4"]/' \
      -e 's/"qwen2.5-coder-0.5b-q4"/"qwen2.5-coder-1.5b-q4"/; s|"../../|"'"$PWD"'/|' \
      deploy/dev/agent-b.toml > "$dir/agent-c.toml"
    EDGEWISE_LOG=warn "$BIN/edgewise-agent" --config "$dir/agent-c.toml" run 2>"$dir/agent-c.log" & pids+=($!)
    ports+=(7303); want=3
  fi
  for port in "${ports[@]}"; do
    "$BIN/edgewise-agent" call --addr "http://127.0.0.1:$port" wait-ready --timeout-secs 300 >/dev/null
  done
  for _ in $(seq 1 100); do
    [ "$("$BIN/edgewise" fleet status 2>/dev/null | grep -c ' generate  ready')" -ge "$want" ] && break
    sleep 0.2
  done
  for s in "$@"; do
    "$BIN/edgewise" --tenant dev eval run --set "eval/$s.jsonl" --out "$dir/$s.jsonl"
  done
  cleanup; pids=()
}

routing() {
  echo "== routing: the learned estimator's cost per decision"
  cargo bench -q -p edgewise-cli --bench adequacy | tee "$OUT/adequacy.jsonl"
  echo "== routing: each local model of make up's fleet on the committed item sets (stop make up first: same ports)"
  # calibration sees the first three sets; short-held-out's kinds are in none of them
  local dir=$OUT/routing sets=(exact-answers mmlu-200 short-answers) held=short-held-out
  local feat=models/wordllama-l2-supercat-256 want=2
  [ "${ROUTING_LADDER:-default}" = full ] && { dir=$OUT/routing-full; want=3; }
  # ROUTING_KEEP=1: measure again from the outcomes of the last run (same fleet, same sets)
  if [ "${ROUTING_KEEP:-0}" = 1 ] && [ -f "$dir/$held.jsonl" ]; then
    rm -f "$dir/heads.json" "$dir/policy.yaml"
  else
    rm -rf "$dir"; mkdir -p "$dir"
    routing_outcomes "$dir" "${sets[@]}" "$held"
  fi
  local outs=() setargs=()
  for s in "${sets[@]}"; do outs+=(--outcomes "$dir/$s.jsonl"); setargs+=(--set "eval/$s.jsonl"); done
  local report=routing.md
  [ "$want" = 3 ] && report=routing-full.md
  "$BIN/edgewise" eval report "${outs[@]}" "${setargs[@]}" --set "eval/$held.jsonl" --features "$feat" \
    --held-out "$dir/$held.jsonl" > "$OUT/$report"
  [ "$want" = 3 ] && { cat "$OUT/$report"; return; }
  # the policy blocks this run calibrates (the committed policy is written by hand from them)
  cp policies/default.yaml "$dir/policy.yaml"
  "$BIN/edgewise" eval train "${outs[@]}" "${setargs[@]}" --features "$feat" --out "$dir/heads.json"
  {
    echo "cascade, over the calibration sets:"
    "$BIN/edgewise" eval calibrate "${outs[@]}" --target 0.95 --policy "$dir/policy.yaml"
    echo "learned, over the calibration sets:"
    "$BIN/edgewise" eval calibrate "${outs[@]}" --estimator learned --heads "$dir/heads.json" \
      "${setargs[@]}" --features "$feat" --target 0.95 --policy "$dir/policy.yaml"
  } > "$OUT/routing-calibration.txt"
  cat "$OUT/routing.md" "$OUT/routing-calibration.txt"
}

for p in "${parts[@]}"; do "$p"; done
python3 bench/report.py "$OUT" BENCHMARKS.md
echo "BENCHMARKS.md updated from $OUT"
