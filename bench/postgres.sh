#!/usr/bin/env bash
# Durable appends on PostgreSQL, in one run on a throwaway cluster (tests/support/postgres.sh):
#
# 1. the anchor: pgbench running the same append straight into PostgreSQL, no HTTP: one
#    transaction that bumps the session's count and time, inserts the message and an event;
# 2. sessiond on PostgreSQL over HTTP, one node;
# 3. the same with two nodes on the one database, the load split between them;
# 4. sessiond on sled, for scale.
#
# Each runs 64 connections for SECONDS (default 10) over 256 sessions. Prints appends per
# second, p99 and the ratio to the anchor, and appends the table to bench/results.md.
#   bench/postgres.sh [seconds]
set -euo pipefail
cd "$(dirname "$0")/.."
SECONDS_RUN=${1:-10}
CONNECTIONS=64
CARGO=${CARGO:-cargo}
# shellcheck source=../tests/support/sessiond.sh
source tests/support/sessiond.sh
# shellcheck source=../tests/support/postgres.sh
source tests/support/postgres.sh
command -v wrk >/dev/null || { echo "installing wrk (Debian package)…"; debian_install wrk; }
sessiond_build --release
WORK=$(mktemp -d)
PIDS=()
cleanup() {
    for pid in "${PIDS[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
    postgres_stop
    rm -rf "$WORK"
}
trap cleanup EXIT
postgres_start
psql_run() { "$POSTGRES_BIN/psql" -X -q -v ON_ERROR_STOP=1 "$@"; }

# The anchor: pgbench with a script doing the append in one transaction.
ANCHOR_DB=${POSTGRES_URL%/*}/anchor
psql_run "$POSTGRES_URL" -c 'CREATE DATABASE anchor'
psql_run "$ANCHOR_DB" <<'SQL'
CREATE TABLE s (id int PRIMARY KEY, message_count bigint NOT NULL, last_activity bigint NOT NULL);
CREATE TABLE m (sid int, seq bigint, content text NOT NULL, created_at bigint NOT NULL, PRIMARY KEY (sid, seq));
CREATE TABLE e (id bigserial PRIMARY KEY, sid int NOT NULL, kind text NOT NULL, at bigint NOT NULL);
INSERT INTO s SELECT g, 0, 0 FROM generate_series(1, 256) g;
SQL
cat >"$WORK/append.sql" <<'SQL'
\set sid random(1, 256)
BEGIN;
UPDATE s SET message_count = message_count + 1, last_activity = (extract(epoch FROM clock_timestamp()) * 1e6)::bigint WHERE id = :sid;
INSERT INTO m SELECT id, message_count, 'a benchmark message of ordinary length', last_activity FROM s WHERE id = :sid;
INSERT INTO e (sid, kind, at) VALUES (:sid, 'message', (extract(epoch FROM clock_timestamp()) * 1e6)::bigint);
END;
SQL
"$POSTGRES_BIN/pgbench" -n -c "$CONNECTIONS" -j 2 -T "$SECONDS_RUN" -r -f "$WORK/append.sql" \
    "$ANCHOR_DB" >"$WORK/pgbench.txt" 2>&1
ANCHOR=$(sed -n 's/^tps = \([0-9.]*\).*/\1/p' "$WORK/pgbench.txt" | head -n 1)
ANCHOR_MS=$(sed -n 's/^latency average = \([0-9.]*\) ms/\1/p' "$WORK/pgbench.txt" | head -n 1)
echo "pgbench anchor: $ANCHOR appends/s (latency average $ANCHOR_MS ms)"

# node DIR [FLAG…]: starts a node; its address is in SESSIOND_ADDR.
node() {
    local dir=$1
    shift
    mkdir -p "$dir"
    sessiond_start "$dir" "$@"
    PIDS+=("$SESSIOND_PID")
}

# sessions ADDR: makes 256 sessions; prints their ids.
sessions() {
    for _ in $(seq 256); do
        curl -sf -X POST "http://$1/api/messaging/sessions" -H 'Content-Type: application/json' \
            -d '{"agentId":"67e55044-10b1-426f-9247-bb680e5fe0c8","userId":"0b8e6ad8-5e9a-4b0c-9f0e-3d2f1c7a8b90"}' |
            python3 -c 'import json,sys; print(json.load(sys.stdin)["sessionId"])'
    done
}

# load NAME ADDR…: appends through the addresses at once, the connections split among them;
# prints "appends/s p99_ms non2xx": the sum, the worst p99, the sum.
load() {
    local name=$1
    shift
    local share=$((CONNECTIONS / $#)) i=0 addr ids
    mapfile -t ids < <(sessions "$1")
    wrk_append_script "$WORK/$name.lua" "${ids[@]}"
    local loads=()
    for addr in "$@"; do
        wrk -t2 -c"$share" -d"${SECONDS_RUN}s" --latency -s "$WORK/$name.lua" "http://$addr/" \
            >"$WORK/$name.$i.txt" &
        loads+=("$!")
        i=$((i + 1))
    done
    wait "${loads[@]}"
    python3 - "$WORK/$name".*.txt <<'PY'
import sys
sys.path.insert(0, "bench")
import wrk_report
reports = [wrk_report.read(path) for path in sys.argv[1:]]
print(f"{sum(r['rps'] for r in reports):.0f} {max(r['p99'] for r in reports):.2f} "
      f"{sum(r['non2xx'] for r in reports)}")
PY
}

database() {
    psql_run "$POSTGRES_URL" -c "CREATE DATABASE $1"
    echo "${POSTGRES_URL%/*}/$1"
}

node "$WORK/one" --store "$(database one_node)"
ONE=$(load one "$SESSIOND_ADDR")
echo "sessiond on PostgreSQL, one node: $ONE"

TWO_DB=$(database two_nodes)
node "$WORK/two_a" --store "$TWO_DB"
FIRST=$SESSIOND_ADDR
node "$WORK/two_b" --store "$TWO_DB"
TWO=$(load two "$FIRST" "$SESSIOND_ADDR")
echo "sessiond on PostgreSQL, two nodes: $TWO"

node "$WORK/sled"
SLED=$(load sled "$SESSIOND_ADDR")
echo "sessiond on sled: $SLED"

{
    echo
    echo "## $(date -u '+%Y-%m-%d %H:%M UTC') — durable appends on PostgreSQL $("$POSTGRES_BIN/postgres" --version | awk '{print $3}') beside pgbench, $(nproc) cores, $CONNECTIONS connections × ${SECONDS_RUN} s, same machine"
    echo
    python3 - "$ANCHOR" "$ONE" "$TWO" "$SLED" <<'PY'
import sys
anchor = float(sys.argv[1])
rows = [("sessiond on PostgreSQL, one node", sys.argv[2]), ("sessiond on PostgreSQL, two nodes", sys.argv[3]),
        ("sessiond on sled", sys.argv[4])]
print("| system | appends/s | p99 ms | × pgbench | non-2xx |")
print("|---|---:|---:|---:|---:|")
print(f"| pgbench: the append as one transaction, no HTTP | {anchor:.0f} | | 1.00 | |")
for name, line in rows:
    rps, p99, bad = line.split()
    print(f"| {name} | {float(rps):.0f} | {float(p99):.2f} | {float(rps) / anchor:.2f} | {bad} |")
PY
} | tee -a bench/results.md
