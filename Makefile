# mcp-gateway: `make run` starts the gateway on its embedded demo; `make test` installs what the
# tests need (dev extras, npm MCP servers, Node 22, Prometheus) and runs the whole suite.

SHELL := /bin/bash
.SHELLFLAGS := -o pipefail -c
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
HOST ?= 127.0.0.1
PORT ?= 8080

.PHONY: run install tools test test-fast lint format bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

run: install
	@echo "MCP endpoint:   http://$(HOST):$(PORT)/mcp  (per server: /servers/{id}/mcp)"
	@echo "Metrics:        http://$(HOST):$(PORT)/metrics"
	@echo "Servers:        http://$(HOST):$(PORT)/servers"
	$(VENV)/bin/mcp-gateway serve --host $(HOST) --port $(PORT) $(ARGS)

tools:
	bash scripts/install-tools.sh

test: install tools
	rm -f .coverage .coverage.*
	$(PY) -m coverage run -m pytest -p no:cacheprovider $(PYTEST_ARGS) | tee .pytest-output
	$(PY) -m coverage combine --quiet
	$(PY) -m coverage report --skip-covered --sort=cover
	@tail -n 1 .pytest-output  # the test count, last, where CI reads it

# The in-process tier (pure logic, no process started): seconds, no install step; run it while you work.
test-fast:
	@test -x $(PY) || { echo "no $(VENV): run 'make install' once"; exit 1; }
	$(PY) -m pytest -p no:cacheprovider -q -m fast

lint: install
	$(PY) -m ruff check gateway telemetry tests bench deploy
	$(PY) -m ruff format --check gateway telemetry tests bench deploy
	$(PY) -m mypy

format: install
	$(PY) -m ruff format gateway telemetry tests bench deploy
	$(PY) -m ruff check --fix gateway telemetry tests bench deploy

bench: install
	$(PY) bench/overhead.py

clean:
	rm -rf $(VENV) .tools .coverage .coverage.* .pytest_cache .mypy_cache .ruff_cache bench/results
