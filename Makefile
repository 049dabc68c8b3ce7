# The README's commands live here. `make demo` and `make test` work on a fresh
# machine: they create the virtualenv, install the project, and (for tests) the
# Debian packages of the services the tests start themselves.

SHELL := /bin/bash
.SHELLFLAGS := -euo pipefail -c

PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.cotir-installed

export DAGSTER_HOME ?= $(CURDIR)/.dagster_home
export COTIR_PROFILE ?= demo

.PHONY: setup system-deps demo test lint dev clean prior table-vii bench-model

# Reinstall only when the dependency list changes.
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $@

$(DAGSTER_HOME)/dagster.yaml: dagster.yaml
	mkdir -p $(DAGSTER_HOME)
	ln -sfn $(CURDIR)/dagster.yaml $@

## setup: virtualenv with the project and its dev tools, and the Dagster instance folder
setup: $(STAMP) $(DAGSTER_HOME)/dagster.yaml

## system-deps: Debian packages for the services the tests start (Ceph radosgw, Chromium)
system-deps:
	scripts/install-system-deps.sh

## demo: materialize every asset of the DAG on the embedded demo profile
demo: setup
	$(BIN)/python -m assets.run_demo

## prior: retrain the demo's editing prior from scratch, both stages (about 71 minutes on 2 cores), and
## check it is bit-for-bit the shipped one (models/demo_prior); PRIOR_OUT picks the folder
PRIOR_OUT ?= .cotir/prior-rebuild
prior: setup
	$(BIN)/python -m models.prior --out $(PRIOR_OUT) --compare models/demo_prior

## table-vii: the paper's Table VII at demo scale (4 arms x 3 seeds, after `make demo`)
table-vii: setup
	$(BIN)/python -m assets.run_job table_vii_ablation

## bench-model: the demo model's benchmarks (training step, restore), see docs/PERFORMANCE.md
bench-model: setup
	$(BIN)/python scripts/bench_training_step.py
	$(BIN)/python scripts/bench_restore.py

## lint: ruff over the whole tree (lint rules, then formatting, code blocks in docs included)
lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

## test: lint, then the whole test suite (starts radosgw and dagster dev itself)
test: setup system-deps
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/python -m pytest

## dev: the Dagster UI on http://127.0.0.1:3000
dev: setup
	$(BIN)/dagster dev -w workspace.yaml -h 127.0.0.1 -p 3000

clean:
	rm -rf .pytest_cache .ruff_cache test-artifacts
