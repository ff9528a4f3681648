# The two commands: `make run` and `make test`.
CARGO ?= cargo

.PHONY: run test lint bench build fuzz crash

run:
	$(CARGO) run --release -- serve --addr 127.0.0.1:3000 --data-dir ./data

test: lint fuzz
	$(CARGO) test --all-targets
	$(CARGO) test --doc

lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --all-targets -- -D warnings

build:
	$(CARGO) build --release

# Load benchmark of the release binary (appends to bench/results.md), then the cost of a
# stuck event-stream reader on appends.
bench:
	bench/load.sh
	$(CARGO) bench --bench stuck_subscriber

# 200 SIGKILLs under concurrent writes; `make test` runs 20 of them.
crash:
	SESSIOND_CRASH_ROUNDS=200 $(CARGO) test --release --test crash -- --nocapture

# schemathesis against a live server, driven by its own OpenAPI document (tests/fuzz/run.sh).
fuzz:
	CARGO=$(CARGO) tests/fuzz/run.sh
