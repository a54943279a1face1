# Edgewise: two commands on a fresh machine (cargo, python3, pip):
#   make up     run the fleet on this box with real models
#   make test   run every test
SHELL := /bin/bash
.DEFAULT_GOAL := help
CARGO ?= cargo
ORT_LIB := build/onnxruntime/libonnxruntime.so.1.31.1
export ORT_DISABLE_TELEMETRY := 1

.PHONY: help prereqs onnxruntime models prometheus postgres testvenv fixtures build release test lint miri fmt up install bench clean

help:
	@echo "make up           run a gateway and two agents on this box with the real models (ONCE=1: self-check, then exit)"
	@echo "make bench        measure against same-run references and rewrite BENCHMARKS.md"
	@echo "make install      install binaries, libonnxruntime, units and example configs (PREFIX=DIR for a staging tree)"
	@echo "make test         lint and run every test (fetches ONNX Runtime and models first)"
	@echo "make onnxruntime  fetch libonnxruntime from the pinned PyPI wheel into build/onnxruntime"
	@echo "make models       fetch and prepare the real models into models/ (LADDER=full: also Qwen2.5 1.5B)"
	@echo "make prometheus   fetch Debian's Prometheus into build/prometheus (for the metrics test)"
	@echo "make fixtures     regenerate the tiny test models in tests/fixtures/models"
	@echo "make testvenv     the pinned openai SDK in build/test-venv (for the HTTP API tests)"
	@echo "make miri         the agent's unsafe K/V buffers under Miri (installs a nightly toolchain with miri)"

prereqs:
	@bash tools/check_prereqs.sh

onnxruntime: prereqs
	@bash tools/fetch_onnxruntime.sh

# LADDER=full also fetches and prepares the opt-in Qwen2.5-Coder-1.5B (about 1.05 GB more)
LADDER ?= default
models: prereqs
	@LADDER=$(LADDER) bash tools/fetch_models.sh

# Debian's Prometheus, unpacked into build/prometheus (the metrics test scrapes with it)
prometheus:
	@bash tools/fetch_prometheus.sh

# A PostgreSQL server for the shared-ledger tests: the machine's, else Debian's packages
# unpacked into build/postgres
postgres:
	@bash tools/fetch_postgres.sh

# The pinned openai SDK in build/test-venv (tests/ drives the gateway's HTTP API with it)
testvenv: prereqs
	@bash tools/fetch_test_venv.sh

# The committed fixtures are byte-identical to what this writes (seeded).
fixtures:
	@bash tools/fetch_models.sh --venv-only
	build/venv/bin/python tools/prepare_models.py fixtures --out tests/fixtures/models

build:
	$(CARGO) build --workspace

release:
	$(CARGO) build --release --workspace --bins

# Python: ruff (pinned in tests/requirements.txt) over the tools, bench and test scripts
lint: testvenv
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings
	build/test-venv/bin/ruff check tools bench fuzz tests eval

# EDGEWISE_TEST_REAL_MODELS=required: the real-model tests fail (instead of skipping) without models/;
# EDGEWISE_TEST_SDK=required: the openai SDK test fails without build/test-venv.
# EDGEWISE_TEST_POSTGRES=required: the shared-ledger tests fail without a PostgreSQL server.
# The binaries are built first: tests/ runs the real edgewise-agent (cargo test builds only
# the binaries of the package under test).
test: onnxruntime models prometheus postgres testvenv lint
	python3 -m unittest discover -s bench -p 'test_*.py'
	python3 -m unittest discover -s tools -p 'test_*.py'
	$(CARGO) build --workspace --bins
	EDGEWISE_TEST_REAL_MODELS=required EDGEWISE_TEST_SDK=required EDGEWISE_TEST_POSTGRES=required \
	  $(CARGO) test --workspace --no-fail-fast

# The agent's one unsafe module (engine/kv.rs) under Miri's aliasing and memory checks. Opt-in:
# it needs a nightly toolchain, and building the agent for Miri takes minutes.
miri:
	rustup toolchain install nightly --profile minimal --component miri,rust-src
	cd agent && $(CARGO) +nightly miri test --lib engine::kv

ONCE ?= 0
up: onnxruntime models release
	@ONCE=$(ONCE) LADDER=$(LADDER) bash deploy/dev/up.sh

# Each part alone: bench/run.sh decide | ledger | dataclass | overhead | embed | generate | batching | fleet | footprint
bench: onnxruntime models release
	@bash bench/run.sh

PREFIX ?=
install: onnxruntime release
	@bash deploy/install.sh $(if $(PREFIX),--prefix $(PREFIX))

clean:
	rm -rf build/state target
