#!/usr/bin/env bash
# `make up`: a gateway and two agents on this box with the real models and the default policy,
# a self-check through the gateway, then serving until Ctrl-C.
# ONCE=1: exit after the self-check (status 0 only if every check passed).
# LADDER=full: node B also has Qwen2.5-Coder-1.5B, under a memory budget that cannot hold
# every model at once (deploy/dev/agent-b-full.toml): the self-check loads one on demand.
set -uo pipefail
cd "$(dirname "$0")/../.."
BIN=target/release
B_CONFIG=deploy/dev/agent-b.toml
[ "${LADDER:-default}" = full ] && B_CONFIG=deploy/dev/agent-b-full.toml
config_of() { if [ "$1" = b ]; then echo "$B_CONFIG"; else echo "deploy/dev/agent-$1.toml"; fi; }
GATEWAY=http://127.0.0.1:7400
LOGS=build/logs
mkdir -p "$LOGS"

echo "== validating configs and the policy"
"$BIN/edgewise-gateway" --config deploy/dev/gateway.toml validate || exit 1
for n in a b; do "$BIN/edgewise-agent" --config "$(config_of $n)" validate || exit 1; done
echo "   (plaintext mode, tls.plaintext = true: no TLS and no caller credentials on localhost; a local development setup)"

pids=()
stop() {
  trap - EXIT INT TERM
  [ "${#pids[@]}" -gt 0 ] || return 0
  echo "== stopping"
  kill -TERM "${pids[@]}" 2>/dev/null
  wait "${pids[@]}" 2>/dev/null
}
trap stop EXIT
trap 'exit 130' INT TERM

export EDGEWISE_LOG=${EDGEWISE_LOG:-info}
"$BIN/edgewise-gateway" --config deploy/dev/gateway.toml run 2>"$LOGS/gateway.log" &
pids+=($!)
for n in a b; do
  "$BIN/edgewise-agent" --config "$(config_of $n)" run 2>"$LOGS/agent-$n.log" &
  pids+=($!)
done
echo "== started gateway (gRPC 127.0.0.1:7400, OpenAI-compatible HTTP http://127.0.0.1:7480/v1), agent-a (127.0.0.1:7301), agent-b (127.0.0.1:7302); logs in $LOGS/"

for n in a b; do
  port=$((7300 + $([ "$n" = a ] && echo 1 || echo 2)))
  # a first start writes each model's mapped copy (Qwen 1.5B: about 12 s)
  "$BIN/edgewise-agent" call --addr "http://127.0.0.1:$port" wait-ready --timeout-secs 300 >/dev/null \
    || { echo "agent-$n did not become ready; see $LOGS/agent-$n.log" >&2; exit 1; }
done
echo "== fleet"
"$BIN/edgewise" --gateway "$GATEWAY" fleet status
echo
echo "== self-check through the gateway"
"$BIN/edgewise" --gateway "$GATEWAY" --tenant dev selfcheck --wait-secs 60 || exit 1
if [ "${ONCE:-0}" = "1" ]; then exit 0; fi
cat <<MSG

Edgewise is serving on $GATEWAY (Ctrl-C stops everything). Try:
  $BIN/edgewise --gateway $GATEWAY --tenant dev generate "Write a haiku about edge computing"
  $BIN/edgewise --gateway $GATEWAY --tenant dev route explain --data-class confidential "Our Q3 numbers"
  $BIN/edgewise --gateway $GATEWAY fleet status
  curl -sS -D- http://127.0.0.1:7480/v1/chat/completions -H 'x-edgewise-tenant: dev' -d '{"model":"auto","messages":[{"role":"user","content":"What is the capital of France?"}]}'
  (an OpenAI SDK: base_url http://127.0.0.1:7480/v1 and the x-edgewise-tenant header; README, "The OpenAI-compatible API")
MSG
wait "${pids[0]}"
