# Two commands on a fresh machine: `make demo` and `make test`. Each creates .venv when it is missing.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP_RUN := $(VENV)/.installed-run
STAMP_DEV := $(VENV)/.installed-dev

.PHONY: demo test lint typecheck pytest hosts soak bench bench-postgres bench-queue bench-dashboard docs clean compile

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(STAMP_RUN): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e .
	touch $@

$(STAMP_DEV): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $@ $(STAMP_RUN)

# Bytecode for the editable install: with PYTHONDONTWRITEBYTECODE set (as on CI machines)
# every CLI call would otherwise compile dibs from source, ~20 ms each time.
compile: | $(BIN)/python
	$(BIN)/python -m compileall -q src/dibs

demo: $(STAMP_RUN) compile
	$(BIN)/dibs demo

lint: $(STAMP_DEV)
	$(BIN)/ruff check src tests bench
	$(BIN)/ruff format --check src tests bench
	$(BIN)/lint-imports  # the layers: docs/explanation/architecture.md

typecheck: $(STAMP_DEV)
	$(BIN)/mypy --strict src/dibs

# The real agent CLIs the host tests drive (tests/acceptance/test_real_hosts.py), pinned in
# tests/hosts/package.json, installed into .hosts/ with npm. `make test` installs them when npm
# is here (a failed install only warns, except on CI); without them those tests skip (on CI,
# where CI=true, they fail instead).
HOSTS := .hosts
HOSTS_STAMP := $(HOSTS)/.installed
NPM := $(shell command -v npm 2>/dev/null)

$(HOSTS_STAMP): tests/hosts/package.json
	mkdir -p $(HOSTS)
	cp tests/hosts/package.json $(HOSTS)/package.json
	if (cd $(HOSTS) && npm install --no-audit --no-fund --no-package-lock --loglevel=error); \
	then touch $@; \
	elif [ "$$CI" = true ]; then exit 1; \
	else echo "warning: the agent CLIs did not install; the host tests will skip"; fi

hosts: $(HOSTS_STAMP)

pytest: $(STAMP_DEV) compile $(if $(NPM),$(HOSTS_STAMP))
	$(BIN)/python -m pytest -q

test: lint typecheck pytest

soak: $(STAMP_DEV) compile
	$(BIN)/python -m pytest -q -s -m soak

bench: $(STAMP_DEV) compile
	$(BIN)/python -P bench/claims.py
	$(BIN)/python -P bench/recovery.py

# Needs a PostgreSQL server: DIBS_TEST_PG (default postgresql://postgres@127.0.0.1:5432/postgres).
# FLEET_ARGS=--quick for a short fleet run (bench/fleet.py --help).
bench-postgres: $(STAMP_DEV) compile
	$(BIN)/python -P bench/postgres.py
	$(BIN)/python -P bench/fleet.py $(FLEET_ARGS)

bench-queue: $(STAMP_DEV) compile
	$(BIN)/python -P bench/merge_queue.py

bench-dashboard: $(STAMP_DEV) compile
	$(BIN)/python -P bench/dashboard.py

docs: $(STAMP_DEV)
	$(BIN)/python -m dibs.faces.cli.docgen > docs/reference/cli.md

clean:
	rm -rf $(VENV) $(HOSTS) .pytest_cache .mypy_cache .ruff_cache build dist
