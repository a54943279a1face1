#!/usr/bin/env bash
# The test virtualenv (build/test-venv): the pinned OpenAI Python SDK that tests/ drives the
# gateway's OpenAI-compatible API with, and ruff for `make lint`. Hash-verified; a second run
# does nothing.
set -euo pipefail
cd "$(dirname "$0")/.."

VENV=build/test-venv
REQ=tests/requirements.txt
req_sha=$(sha256sum "$REQ" | cut -d' ' -f1)
if [ -x "$VENV/bin/python" ] && [ "$(cat "$VENV/.requirements-sha256" 2>/dev/null)" = "$req_sha" ]; then
  exit 0
fi
echo "[test-venv] creating $VENV (the openai SDK, jsonschema and ruff, pinned)"
rm -rf "$VENV"
python3 -m venv "$VENV"
"$VENV/bin/python" -m pip install --quiet --disable-pip-version-check --no-deps --require-hashes -r "$REQ"
"$VENV/bin/python" -c "import openai, jsonschema; print('[test-venv] openai', openai.__version__)"
"$VENV/bin/ruff" --version
echo "$req_sha" > "$VENV/.requirements-sha256"
