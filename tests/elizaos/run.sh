#!/usr/bin/env bash
# Drives every sessions method of the real elizaOS client, @elizaos/api-client, against a
# live sessiond (tests/elizaos/sessions.test.mjs, with node's test runner).
#
# Installs the client with npm into cargo's target directory (once per version), builds the
# debug binary and starts it on a free loopback port with an API key, its default reply
# timeout and --min-timeout-minutes 0 (for an expired session), then stops it however the
# run ends: once on sled, then again on a throwaway PostgreSQL cluster
# (tests/support/postgres.sh). Fails on any failed test and on any error or warning in the
# server's log.
#
# Needs Node.js 18 or later and npm, and the npm registry on the first run.
set -euo pipefail

cd "$(dirname "$0")/../.."
# shellcheck source=../support/sessiond.sh
source tests/support/sessiond.sh
# shellcheck source=../support/postgres.sh
source tests/support/postgres.sh
CLIENT_VERSION=1.7.2
CLIENT_DIR=$(cargo_target_dir)/elizaos-client
CLIENT_PACKAGE=$CLIENT_DIR/node_modules/@elizaos/api-client

installed=$(node -p "require('$CLIENT_PACKAGE/package.json').version" 2>/dev/null || true)
if [[ $installed != "$CLIENT_VERSION" ]]; then
    echo "elizaos: installing @elizaos/api-client@$CLIENT_VERSION into $CLIENT_DIR"
    mkdir -p "$CLIENT_DIR"
    npm install --prefix "$CLIENT_DIR" --no-audit --no-fund --no-save --loglevel=error \
        "@elizaos/api-client@$CLIENT_VERSION"
fi

sessiond_build

WORK=$(mktemp -d "${TMPDIR:-/tmp}/sessiond-elizaos.XXXXXX")
cleanup() {
    sessiond_stop
    postgres_stop
    rm -rf "$WORK"
}
trap cleanup EXIT

API_KEY=elizaos-client-test-key
status=0

# run_client LABEL [FLAG…]: the client's tests against a server started with the flags.
run_client() {
    local label=$1 dir="$WORK/$1"
    shift
    mkdir -p "$dir"
    sessiond_start "$dir" --api-key "$API_KEY" --min-timeout-minutes 0 "$@"
    echo "elizaos: sessiond on $label at http://$SESSIOND_ADDR"
    SESSIOND_URL="http://$SESSIOND_ADDR" \
        SESSIOND_API_KEY=$API_KEY \
        ELIZAOS_CLIENT=$CLIENT_PACKAGE/dist/index.js \
        node --test --test-reporter=spec tests/elizaos/sessions.test.mjs || status=$?
    if ! sessiond_stop_checked "$dir" "elizaos on $label"; then
        [[ $status -ne 0 ]] || status=1
    fi
}

run_client sled
postgres_start
run_client postgres --store "$POSTGRES_URL"
exit "$status"
