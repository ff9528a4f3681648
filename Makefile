# The two commands: `make run` and `make test`.
CARGO ?= cargo

.PHONY: run test test-deps test-postgres lint bench build fuzz elizaos readme crash

# Settings come from the environment (SESSIOND_ADDR, SESSIOND_DATA_DIR, …; defaults
# 127.0.0.1:3000 and ./data) or from make: `make run ADDR=… DATA=… ARGS="--api-key …"`.
run:
	$(CARGO) run --release -- serve $(if $(ADDR),--addr $(ADDR)) $(if $(DATA),--data-dir $(DATA)) $(ARGS)

test: lint test-deps fuzz elizaos readme
	$(CARGO) test --all-targets
	$(CARGO) test --doc
	$(MAKE) test-postgres

# The API suite again on PostgreSQL: one throwaway cluster (tests/support/postgres.sh), a
# database of its own for each server the tests start.
test-postgres:
	bash -c 'source tests/support/postgres.sh && postgres_start && trap postgres_stop EXIT && \
		SESSIOND_TEST_POSTGRES=$$POSTGRES_URL $(CARGO) test --test api'

# What cargo's tests need from Debian: libfaketime, for tests/clock.rs; promtool (package
# prometheus), which checks the metrics (tests/api/operability.rs); Chromium and its
# WebDriver, for the inspector's browser tests (tests/inspector.rs); and PostgreSQL, whose
# throwaway clusters the tests start themselves (tests/support/postgres.rs).
test-deps:
	bash -c 'source tests/support/sessiond.sh && debian_install faketime && debian_install promtool prometheus'
	bash -c 'source tests/support/sessiond.sh && debian_install chromium && debian_install chromedriver chromium-driver'
	bash -c 'source tests/support/postgres.sh && postgres_install'

lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --all-targets -- -D warnings

build:
	$(CARGO) build --release

# Load benchmark of the release binary (appends to bench/results.md), durable appends beside
# the Redis anchor (bench/append.sh: three alternating rounds, the ratio, bytes and CPU per
# append; installs redis-server when missing), durable appends on PostgreSQL beside pgbench
# (bench/postgres.sh: one node, two nodes, and sled, on a throwaway cluster), the cost of a
# stuck event-stream reader and of a thousand healthy ones on appends, the append's floor below HTTP (the store, then sled
# alone writing the same keys), then the scale benchmark: 1M sessions and 10M messages
# (the first run loads them, about 8 minutes, into target/scale-store-1000000; later runs
# reuse it), also appended to bench/results.md. bench/abuse.sh floods a fresh server per
# scenario (silent sockets, trickled bodies, event streams, held requests) and appends its
# latency and memory table too, failing if a defence plainly failed.
bench:
	bench/load.sh
	bench/append.sh
	bench/postgres.sh
	bench/abuse.sh
	$(CARGO) bench --bench stuck_subscriber
	$(CARGO) bench --bench append_floor
	$(CARGO) bench --bench scale

# 200 SIGKILLs under concurrent writes; `make test` runs 20 of them.
crash:
	SESSIOND_CRASH_ROUNDS=200 $(CARGO) test --release --test crash -- --nocapture

# schemathesis against a live server, driven by its own OpenAPI document (tests/fuzz/run.sh).
fuzz:
	CARGO=$(CARGO) tests/fuzz/run.sh

# The real @elizaos/api-client (installed with npm) against a live server (tests/elizaos/run.sh).
elizaos:
	CARGO=$(CARGO) tests/elizaos/run.sh

# The README's walk-through, as written there, against a live server (tests/readme/run.sh).
readme:
	CARGO=$(CARGO) tests/readme/run.sh
