# The single entry point for people, CI and hooks.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
SOURCES := backupd tests bench deploy

.PHONY: test lint typecheck unit integration demo bench clean

# Two workers, each with its own servers: most of a test's time is spent waiting on them.
TEST_WORKERS ?= 2

test: lint typecheck
	$(BIN)/pytest -n $(TEST_WORKERS)

lint: $(VENV)/.installed
	$(BIN)/ruff check $(SOURCES)
	$(BIN)/ruff format --check $(SOURCES)
	$(BIN)/hadolint --failure-threshold warning Dockerfile

typecheck: $(VENV)/.installed
	$(BIN)/mypy

unit: $(VENV)/.installed
	$(BIN)/pytest tests/unit

integration: $(VENV)/.installed
	$(BIN)/pytest tests/integration

demo: $(VENV)/.installed
	$(BIN)/python -m deploy.demo

bench: $(VENV)/.installed
	$(BIN)/python -m bench.run $(ARGS)

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $@

clean:
	rm -rf $(VENV) .mypy_cache .pytest_cache .ruff_cache
