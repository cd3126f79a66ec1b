# Notifier: see README.md. Every target installs what it needs first.
SHELL := /bin/bash
.DEFAULT_GOAL := help

VENV := .venv
PY := $(VENV)/bin/python
UV_VERSION := 0.13.8
UV := .cache/uv/bin/uv
BUF := node_modules/.bin/buf
export UV_PROJECT_ENVIRONMENT := $(VENV)

.PHONY: help install run test test-fast soak lint proto proto-check fmt bench clean

help:
	@echo "make install      .venv with the project and its locked dependencies"
	@echo "make run          start the service (SQLite; no credentials needed)"
	@echo "make test         the whole test suite"
	@echo "make test-fast    unit and API tests on SQLite only (tests/unit, tests/api): under a minute"
	@echo "make soak         a few minutes of steady load; prints RSS and open fds (NOTIFIER_SOAK_SECONDS, NOTIFIER_SOAK_RATE)"
	@echo "make lint         buf lint (+ buf breaking), ruff, mypy"
	@echo "make proto        regenerate clients/python/src/notifier_proto from proto/"
	@echo "make proto-check  fail if the generated code is stale"
	@echo "make bench        the benchmark table (SPEC section 9); writes bench/results.json"

$(UV):
	python3 -m venv .cache/uv
	.cache/uv/bin/pip install --quiet uv==$(UV_VERSION)

$(VENV)/.installed: pyproject.toml clients/python/pyproject.toml uv.lock | $(UV)
	$(UV) sync --frozen
	touch $@

$(BUF): package.json package-lock.json
	# npm ci: exactly the lock, never rewriting it (the lock records buf's builds for
	# every platform, so npm has nothing to add on any machine)
	npm ci --no-audit --no-fund --loglevel=error
	touch $@

install: $(VENV)/.installed $(BUF)

run: install
	$(VENV)/bin/notifier serve

test: install
	$(VENV)/bin/pytest

test-fast: install
	$(VENV)/bin/pytest tests/unit tests/api -m "not postgresql and not slow"

soak: install
	NOTIFIER_SOAK=1 $(VENV)/bin/pytest -m soak -s

lint: install
	$(BUF) lint
	@if git rev-parse -q --verify main >/dev/null && git cat-file -e main:proto/notifier/v1/notifier.proto 2>/dev/null \
	    && [ -n "$$(git tag -l 'v*')" ]; then \
	  echo "buf breaking --against .git#branch=main"; $(BUF) breaking --against '.git#branch=main'; \
	else echo "buf breaking: no released baseline yet (no v* tag); skipped"; fi
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

proto: install
	$(PY) tools/gen_proto.py

proto-check: install
	$(PY) tools/gen_proto.py --check

bench: install
	$(PY) -m bench

fmt: install
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

clean:
	rm -rf $(VENV) .cache node_modules .pytest_cache .mypy_cache .ruff_cache
