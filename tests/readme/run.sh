#!/usr/bin/env bash
# Runs the README's walk-through, as written there, against a fresh server, so the README
# cannot drift from what sessiond does.
#
# Takes every ```sh block of the section "## A walk through the API" in README.md, points
# its address (127.0.0.1:3000) at a server started on a free port, and runs the blocks in
# order with `set -euo pipefail`: an unset variable, a failed pipeline or an HTTP error
# (curl runs with --fail-with-body; only the --max-time end of an event stream is allowed)
# fails the run. Needs curl and jq (installed from Debian's packages when missing).
set -euo pipefail

cd "$(dirname "$0")/../.."
# shellcheck source=../support/sessiond.sh
source tests/support/sessiond.sh

debian_install curl
debian_install jq

WALK=$(awk '
    /^## / { inside = ($0 == "## A walk through the API") }
    inside && /^```sh$/ { block = 1; next }
    inside && block && /^```$/ { block = 0; next }
    inside && block { print }
' README.md)
if [[ -z $WALK ]]; then
    echo "readme: no walk-through found in README.md" >&2
    exit 1
fi

sessiond_build
WORK=$(mktemp -d "${TMPDIR:-/tmp}/sessiond-readme.XXXXXX")
cleanup() {
    sessiond_stop
    rm -rf "$WORK"
}
trap cleanup EXIT
sessiond_start "$WORK"
echo "readme: sessiond on http://$SESSIOND_ADDR"

SCRIPT="set -euo pipefail
curl() {
    local status=0
    command curl --fail-with-body \"\$@\" || status=\$?
    # 28: --max-time ended an event stream, as the walk-through asks.
    if [[ \$status -ne 0 && \$status -ne 28 ]]; then
        echo \"readme: curl \$* failed with \$status\" >&2
        return \$status
    fi
}
${WALK//127.0.0.1:3000/$SESSIOND_ADDR}"
bash -c "$SCRIPT" >"$WORK/out.txt" 2>"$WORK/err.txt" || {
    status=$?
    echo "readme: the walk-through failed ($status):" >&2
    cat "$WORK/out.txt" "$WORK/err.txt" >&2
    exit "$status"
}

# Spot checks of what the walk-through printed.
out=$WORK/out.txt
for expected in '"channelId"' '{"seq":2,"content":"Hi, how can I help?"}' \
    '{"seq":1,"content":"Hello!"}' 'event: session.created' 'event: message' \
    '"status":"healthy"' 'deleted successfully'; do
    if ! grep -qF -- "$expected" "$out"; then
        echo "readme: the walk-through did not print $expected; it printed:" >&2
        cat "$out" >&2
        exit 1
    fi
done
if ! sessiond_log_problems "$WORK"; then
    echo "readme: the server logged the errors or warnings above" >&2
    exit 1
fi
echo "readme: 1 passed, 0 failed"
