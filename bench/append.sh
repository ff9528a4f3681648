#!/usr/bin/env bash
# The durable append, side by side with the Redis anchor (Redis 7, `appendfsync always`, one
# Lua script per append: ../shared/anchors/redis-append/, or REDIS_ANCHOR): alternating rounds
# in one run, 64 connections each, so the figure that counts is the ratio. For sessiond it
# also reads, from /proc, the bytes the server wrote and the CPU it and its writer thread
# spent, per append. Appends a dated table to bench/results.md.
#
#   bench/append.sh [seconds] [rounds]        (defaults 10 and 3)
#
# Installs wrk and redis-server (Debian packages) when missing.
set -euo pipefail
cd "$(dirname "$0")/.."
SECONDS_RUN=${1:-10}
ROUNDS=${2:-3}
CONNECTIONS=64
ANCHOR=${REDIS_ANCHOR:-../shared/anchors/redis-append/run.sh}

install() {
  if [ "$(id -u)" = 0 ]; then apt-get update -qq && apt-get install -y -qq "$@" >/dev/null
  else sudo apt-get update -qq && sudo apt-get install -y -qq "$@" >/dev/null; fi
}
command -v wrk >/dev/null || { echo "installing wrk (Debian package)…"; install wrk; }
if [ -x "$ANCHOR" ] && ! command -v redis-server >/dev/null; then
  echo "installing redis-server (Debian package)…"; install redis-server
fi
# shellcheck source=../tests/support/sessiond.sh
source tests/support/sessiond.sh
sessiond_build --release

WORK=$(mktemp -d)
trap 'sessiond_stop 2>/dev/null; rm -rf "$WORK"' EXIT

# sessiond_round -> "rps p50_ms p99_ms non2xx write_bytes_per_append cpu_us_per_append writer_cpu_us_per_append load_cpu_us_per_append"
sessiond_round() {
  rm -rf "$WORK/data"
  sessiond_start "$WORK"
  local base="http://$SESSIOND_ADDR/api/messaging" sessions=() id
  for _ in $(seq 256); do
    id=$(curl -sf -X POST "$base/sessions" -H 'Content-Type: application/json' \
      -d '{"agentId":"67e55044-10b1-426f-9247-bb680e5fe0c8","userId":"0b8e6ad8-5e9a-4b0c-9f0e-3d2f1c7a8b90"}' |
      python3 -c 'import json,sys; print(json.load(sys.stdin)["sessionId"])')
    sessions+=("$id")
  done
  wrk_append_script "$WORK/append.lua" "${sessions[@]}"
  local writer
  writer=$(grep -l '^sessiond-writer$' /proc/"$SESSIOND_PID"/task/*/comm | head -1 | xargs dirname)
  # sample PID WRITER_TASK_DIR -> "write_bytes cpu_seconds writer_cpu_seconds"
  sample() {
    python3 -c 'import sys; sys.path.insert(0, "bench"); import wrk_report as w
print(w.write_bytes(sys.argv[1]), w.cpu_seconds(f"/proc/{sys.argv[1]}/stat"), w.cpu_seconds(f"{sys.argv[2]}/stat"))' "$@"
  }
  local before
  before=$(sample "$SESSIOND_PID" "$writer")
  # wrk's own CPU seconds, from its rusage: the load generator shares the cores.
  local load_cpu
  load_cpu=$(python3 -c 'import resource, subprocess, sys
with open(sys.argv[1], "w") as out:
    subprocess.run(sys.argv[2:], stdout=out, check=True)
usage = resource.getrusage(resource.RUSAGE_CHILDREN)
print(usage.ru_utime + usage.ru_stime)' "$WORK/wrk.txt" \
    wrk -t2 -c"$CONNECTIONS" -d"${SECONDS_RUN}s" --latency -s "$WORK/append.lua" "http://$SESSIOND_ADDR/")
  python3 - "$WORK/wrk.txt" "$load_cpu" $before $(sample "$SESSIOND_PID" "$writer") <<'PY'
import sys
sys.path.insert(0, "bench")
import wrk_report
report = wrk_report.read(sys.argv[1])
load_cpu, bytes0, cpu0, writer0, bytes1, cpu1, writer1 = map(float, sys.argv[2:])
ok = max(report["requests"] - report["non2xx"], 1)
print(f"{report['rps']:.0f} {report['p50']:.2f} {report['p99']:.2f} {report['non2xx']} "
      f"{(bytes1 - bytes0) / ok:.0f} {(cpu1 - cpu0) * 1e6 / ok:.0f} {(writer1 - writer0) * 1e6 / ok:.0f} "
      f"{load_cpu * 1e6 / ok:.0f}")
PY
  sessiond_stop
}

REDIS=()
SESSIOND=()
for round in $(seq "$ROUNDS"); do
  if [ -x "$ANCHOR" ]; then
    line=$("$ANCHOR" "$SECONDS_RUN" "$CONNECTIONS" | tail -1)
    echo "round $round: $line"
    REDIS+=("$(echo "$line" | awk '{print $2, $4, $6, $8}')")
  fi
  line=$(sessiond_round)
  echo "round $round: sessiond $line"
  SESSIOND+=("$line")
done

{
  echo
  echo "## $(date -u '+%Y-%m-%d %H:%M UTC') — durable appends beside Redis, $(nproc) cores, $(uname -m), $CONNECTIONS connections × ${SECONDS_RUN} s, $ROUNDS alternating rounds, same machine"
  echo
  python3 - "${#REDIS[@]}" "${REDIS[@]}" "${SESSIOND[@]}" <<'PY'
import statistics, sys
n_redis = int(sys.argv[1])
redis = [list(map(float, r.split())) for r in sys.argv[2:2 + n_redis]]
ours = [list(map(float, r.split())) for r in sys.argv[2 + n_redis:]]
med = lambda rows, i: statistics.median(row[i] for row in rows)
print("| system | appends/s (median) | p50 ms | p99 ms | disk bytes per append | server CPU µs per append | writer thread CPU µs per append | wrk CPU µs per append | non-2xx |")
print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
if redis:
    print(f"| Redis `appendfsync always`, Lua script (no HTTP) | {med(redis, 0):.0f} | {med(redis, 1):.2f} | {med(redis, 2):.2f} | {med(redis, 3):.0f} | | | | |")
print(f"| sessiond over HTTP | {med(ours, 0):.0f} | {med(ours, 1):.2f} | {med(ours, 2):.2f} | {med(ours, 4):.0f} | {med(ours, 5):.0f} | {med(ours, 6):.0f} | {med(ours, 7):.0f} | {sum(r[3] for r in ours):.0f} |")
if redis:
    ratios = [o[0] / r[0] for o, r in zip(ours, redis)]
    print()
    print(f"sessiond ÷ Redis appends/s, per round: {', '.join(f'{x:.2f}' for x in ratios)}; "
          f"median {statistics.median(ratios):.2f}. p99 ÷ Redis p99: {med(ours, 2) / med(redis, 2):.2f}.")
PY
} | tee -a bench/results.md
