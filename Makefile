# vmgroup-operator: the two commands are `make dev` and `make test`; everything else is a step
# of theirs. Nothing here needs installing by hand: Python 3.11+ and Go are the only prerequisites.
SHELL := /usr/bin/env bash
.SHELLFLAGS := -euo pipefail -c
.DEFAULT_GOAL := help

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
VENV_STAMP := $(VENV)/.installed
# hack/testbin.sh caches the real binaries outside the repo (VMGROUP_TESTBIN_CACHE moves the
# cache); the stack asks it where they are, so targets that need no binary need no Go either.
PYTEST_ARGS ?=
# `make dev` runs the operator in Pods on a real node, from its image and chart (node); `host`
# runs it as processes of this machine instead, quicker to iterate on the code.
DEV_MODE ?= node

.PHONY: help
help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-10s %s\n", $$1, $$2}'

$(VENV_STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --disable-pip-version-check --upgrade pip
	$(VENV)/bin/pip install --quiet --disable-pip-version-check -c constraints.txt -e '.[dev]'
	touch $@

.PHONY: venv
venv: $(VENV_STAMP) ## create .venv with the project and its dev tools

.PHONY: testbin
testbin: ## build the Kubernetes binaries (control plane, node, kubectl), etcd, vcsim, govc, helm (cached)
	@hack/testbin.sh >/dev/null

.PHONY: debs
debs: ## unpack Debian's containerd, runc, CNI plugins, iptables, mmdebstrap into the cache
	@hack/debs.sh >/dev/null

.PHONY: image
image: venv debs ## build the OCI image without Docker (cached); a running `make dev` node gets it
	@$(PY) -m hack.stack image

.PHONY: dev
dev: venv testbin debs ## start the local stack with a node, install the operator with its chart, apply the example
	$(PY) -m hack.stack up --mode $(DEV_MODE)

.PHONY: dev-down
dev-down: ## stop everything `make dev` started
	@if [[ -x $(PY) ]]; then $(PY) -m hack.stack down; else echo "nothing to stop"; fi

.PHONY: dev-status
dev-status: ## every part of the `make dev` stack: running or dead, pid, address, log
	@if [[ -x $(PY) ]]; then $(PY) -m hack.stack status; else echo "local stack: not running"; exit 1; fi

.PHONY: lint
lint: venv ## ruff, mypy, and the import contracts of the layout (lint-imports)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy
	$(VENV)/bin/lint-imports --no-cache

.PHONY: test
test: venv testbin debs image lint ## the whole suite: lint, unit, integration, end-to-end (API server, real Pods), chart
	$(VENV)/bin/pytest --junitxml=.reports/junit.xml $(PYTEST_ARGS)

.PHONY: unit
unit: venv ## only the unit tests (no stack, seconds)
	$(VENV)/bin/pytest tests/unit $(PYTEST_ARGS)

.PHONY: bench-webhook
bench-webhook: venv testbin ## webhook latency/throughput/memory at fixed rates (~3 min)
	$(PY) -m bench.webhook $(BENCH_ARGS)

.PHONY: bench-outage
bench-outage: venv testbin ## convergence after vCenter freezes, default timeout (~4 min)
	$(PY) -m bench.vcenter_outage $(BENCH_ARGS)

.PHONY: bench-controller
bench-controller: venv testbin ## controller convergence, idle vCenter calls, memory (~35 min)
	$(PY) -m bench.controller $(BENCH_ARGS)

.PHONY: bench-controller-pod
bench-controller-pod: venv testbin debs image ## controller memory in its Pod, from its image and chart (~5 min)
	$(PY) -m bench.controller_pod $(BENCH_ARGS)

.PHONY: lock
lock: venv ## refresh constraints.txt from the current .venv
	$(VENV)/bin/pip freeze --exclude-editable --disable-pip-version-check > constraints.txt.new
	mv constraints.txt.new constraints.txt

.PHONY: clean
clean: dev-down ## remove .venv and local state (the binary cache stays)
	rm -rf $(VENV) .dev .reports .pytest_cache .mypy_cache .ruff_cache
