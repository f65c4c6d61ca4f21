# tracedump — the two set-up commands: `make demo` and `make test`.
CARGO ?= cargo
TARGET_DIR := $(or $(CARGO_TARGET_DIR),target)
TRACEDUMP := $(TARGET_DIR)/release/tracedump
DEMO := $(TARGET_DIR)/demo/demo.tdump

.PHONY: demo test test-rust lint bench build

build:
	$(CARGO) build --release -p trace-reader

## Write the built-in example trace and show what is in it.
demo: build
	@mkdir -p $(dir $(DEMO))
	$(TRACEDUMP) demo $(DEMO)
	$(TRACEDUMP) inspect $(DEMO)
	$(TRACEDUMP) verify $(DEMO)

## Every test, Rust and (once the Python package exists) Python.
test: test-rust

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
bench:
	$(CARGO) run --release -p tracedump-bench
