#!/usr/bin/env bash
# Installs Edgewise on an edge box: binaries, libonnxruntime, systemd units, example configs,
# the default policy, and the credentials and models directories.
#
#   deploy/install.sh                 install into / (as root), then `systemctl daemon-reload`
#   deploy/install.sh --prefix DIR    install the same tree under DIR (for packaging and tests)
#
# Binaries come from target/release (`make release`) unless --bin-dir says otherwise, and the
# runtime from build/onnxruntime (`make onnxruntime`). Existing configs and policies are kept.
set -euo pipefail
cd "$(dirname "$0")/.."

PREFIX=""
BIN_DIR=target/release
ORT=build/onnxruntime/libonnxruntime.so.1.31.1
usage() { sed -n '2,10p' "$0" | sed 's/^# \{0,1\}//'; exit "${1:-0}"; }
while [ $# -gt 0 ]; do
  case "$1" in
    --prefix) PREFIX=${2:?--prefix needs a directory}; shift 2 ;;
    --bin-dir) BIN_DIR=${2:?--bin-dir needs a directory}; shift 2 ;;
    -h|--help) usage 0 ;;
    *) echo "install: unknown argument \`$1\`" >&2; usage 2 ;;
  esac
done
if [ -z "$PREFIX" ] && [ "$(id -u)" != 0 ]; then
  echo "install: installing into / needs root (or use --prefix DIR)" >&2
  exit 1
fi
for b in edgewise-agent edgewise-gateway edgewise; do
  [ -x "$BIN_DIR/$b" ] || { echo "install: $BIN_DIR/$b is missing: run \`make release\` first" >&2; exit 1; }
done
[ -f "$ORT" ] || { echo "install: $ORT is missing: run \`make onnxruntime\` first" >&2; exit 1; }

root=${PREFIX%/}
say() { printf '  %s\n' "$*"; }
# install a file, but never replace an operator's edited config
keep() {
  local mode=$1 from=$2 to=$3
  if [ -e "$root$to" ]; then say "kept    $to (exists)"; else install -D -m "$mode" "$from" "$root$to"; say "created $to"; fi
}

echo "installing Edgewise into ${PREFIX:-/}"
for b in edgewise-agent edgewise-gateway edgewise; do
  install -D -m 0755 "$BIN_DIR/$b" "$root/usr/bin/$b"; say "/usr/bin/$b"
done
install -D -m 0644 "$ORT" "$root/usr/lib/edgewise/libonnxruntime.so.1.31.1"
say "/usr/lib/edgewise/libonnxruntime.so.1.31.1"
for u in edgewise-agent edgewise-gateway; do
  install -D -m 0644 "deploy/systemd/$u.service" "$root/usr/lib/systemd/system/$u.service"
  say "/usr/lib/systemd/system/$u.service"
done
keep 0644 deploy/agent.toml /etc/edgewise/agent.toml
keep 0644 deploy/gateway.toml /etc/edgewise/gateway.toml
keep 0644 policies/default.yaml /etc/edgewise/policies/default.yaml
install -d -m 0700 "$root/etc/edgewise/credentials"; say "/etc/edgewise/credentials (0700: provider and TLS keys)"
install -d -m 0755 "$root/var/lib/edgewise/models"; say "/var/lib/edgewise/models (model folders)"
install -D -m 0644 README.md "$root/usr/share/doc/edgewise/README.md"

if [ -z "$PREFIX" ] && command -v systemctl >/dev/null && [ -d /run/systemd/system ]; then
  systemctl daemon-reload
fi
cat <<MSG
next:
  put model folders in /var/lib/edgewise/models and keys in /etc/edgewise/credentials
  edgewise-agent --config /etc/edgewise/agent.toml validate
  edgewise-gateway --config /etc/edgewise/gateway.toml validate
  systemctl enable --now edgewise-agent edgewise-gateway
MSG
