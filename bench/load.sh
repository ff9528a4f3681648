#!/usr/bin/env bash
# Load benchmark: the release binary under wrk, 64 connections per route. Each figure is
# also given as a ratio to the cheapest route (health) measured in the same run, which
# holds on a noisy machine. Appends a dated Markdown table to bench/results.md.
#
#   bench/load.sh [seconds-per-route]     (default 10)
set -euo pipefail
cd "$(dirname "$0")/.."
SECONDS_PER_ROUTE=${1:-10}
CONNECTIONS=64
THREADS=2

if ! command -v wrk >/dev/null; then
  echo "installing wrk (Debian package)…"
  if [ "$(id -u)" = 0 ]; then apt-get update -qq && apt-get install -y -qq wrk >/dev/null
  else sudo apt-get update -qq && sudo apt-get install -y -qq wrk >/dev/null; fi
fi
# shellcheck source=../tests/support/sessiond.sh
source tests/support/sessiond.sh
sessiond_build --release

WORK=$(mktemp -d)
PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
BASE="http://127.0.0.1:$PORT/api/messaging"
"$SESSIOND_BIN" serve --addr "127.0.0.1:$PORT" --data-dir "$WORK/data" 2>"$WORK/server.log" &
SERVER=$!
trap 'kill $SERVER 2>/dev/null; wait $SERVER 2>/dev/null; rm -rf "$WORK"' EXIT
for _ in $(seq 100); do curl -sf "$BASE/sessions/health" >/dev/null && break; sleep 0.1; done

AGENT=67e55044-10b1-426f-9247-bb680e5fe0c8
USER=0b8e6ad8-5e9a-4b0c-9f0e-3d2f1c7a8b90
new_session() {
  curl -sf -X POST "$BASE/sessions" -H 'Content-Type: application/json' \
    -d "{\"agentId\":\"$AGENT\",\"userId\":\"$USER\"}" | python3 -c 'import json,sys; print(json.load(sys.stdin)["sessionId"])'
}
# 256 sessions to append to (writers spread over them, as real users do), one with 200
# messages to read pages from.
SESSIONS=()
for _ in $(seq 256); do SESSIONS+=("$(new_session)"); done
READ=${SESSIONS[0]}
for i in $(seq 200); do
  curl -sf -X POST "$BASE/sessions/$READ/messages" -H 'Content-Type: application/json' -d "{\"content\":\"seed $i\"}" >/dev/null
done

wrk_append_script "$WORK/append.lua" "${SESSIONS[@]}"
cat >"$WORK/create.lua" <<LUA
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.body = '{"agentId":"$AGENT","userId":"$USER"}'
LUA

# run NAME URL [SCRIPT] -> "rps p50_ms p99_ms non2xx"
run() {
  local script=()
  [ -n "${3:-}" ] && script=(-s "$3")
  wrk -t"$THREADS" -c"$CONNECTIONS" -d"${SECONDS_PER_ROUTE}s" --latency "${script[@]}" "$2" >"$WORK/$1.txt"
  python3 bench/wrk_report.py "$WORK/$1.txt"
}

declare -A RESULT
RESULT[health]=$(run health "$BASE/sessions/health")
RESULT[create]=$(run create "$BASE/sessions" "$WORK/create.lua")
RESULT[append]=$(run append "$BASE/sessions" "$WORK/append.lua")
RESULT[get]=$(run get "$BASE/sessions/$READ")
RESULT[page]=$(run page "$BASE/sessions/$READ/messages?limit=50")
RESULT[list]=$(run list "$BASE/sessions?limit=20")

read -r CEIL_RPS _ CEIL_P99 _ <<<"${RESULT[health]}"
{
  echo
  echo "## $(date -u '+%Y-%m-%d %H:%M UTC') — $(nproc) cores, $(uname -m), wrk ${THREADS} threads × ${CONNECTIONS} connections × ${SECONDS_PER_ROUTE} s, same machine"
  echo
  echo "| route | req/s | × health req/s | p50 ms | p99 ms | × health p99 | non-2xx |"
  echo "|---|---:|---:|---:|---:|---:|---:|"
  for route in health create append get page list; do
    read -r rps p50 p99 bad <<<"${RESULT[$route]}"
    label=$(case $route in
      health) echo "GET /sessions/health (ceiling)";; create) echo "POST /sessions (durable)";;
      append) echo "POST /sessions/{id}/messages (durable)";; get) echo "GET /sessions/{id}";;
      page) echo "GET /sessions/{id}/messages?limit=50";; list) echo "GET /sessions?limit=20";; esac)
    python3 - "$label" "$rps" "$CEIL_RPS" "$p50" "$p99" "$CEIL_P99" "$bad" <<'PY'
import sys
label, rps, ceil_rps, p50, p99, ceil_p99, bad = sys.argv[1:]
rps, ceil_rps, p99f, ceil_p99 = float(rps), float(ceil_rps), float(p99), float(ceil_p99)
print(f"| {label} | {rps:.0f} | {rps / ceil_rps:.2f} | {p50} | {p99} | {p99f / ceil_p99:.2f} | {bad} |")
PY
  done
} | tee -a bench/results.md
