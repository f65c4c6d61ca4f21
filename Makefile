# tracedump — the two set-up commands: `make demo` and `make test`.
CARGO ?= cargo
TARGET_DIR := $(or $(CARGO_TARGET_DIR),target)
TRACEDUMP := $(TARGET_DIR)/release/tracedump
DEMO := $(TARGET_DIR)/demo/demo.tdump
DEMO_REF := $(TARGET_DIR)/demo/demo.reference.tdump

.PHONY: demo test test-rust test-python test-c debug-build lint bench build pyenv pypackage llama browser

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

## llama.cpp for the end-to-end test (pip compiles it once, then uses its cached wheel).
llama: pyenv
	CMAKE_BUILD_PARALLEL_LEVEL=$$(nproc) $(PYTHON) -m pip install --quiet --disable-pip-version-check -r tests/llama/requirements.txt

## Debian's chromium, for the browser test of the HTML report.
browser:
	@command -v chromium >/dev/null || { \
		SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
		$$SUDO apt-get update -q && $$SUDO apt-get install -y -q chromium; }

## Every test, Rust, C and Python.
test: pyenv test-rust test-c test-python

## The debug build the C and Python tests use: libtrace_writer.a/.so and the
## CLI with Parquet (arrow-rs: a heavy build, kept out of the default features).
debug-build:
	$(CARGO) build -p trace-writer -p trace-reader --features trace-reader/parquet

## The C ABI: a C program calls every function of tracedump.h; Python checks the file.
test-c: debug-build pypackage
	$(or $(CC),cc) -Wall -Wextra -Werror -o $(TARGET_DIR)/capi_test trace-writer/tests/c/capi_test.c \
		-Itrace-writer/include $(TARGET_DIR)/debug/libtrace_writer.a -lpthread -ldl -lm
	$(TARGET_DIR)/capi_test $(TARGET_DIR)/capi_test.tdump
	$(PYTHON) trace-writer/tests/c/check_capi.py $(TARGET_DIR)/capi_test.tdump

test-python: debug-build pypackage llama browser
	$(PYTHON) -m pytest -q python/tests tests/llama tests/report tests/parquet

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
