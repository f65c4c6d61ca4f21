# tracedump — the two set-up commands: `make demo` and `make test`.
CARGO ?= cargo
# make's builds are a fresh machine's (CI, a new user): incremental
# compilation's caches (0.6 GB of target/debug in a fresh `make test`)
# buy nothing there. Set CARGO_INCREMENTAL=1 to keep them.
export CARGO_INCREMENTAL ?= 0
TARGET_DIR := $(or $(CARGO_TARGET_DIR),target)
TRACEDUMP := $(TARGET_DIR)/release/tracedump
DEMO := $(TARGET_DIR)/demo/demo.tdump
DEMO_REF := $(TARGET_DIR)/demo/demo.reference.tdump

.PHONY: demo test test-rust test-python test-c debug-build lint bench build pyenv pypackage wheel llama fuzz fuzz-cmin browser spark

build:
	$(CARGO) build --release -p tracedump-cli

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

## The Python package, built from source into .venv, with what its tests need:
## torch through python/install_torch.py (no pip cache, no triton: ~4 GB less disk).
pypackage: pyenv
	$(PYTHON) -m pip install --quiet --disable-pip-version-check -r python/requirements-test.txt
	$(PYTHON) python/install_torch.py
	$(PYTHON) -m pip install --quiet --disable-pip-version-check --force-reinstall --no-deps ./python

## The release wheel, what a notebook user installs without cargo: one abi3
## wheel (CPython 3.10+) for manylinux2014 (glibc 2.17+), stripped. zig (the
## ziglang package) links it against glibc 2.17's symbols; its own target dir
## keeps that build from invalidating the debug and release ones. That dir
## (~0.9 GB) is removed once the wheel is out, which keeps a fresh clone's
## `make test` under 10 GB of disk; the wheel is built again only when a
## source it is made from changed.
WHEEL_DIR := $(TARGET_DIR)/wheels
WHEEL_STAMP := $(WHEEL_DIR)/.built
WHEEL_SOURCES := $(wildcard $(shell git ls-files Cargo.toml Cargo.lock python/Cargo.toml \
	python/pyproject.toml python/README.md python/src python/tracedump trace-reader/src \
	trace-reader/Cargo.toml trace-writer trace-format trace-quant trace-tools 2>/dev/null))
wheel: $(WHEEL_STAMP)
$(WHEEL_STAMP): $(WHEEL_SOURCES) | $(PYTHON)
	$(PYTHON) -m pip install --quiet --disable-pip-version-check "maturin>=1.9.4,<2" "ziglang>=0.13,<0.16"
	PATH="$$($(PYTHON) -c 'import os, ziglang; print(os.path.dirname(ziglang.__file__))'):$$PATH" \
		CARGO_TARGET_DIR=$(abspath $(TARGET_DIR))/wheel $(PYTHON) -m maturin build --release --strip \
		--zig --compatibility manylinux2014 -m python/Cargo.toml -o $(WHEEL_DIR) -i $(PYTHON)
	rm -rf $(TARGET_DIR)/wheel
	touch $@

## llama.cpp for the end-to-end test (pip compiles it once, then uses its cached wheel).
llama: pyenv
	CMAKE_BUILD_PARALLEL_LEVEL=$$(nproc) $(PYTHON) -m pip install --quiet --disable-pip-version-check -r tests/llama/requirements.txt

## Debian's chromium, for the browser test of the HTML report.
browser:
	@command -v chromium >/dev/null || { \
		SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
		$$SUDO apt-get update -q && $$SUDO apt-get install -y -q chromium; }

## PySpark in local mode, for the README's Spark query over the Parquet
## tables (tests/parquet/test_spark.py): Debian's headless JRE when `java` is
## missing, and pyspark. Its ~450 MB source download and wheel build are not
## kept in pip's cache (--no-cache-dir), and are unpacked inside .venv, on its
## disk, not in /tmp (which may be a small tmpfs), like install_torch.py does.
spark: pyenv
	@command -v java >/dev/null || { \
		SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
		$$SUDO apt-get update -q && $$SUDO apt-get install -y -q openjdk-17-jre-headless; }
	@tmp=$$(mktemp -d "$(abspath $(VENV))/pip-XXXXXX") && \
		TMPDIR=$$tmp $(PYTHON) -m pip install --quiet --disable-pip-version-check --no-cache-dir \
			-r tests/parquet/requirements.txt; \
		rc=$$?; rm -rf "$$tmp"; exit $$rc

## Every test, Rust, C and Python. `spark` and `wheel` come before the Rust
## build so that their transient disk (pyspark's download and unpacking, ~1 GB;
## the wheel's own target dir, ~0.9 GB) is gone before target/ grows: a fresh
## clone's peak stays under 10 GB.
test: pyenv spark wheel test-rust test-c test-python

## The debug build the C and Python tests use: libtrace_writer.a/.so and the
## CLI (with Parquet, a default feature of tracedump-cli).
debug-build:
	$(CARGO) build -p trace-writer -p tracedump-cli

