# README's two commands: `make run` and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
PIP_FLAGS ?= -q --disable-pip-version-check

.PHONY: run test lint typecheck pytest install dev bench clean

$(BIN)/python:
	@$(PYTHON) -c 'import sys; assert sys.version_info >= (3, 11), "Frankly needs Python >= 3.11, found " + sys.version.split()[0]'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install $(PIP_FLAGS) --upgrade pip

$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/pip install $(PIP_FLAGS) -e '.[embeddings]'
	@touch $@

$(VENV)/.dev-installed: pyproject.toml | $(BIN)/python
	$(BIN)/pip install $(PIP_FLAGS) -e '.[dev,embeddings]'
	@touch $(VENV)/.installed $@

install: $(VENV)/.installed

dev: $(VENV)/.dev-installed

## make run: venv + install, migrate the SQLite database under var/, load the demo desk if empty, serve.
run: install
	$(BIN)/frankly db upgrade
	$(BIN)/frankly demo --if-empty
	$(BIN)/frankly serve

## make test: dev deps, ruff, mypy (strict), the whole pytest suite.
test: lint typecheck pytest

lint: dev
	$(BIN)/ruff check src tests bench
	$(BIN)/ruff format --check src tests bench

typecheck: dev
	$(BIN)/mypy

pytest: dev
	$(BIN)/pytest

bench: dev
	$(BIN)/python bench/api.py
	$(BIN)/python bench/faq_match.py
	$(BIN)/python bench/llm_overhead.py
	$(BIN)/python bench/channels.py

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache
