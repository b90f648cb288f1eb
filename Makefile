# hookgate — every entry point. Each target bootstraps .venv (refreshed when pyproject.toml changes).
PYTHON ?= python3
VENV   ?= .venv
CONFIG ?= config.toml
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp

.PHONY: venv run test lint migrate docs bench clean

# Made when pip is missing, not only python: `python3 -m venv` without Debian's python3-venv
# fails after writing bin/python, and that venv, reused, fails again after the package is installed.
$(BIN)/pip:
	$(PYTHON) -m venv --clear $(VENV)

$(STAMP): pyproject.toml | $(BIN)/pip
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --upgrade pip
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[test,lint]'
	touch $(STAMP)

venv: $(STAMP)

## run: start the gateway (embedded PostgreSQL under var/pgdata when no DSN is configured)
run: venv
	$(BIN)/gateway --config $(CONFIG) serve

## test: the whole suite against a real PostgreSQL (embedded, or $$TEST_DATABASE_URL), on
## TEST_WORKERS pytest-xdist processes (0: in pytest's own process, one test at a time); a
## worker that runs out of tests takes some from another's queue (worksteal), so the slow ones
## queued last do not run alone at the end
TEST_WORKERS ?= 4
test: venv
	$(BIN)/pytest -n $(TEST_WORKERS) --dist worksteal $(PYTEST_ARGS)

## lint: ruff (checks and formatting), mypy and hadolint (the Dockerfile)
lint: venv
	$(BIN)/ruff check gateway tests bench
	$(BIN)/ruff format --check gateway tests bench
	$(BIN)/mypy
	$(BIN)/hadolint Dockerfile

## migrate: apply schema.sql to the configured database
migrate: venv
	$(BIN)/gateway --config $(CONFIG) migrate

## docs: regenerate README.md's configuration reference from config.py and config.toml
docs: venv
	$(BIN)/python -m gateway.config_reference --write README.md

## schemathesis: the live API against gateway/openapi (also part of `make test`)
.PHONY: schemathesis
schemathesis: venv
	$(BIN)/pytest tests/acceptance/test_schemathesis.py $(PYTEST_ARGS)

## bench: throughput/latency of the ingest path against baselines (see bench/README.md)
bench: venv
	$(BIN)/python -m bench $(BENCH_ARGS)

clean:
	rm -rf $(VENV) var/test-pgdata .pytest_cache .mypy_cache .ruff_cache
