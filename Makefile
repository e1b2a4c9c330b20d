# Developer entry points. `make test` is what CI runs.
SHELL := /bin/bash
VENV ?= .venv
PYTHON ?= python3
CARGO ?= cargo

.PHONY: run test test-rust test-python test-cluster test-e2e fuzz venv build fmt lint clean-data

## run: start a standalone Flight node (gRPC :8815, HTTP :8816, data in ./data)
run:
	$(CARGO) run --release -p flight-node

## venv: Python packages the tests need (pyarrow, pandas, pytest, moto_server)
venv: $(VENV)/.installed
	$(VENV)/bin/pip install --quiet ./clients/python
$(VENV)/.installed: tests/requirements.txt
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --upgrade pip
	$(VENV)/bin/pip install --quiet -r tests/requirements.txt
	touch $@

build:
	$(CARGO) build --workspace --bins

## test: everything: Rust unit + integration tests (S3 via moto_server and MinIO), Python,
## Go and Java interop (tests/interop); MinIO (tests/minio/minio) is built from the Go module proxy (cached in
## target/minio) and runs for the whole test run, its address exported as MINIO_*
MINIO_TEST_STATE ?= $(abspath target/minio/test)
test: venv build
	tests/minio/minio build
	MINIO_STATE_DIR=$(MINIO_TEST_STATE) tests/minio/minio down
	set -euo pipefail; export MINIO_STATE_DIR=$(MINIO_TEST_STATE); \
	trap 'tests/minio/minio down' EXIT; \
	tests/minio/minio up; \
	set -a; source $(MINIO_TEST_STATE)/env; set +a; \
	MOTO_SERVER=$(abspath $(VENV))/bin/moto_server $(CARGO) test --workspace --exclude cluster-tests; \
	FLIGHT_NODE_BIN=$(abspath target/debug/flight-node) $(VENV)/bin/python -m pytest -q tests/python; \
	FLIGHT_NODE_BIN=$(abspath target/debug/flight-node) $(VENV)/bin/python -m pytest -q clients/python/tests; \
	$(VENV)/bin/python -m pytest -q tests/chart tests/structure; \
	FLIGHT_NODE_BIN=$(abspath target/debug/flight-node) tests/interop/run; \
	FLIGHT_NODE_BIN=$(abspath target/debug/flight-node) tests/soak/run --short; \
	$(MAKE) test-cluster
	FUZZ_SEED=$${FUZZ_SEED:-1} $(MAKE) fuzz
	$(MAKE) test-e2e

## fuzz: every cargo-fuzz target of flight-node (flight-node/fuzz) for FUZZ_SECONDS each,
## after replaying what earlier runs found; nightly, no sanitizer, build kept in ~/.cache.
## Explores at random; `make test` runs it with a fixed seed (FUZZ_SEED) and a fixed number
## of inputs, so the same tree always fuzzes the same way
FUZZ_SECONDS ?= 30
fuzz:
	FUZZ_CACHE_DIR=$${FUZZ_CACHE_DIR:-$(HOME)/.cache/flight-node-fuzz} \
	FUZZ_SANITIZER=$${FUZZ_SANITIZER:-none} flight-node/fuzz/run $(FUZZ_SECONDS)

## test-cluster: the operator against a real kube-apiserver + etcd (tests/k8s/control-plane);
## kube-apiserver is built with Go from the Go module proxy (cached in target/k8s)
K8S_TEST_STATE ?= $(abspath target/k8s/test-cluster)
test-cluster: venv build
	tests/k8s/control-plane build
	K8S_STATE_DIR=$(K8S_TEST_STATE) tests/k8s/control-plane down
	set -euo pipefail; export K8S_STATE_DIR=$(K8S_TEST_STATE); \
	export KUBECONFIG=$(K8S_TEST_STATE)/admin.kubeconfig; \
	trap 'tests/k8s/control-plane down' EXIT; \
	tests/k8s/control-plane up; \
	FLIGHT_OPERATOR_BIN=$(abspath target/debug/flight-operator) $(CARGO) test -p cluster-tests

## lint: formatting, clippy, and the code's shape (no import circles, module sizes, the
## operator's dependency tree; tests/structure)
lint: venv
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings
	$(VENV)/bin/python -m pytest -q tests/structure

## test-e2e: the chart on a one-node cluster where pods run (tests/k8s/cluster, as root):
## images of this checkout's binaries, the dev MinIO, an upload and reads through the pool's
## Service, a node pod replaced, the operator restarted (tests/k8s/e2e)
E2E_STATE ?= $(abspath target/k8s/e2e-cluster)
test-e2e: venv build
	tests/minio/minio build
	FLIGHT_RELEASE_DIR=$(abspath target/debug) tests/images/build flight-node flight-operator minio atom
	tests/k8s/cluster build
	K8S_STATE_DIR=$(E2E_STATE) tests/k8s/cluster down
	set -euo pipefail; export K8S_STATE_DIR=$(E2E_STATE); \
	export KUBECONFIG=$(E2E_STATE)/admin.kubeconfig; \
	trap 'tests/k8s/cluster down' EXIT; \
	tests/k8s/cluster up; \
	for image in target/images/*.tar; do tests/k8s/cluster import-image "$$image"; done; \
	IMAGES_ENV=$(abspath target/images/images.env) $(VENV)/bin/python -m pytest -q tests/k8s/e2e
