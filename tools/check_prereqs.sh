#!/usr/bin/env bash
# What `make` needs on a fresh machine, each checked with a message that says how to get it.
set -uo pipefail
missing=0
need() { echo "prerequisite: $1" >&2; missing=1; }

command -v cargo >/dev/null || need "cargo (Rust 1.92 or newer): https://rustup.rs"
if command -v rustc >/dev/null; then
  v=$(rustc --version | awk '{print $2}')
  [ "$(printf '%s\n1.92.0\n' "$v" | sort -V | head -1)" = "1.92.0" ] \
    || need "Rust 1.92 or newer (found $v): rustup update stable"
fi
command -v python3 >/dev/null || need "python3 (3.9 or newer)"
if command -v python3 >/dev/null; then
  python3 -c 'import sys; sys.exit(sys.version_info < (3, 9))' || need "python3 3.9 or newer (found $(python3 --version 2>&1))"
  python3 -m pip --version >/dev/null 2>&1 || need "pip for python3: apt install python3-pip (or python3 -m ensurepip)"
  python3 -c 'import venv, ensurepip' >/dev/null 2>&1 || need "the venv module for python3: apt install python3-venv"
fi
command -v cc >/dev/null || need "a C compiler (cc) for the TLS crypto crate: apt install gcc"
exit "$missing"
