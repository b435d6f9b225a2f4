# Quick start:  make demo   (the main job on the embedded default data)
#               make test   (the whole test suite)
# Each target sets up .venv on its own (see tools/setup_env.sh).

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.sparsemia-installed
SOURCES := pyproject.toml setup.py $(shell find csrc -type f 2>/dev/null)
PYTEST_ARGS ?=

.PHONY: setup demo test test-fast bench bench-gpu lint clean

setup: $(STAMP)

$(STAMP): $(SOURCES) tools/setup_env.sh
	tools/setup_env.sh $(VENV) $(PYTHON)
	touch $@

demo: setup
	$(VENV)/bin/sparsemia reproduce --quick --out runs/quick

test: setup
	$(PY) -m pytest -q $(PYTEST_ARGS)

test-fast: setup
	$(PY) -m pytest -q -m "not slow" $(PYTEST_ARGS)

bench: setup
	$(VENV)/bin/sparsemia bench
	$(PY) -m pytest benchmarks -q --benchmark-only

bench-gpu: setup
	benchmarks/gpu_check.sh

lint: setup
	$(VENV)/bin/ruff check .

clean:
	rm -rf build dist *.egg-info src/sparsemia/*.so $(STAMP)