## The C ABI: a C program calls every function of tracedump.h; Python checks the file.
test-c: debug-build pypackage
	$(or $(CC),cc) -Wall -Wextra -Werror -o $(TARGET_DIR)/capi_test trace-writer/tests/c/capi_test.c \
		-Itrace-writer/include $(TARGET_DIR)/debug/libtrace_writer.a -lpthread -ldl -lm
	$(TARGET_DIR)/capi_test $(TARGET_DIR)/capi_test.tdump
	$(PYTHON) trace-writer/tests/c/check_capi.py $(TARGET_DIR)/capi_test.tdump

# test_wheel.py installs the wheel into a bare venv with no cargo on PATH
test-python: debug-build pypackage wheel llama browser spark
	TRACEDUMP_WHEEL_DIR=$(abspath $(WHEEL_DIR)) $(PYTHON) -m pytest -q -p tests.pytest_fail_on_skip --fail-on-skip python/tests tests/llama tests/report tests/parquet

test-rust:
	@if $(CARGO) nextest --version >/dev/null 2>&1; then \
		$(CARGO) nextest run --workspace --no-fail-fast; \
	else \
		$(CARGO) test --workspace --no-fail-fast --lib --bins --tests; \
	fi
	$(CARGO) test --workspace --doc
	@# trace-writer's `candle` feature (candle-core): its test and doctest
	$(CARGO) test -p trace-writer --features candle --test candle
	$(CARGO) test -p trace-writer --features candle --doc

## The unsafe code under checkers (nightly): the C ABI under Miri, the
## reader's hostile-input and round-trip tests under AddressSanitizer.
miri:
	rustup toolchain install nightly --component miri,rust-src --profile minimal
	MIRIFLAGS=-Zmiri-disable-isolation $(CARGO) +nightly miri test -p trace-writer --test capi
	# the reader's f16 -> f32 conversion (halves.rs: F16C through raw pointers)
	MIRIFLAGS=-Zmiri-disable-isolation $(CARGO) +nightly miri test -p trace-reader --lib -- halves::

asan:
	rustup toolchain install nightly --profile minimal
	RUSTFLAGS=-Zsanitizer=address ASAN_OPTIONS=detect_leaks=0 CARGO_TARGET_DIR=$(TARGET_DIR)/asan \
		$(CARGO) +nightly test --target $$(rustc -vV | sed -n 's/host: //p') -p tracedump-tests \
		--test robustness --test allocation_bound --test roundtrip --test gguf_parse --test mixed_kv

lint:
	$(CARGO) clippy --workspace --all-targets -- -D warnings

## The user-facing benchmark table: ours against plain write(), safetensors,
## torch, numpy and gguf-py in one run, one table, bench/results.json; and
## the scaling sweeps, drawn to bench/scaling.svg (bench/README.md).
## A quick run: make bench BENCH_ARGS="--scale 0.05".
bench: pypackage llama
	$(PYTHON) -m pip install --quiet --disable-pip-version-check -r bench/requirements.txt
	$(PYTHON) bench/table.py --mark-start
	$(CARGO) build --release -p tracedump-bench -p tracedump-cli
	$(CARGO) run --release -p tracedump-bench -- --quiet $(BENCH_ARGS)
	$(PYTHON) bench/python_bench.py --quiet $(BENCH_ARGS)
	TRACEDUMP_CLI=$(abspath $(TRACEDUMP)) $(CARGO) run --release -p tracedump-bench -- sweeps $(BENCH_ARGS)
	$(PYTHON) bench/plot.py
	$(PYTHON) bench/engine_cost.py --quiet $(BENCH_ARGS)
	$(PYTHON) bench/streaming.py $(BENCH_ARGS)
	$(PYTHON) bench/table.py

## Fuzz every parser (fuzz/README.md) for FUZZ_SECONDS each, one after another.
## Installs nightly and cargo-fuzz when missing. New inputs go to FUZZ_WORK,
## crashes to fuzz/artifacts/; the committed corpus is only read.
FUZZ_SECONDS ?= 60
FUZZ_TARGETS ?= trace_bytes gguf_bytes safetensors_import capi verbs
FUZZ_WORK ?= $(abspath $(TARGET_DIR))/fuzz-corpus
FUZZ_FLAGS := -max_len=1048576 -rss_limit_mb=2048 -timeout=10 -print_final_stats=1
CARGO_FUZZ := cargo +nightly fuzz

fuzz:
	@rustup run nightly rustc --version >/dev/null 2>&1 || rustup toolchain install nightly --profile minimal
	@$(CARGO_FUZZ) --version >/dev/null 2>&1 || cargo install cargo-fuzz --locked
	@for t in $(FUZZ_TARGETS); do \
		mkdir -p $(FUZZ_WORK)/$$t && \
		$(CARGO_FUZZ) run --sanitizer none $$t $(FUZZ_WORK)/$$t fuzz/corpus/$$t -- \
			$(FUZZ_FLAGS) -max_total_time=$(FUZZ_SECONDS) || exit 1; \
	done

## Fold what `make fuzz` found into the committed corpus, minimized
## (fuzz/min_corpus.py: every piece of code the inputs reach, at most 300 files).
fuzz-cmin:
	@$(CARGO_FUZZ) build --sanitizer none
	@for t in $(FUZZ_TARGETS); do \
		python3 fuzz/min_corpus.py fuzz/target/*/release/$$t fuzz/corpus/$$t $(FUZZ_WORK)/$$t || exit 1; \
	done
