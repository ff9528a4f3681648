#!/usr/bin/env bash
# Fuzzes the live server with schemathesis, driven by the OpenAPI document it serves.
#
# Builds the debug binary, starts it on a free loopback port (port 0; the address is read
# from its log) with a temporary data directory, installs schemathesis into a virtualenv
# in cargo's target directory, runs it against http://127.0.0.1:PORT/api/openapi.json and exits non-zero
# on any failure: once on sled, then again on a throwaway PostgreSQL cluster
# (tests/support/postgres.sh). The server is stopped (SIGTERM, then waited for) however the
# run ends.
#
# Checks: not_a_server_error (no 5xx), status_code_conformance (only documented statuses),
# content_type_conformance and response_schema_conformance (every answer matches the
# document). Phases: examples, coverage (boundary values of every schema), fuzzing (random
# valid and invalid inputs) and stateful (chains through the document's links: create a
# session, then use its id in every session route, append messages and read them back).
#
# Excluded, and why:
# - GET /api/messaging/sessions/{sessionId}/events and GET /api/messaging/events
#   (stream_session_events, stream_owner_events): Server-Sent Events streams stay open
#   until the session ends or the server stops, so every request would time out. Their
#   error answers (400/404/410 before a stream opens) are covered by tests/api/events.rs.
# - Nothing else. POST …/messages with `transport: "http"`/`"sse"` (or legacy `mode`) holds
#   the request until the agent replies or the reply timeout passes; the server runs with
#   --reply-timeout-seconds 1, so those requests end within about a second (201 with
#   agentResponse null, or a 200 event stream ending in `done`).
#
# Environment: FUZZ_MAX_EXAMPLES (default 100 per operation and phase), FUZZ_SEED (default
# fixed, so `make test` is reproducible; set another to explore), FUZZ_WORKERS (default 1).
set -euo pipefail

cd "$(dirname "$0")/../.."
# shellcheck source=../support/sessiond.sh
source tests/support/sessiond.sh
# shellcheck source=../support/postgres.sh
source tests/support/postgres.sh
TARGET_DIR=$(cargo_target_dir)
SCHEMATHESIS_VERSION=4.32.5
VENV=$TARGET_DIR/fuzz-venv
REPORT_DIR=$TARGET_DIR/fuzz-report
MAX_EXAMPLES=${FUZZ_MAX_EXAMPLES:-100}
SEED=${FUZZ_SEED:-20261121}
# One worker: with two, hypothesis's lambda descriptions call ast.parse from two threads at
# once, which CPython 3.11 answers now and then with "AST constructor recursion depth
# mismatch" (a runtime error in schemathesis, not a finding).
WORKERS=${FUZZ_WORKERS:-1}

sessiond_build

if [[ ! -x $VENV/bin/schemathesis ]] ||
    [[ $("$VENV/bin/python" -c 'import importlib.metadata as m; print(m.version("schemathesis"))' 2>/dev/null) != "$SCHEMATHESIS_VERSION" ]]; then
    echo "fuzz: installing schemathesis $SCHEMATHESIS_VERSION into $VENV"
    python3 -m venv "$VENV"
    "$VENV/bin/pip" install --quiet --disable-pip-version-check "schemathesis==$SCHEMATHESIS_VERSION"
fi

WORK=$(mktemp -d "${TMPDIR:-/tmp}/sessiond-fuzz.XXXXXX")
cleanup() {
    sessiond_stop
    postgres_stop
    rm -rf "$WORK"
}
trap cleanup EXIT

status=0

# fuzz_against LABEL [FLAG…]: schemathesis against a server started with the flags.
fuzz_against() {
    local label=$1 dir="$WORK/$1" reports="$REPORT_DIR/$1"
    shift
    mkdir -p "$dir" "$reports"
    sessiond_start "$dir" --min-timeout-minutes 0 --reply-timeout-seconds 1 "$@"
    local addr=$SESSIOND_ADDR
    echo "fuzz: sessiond on $label at http://$addr"
    # schemathesis keeps a cache (.schemathesis/) in its working directory: keep it in the
    # target directory.
    (cd "$reports" && "$VENV/bin/schemathesis" run "http://$addr/api/openapi.json" \
        --url "http://$addr" \
        --checks not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance \
        --phases examples,coverage,fuzzing,stateful \
        --exclude-operation-id stream_session_events \
        --exclude-operation-id stream_owner_events \
        --max-examples "$MAX_EXAMPLES" \
        --seed "$SEED" \
        --workers "$WORKERS" \
        --request-timeout 10 \
        --suppress-health-check all \
        --report junit \
        --report-dir "$reports") || status=$?
    if ! sessiond_stop_checked "$dir" "fuzz on $label"; then
        [[ $status -ne 0 ]] || status=1
    fi
}

fuzz_against sled
postgres_start
fuzz_against postgres --store "$POSTGRES_URL"
exit "$status"
