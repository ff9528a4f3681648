#!/usr/bin/env bash
# Flood and memory benchmark: how the release binary's defences hold against hostile
# clients — 1,024 silent sockets, 1,100 trickled bodies, 1,024 event streams, 1,000 held
# requests with 60 KiB bodies (HTTP/1.1, then h2c) — each against a fresh server with the
# default limits. Health and append latency during each flood are also given as a ratio to
# a baseline measured on the same server just before it (the machine is noisy). Appends a
# dated Markdown table to bench/results.md; exits 1 if a defence plainly failed (a probe
# unanswered for 5 s, a refusal that is not the 503 envelope, a server that died, …).
# The floods themselves are bench/abuse.py (Python 3 standard library only).
#
#   bench/abuse.sh [SCENARIO…]    (default: all; see `python3 bench/abuse.py run --help`)
set -euo pipefail
cd "$(dirname "$0")/.."

SCENARIOS=("$@")
[[ ${#SCENARIOS[@]} -gt 0 ]] || SCENARIOS=(silent slow-body streams held-h1 held-h2c)
# Held requests wait this long for a reply that never comes: short, to keep the run short.
REPLY_TIMEOUT=5

# Both ends of ~1,100 connections live on this machine: the server and the floods each need
# more descriptors than the usual soft limit of 1024. Take 65536, or as many as allowed.
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
if (($(ulimit -n) < 4096)); then
  echo "abuse.sh: only $(ulimit -n) file descriptors allowed; the floods need about 2,300" >&2
  exit 2
fi

# shellcheck source=../tests/support/sessiond.sh
source tests/support/sessiond.sh
sessiond_build --release

WORK=$(mktemp -d)
trap 'sessiond_stop; rm -rf "$WORK"' EXIT

RESULTS=()
for scenario in "${SCENARIOS[@]}"; do
  dir=$WORK/$scenario
  mkdir -p "$dir"
  flags=()
  extra=()
  if [[ $scenario == held-* ]]; then
    flags=(--reply-timeout-seconds "$REPLY_TIMEOUT")
    extra=(--reply-timeout "$REPLY_TIMEOUT")
  fi
  echo "$scenario:"
  sessiond_start "$dir" "${flags[@]}"
  python3 bench/abuse.py run "$scenario" --addr "$SESSIOND_ADDR" --pid "$SESSIOND_PID" \
    --bin "$SESSIOND_BIN" --out "$dir/result.json" "${extra[@]}"
  sessiond_stop
  # Warnings are worth seeing (e.g. "accept failed"), but a flood is allowed to cause them.
  if ! sessiond_log_problems "$dir" 2>"$dir/problems"; then
    echo "  the server logged $(grep -c . "$dir/problems") warnings or errors, the first:"
    head -n 3 "$dir/problems" | cut -c 1-300 | sed 's/^/    /'
  fi
  RESULTS+=("$dir/result.json")
done

status=0
python3 bench/abuse.py report "${RESULTS[@]}" >"$WORK/report.md" || status=$?
tee -a bench/results.md <"$WORK/report.md"
if ((status != 0)); then
  echo "abuse.sh: a defence failed (the lines marked 'Defence failed' above)" >&2
fi
exit "$status"
