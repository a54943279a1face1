#!/usr/bin/env bash
# `make up`: run an agent on this box with the real models, check it, and keep serving.
# ONCE=1: exit after the self-check (status 0 only if every check passed).
set -uo pipefail
cd "$(dirname "$0")/../.."
BIN=target/release/edgewise-agent
CONFIG=deploy/dev/agent.toml
ADDR=http://127.0.0.1:7300

"$BIN" --config "$CONFIG" validate || exit 1
echo "== models"
"$BIN" models check --models-dir models || echo "(some models failed; the agent serves the others)"

EDGEWISE_LOG=${EDGEWISE_LOG:-info} "$BIN" --config "$CONFIG" run &
pid=$!
stop() { kill -TERM "$pid" 2>/dev/null; wait "$pid"; }
trap stop EXIT
trap 'exit 130' INT TERM

# wait (up to 120 s) until every model has loaded
"$BIN" call --addr "$ADDR" wait-ready --timeout-secs 120 || { echo "the agent did not become ready" >&2; exit 1; }

failed=0
check() {
  local name=$1; shift
  echo "== $name"
  if ! "$@"; then echo "!! $name failed" >&2; failed=$((failed + 1)); fi
}
answer=$(mktemp)
check "generate (smollm2-135m-int8): What is the capital of France?" \
  bash -c "'$BIN' call --addr $ADDR generate --model smollm2-135m-int8 --chat --max-tokens 48 'What is the capital of France?' | tee '$answer'"
grep -q Paris "$answer" || { echo "!! the answer does not mention Paris" >&2; failed=$((failed + 1)); }
rm -f "$answer"
check "embed (minilm-l6-int8)" "$BIN" call --addr "$ADDR" embed --model minilm-l6-int8 "What is the capital of France?" "Paris is the capital of France."
check "classify (minilm-difficulty)" "$BIN" call --addr "$ADDR" classify --model minilm-difficulty "What is the capital of France?" "Implement a lock-free hash map and prove it linearizable."
check "classify (minilm-task)" "$BIN" call --addr "$ADDR" classify --model minilm-task "Prove that the square root of 2 is irrational."

if [ "$failed" -ne 0 ]; then echo "self-check: $failed check(s) failed" >&2; exit 1; fi
echo "self-check: all checks passed"
if [ "${ONCE:-0}" = "1" ]; then exit 0; fi
cat <<MSG

The agent serves on $ADDR (Ctrl-C stops it). Try:
  $BIN call --addr $ADDR generate --model smollm2-135m-q4 --chat "Write a haiku about edge computing"
  $BIN call --addr $ADDR classify --model minilm-task "Fix this failing unit test"
(The gateway, with routing and the edgewise CLI, is the next issue; the agent already redials it at 127.0.0.1:7400.)
MSG
wait "$pid"
