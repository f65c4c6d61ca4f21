# tracedump — the two set-up commands: `make demo` and `make test`.
CARGO ?= cargo
TARGET_DIR := $(or $(CARGO_TARGET_DIR),target)
TRACEDUMP := $(TARGET_DIR)/release/tracedump
DEMO := $(TARGET_DIR)/demo/demo.tdump
DEMO_REF := $(TARGET_DIR)/demo/demo.reference.tdump

.PHONY: demo test test-rust test-python lint bench build pyenv pypackage

build:
	$(CARGO) build --release -p trace-reader

## Write the built-in example (two runs of a tiny model, one with a planted
## bug), show what is in the first, and find where the runs part ways.
demo: build
	@mkdir -p $(dir $(DEMO))
	$(TRACEDUMP) demo $(DEMO)
	$(TRACEDUMP) inspect $(DEMO) --layer 0 --ggml
	$(TRACEDUMP) verify $(DEMO)
	@# diff exits 1 when the runs diverge, which is what the demo plants
	$(TRACEDUMP) diff $(DEMO) $(DEMO_REF); test $$? -eq 1

## The reference Python the tests compare against (gguf-py, numpy), in .venv.
VENV := .venv
PYTHON := $(VENV)/bin/python
export TRACEDUMP_PYTHON := $(abspath $(PYTHON))

$(PYTHON):
	python3 -m venv $(VENV)

pyenv: $(PYTHON) tests/python/requirements.txt
	$(PYTHON) -m pip install --quiet --disable-pip-version-check -r tests/python/requirements.txt

## The Python package, built from source into .venv (with torch for its tests).
pypackage: pyenv
	$(PYTHON) -m pip install --quiet --disable-pip-version-check -r python/requirements-test.txt
	$(PYTHON) -m pip install --quiet --disable-pip-version-check --force-reinstall --no-deps ./python

## Every test, Rust and Python.
test: pyenv test-rust test-python

test-python: pypackage
	$(PYTHON) -m pytest -q python/tests

test-rust:
	@if $(CARGO) nextest --version >/dev/null 2>&1; then \
		$(CARGO) nextest run --workspace --no-fail-fast; \
	else \
		$(CARGO) test --workspace --no-fail-fast --lib --bins --tests; \
	fi
	$(CARGO) test --workspace --doc

lint:
	$(CARGO) clippy --workspace --all-targets -- -D warnings

## The user-facing benchmark table (writes bench/results.json).
bench: pypackage
	$(PYTHON) -m pip install --quiet --disable-pip-version-check -r bench/requirements.txt
	$(CARGO) run --release -p tracedump-bench
	$(PYTHON) bench/python_bench.py
