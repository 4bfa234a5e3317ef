#!/usr/bin/env bash
# The load-tool runs behind BENCHMARKS.md, against a relay in its own process on this machine.
#
#   benches/suite.sh [CASE ...]      # no CASE: every case, about 6 minutes
#
# Cases: 1to1 1to100 1to1000 1to1000-1m barrage100 rooms10 rooms100 rooms1000 rooms10000
# idle10k.
# Each case starts `qrelay serve --config benches/relay-bench.toml` (no frequency limits, room
# for 10,000 connections from one address) on 127.0.0.1:$PORT, runs `qrelay-cli bench` with
# --server-pid, prints the report, and stops the relay. Reports are also kept in $OUT.
# Needs a release build: cargo build --release --workspace
set -euo pipefail
cd "$(dirname "$0")/.."

PORT=${PORT:-47433}
CERTS=${CERTS:-/tmp/qrelay-bench/certs}
OUT=${OUT:-/tmp/qrelay-bench/reports}
CONFIG=${CONFIG:-benches/relay-bench.toml}
RELAY=./target/release/qrelay
TOOL=./target/release/qrelay-cli
mkdir -p "$OUT"
for bin in "$RELAY" "$TOOL"; do
    [[ -x $bin ]] || { echo "missing $bin: run cargo build --release --workspace" >&2; exit 1; }
done

# The bench arguments of each case.
declare -A CASES=(
    [1to1]="--connections 2 --senders 1 --rate 5000 --duration 10s"
    [1to100]="--connections 101 --senders 1 --rate 5000 --duration 10s --per-endpoint 10"
    [1to1000]="--connections 1001 --senders 1 --rate 500 --duration 10s --per-endpoint 10 --connect-parallel 10"
    [1to1000-1m]="--connections 1001 --senders 1 --rate 1000 --duration 10s --per-endpoint 10 --connect-parallel 10"
    [barrage100]="--connections 101 --senders 1 --rate 5000 --duration 10s --per-endpoint 10 --kind barrage"
    [rooms10]="--connections 11 --senders 1 --rate 5000 --duration 10s --per-endpoint 10"
    [rooms100]="--connections 101 --senders 1 --rate 500 --duration 10s --per-endpoint 10"
    [rooms1000]="--connections 1001 --senders 1 --rate 50 --duration 10s --per-endpoint 10 --connect-parallel 10"
    [rooms10000]="--connections 10001 --senders 1 --rate 5 --duration 10s --per-endpoint 10 --connect-parallel 20 --timeout 60"
    [idle10k]="--connections 10000 --rooms 100 --senders 0 --duration 1s --connect-parallel 20 --timeout 60"
)
ORDER=(1to1 1to100 1to1000 1to1000-1m barrage100 rooms10 rooms100 rooms1000 rooms10000 idle10k)
(($# > 0)) && ORDER=("$@")

relay_pid=
stop_relay() {
    if [[ -n $relay_pid ]]; then
        kill "$relay_pid" 2>/dev/null || true
        wait "$relay_pid" 2>/dev/null || true
        relay_pid=
    fi
}
trap stop_relay EXIT

for case in "${ORDER[@]}"; do
    args=${CASES[$case]:-}
    [[ -n $args ]] || { echo "unknown case $case (known: ${!CASES[*]})" >&2; exit 2; }
    "$RELAY" serve --config "$CONFIG" --certs-dir "$CERTS" --listen "127.0.0.1:$PORT" \
        >"$OUT/$case.relay.log" 2>&1 &
    relay_pid=$!
    # The first start writes the certificates; wait until the relay listens.
    for _ in $(seq 50); do
        grep -q "relay listening" "$OUT/$case.relay.log" 2>/dev/null && break
        sleep 0.1
    done
    echo "== $case ($(date -u +%FT%TZ), load average $(cut -d' ' -f1-3 /proc/loadavg))"
    echo "   $TOOL --server 127.0.0.1:$PORT --ca $CERTS/ca.pem --secret $CERTS/token.secret bench --server-pid PID $args"
    # shellcheck disable=SC2086 # the case's arguments are words
    "$TOOL" --server "127.0.0.1:$PORT" --ca "$CERTS/ca.pem" --secret "$CERTS/token.secret" \
        bench --server-pid "$relay_pid" $args 2>"$OUT/$case.progress" | tee "$OUT/$case.txt" ||
        echo "   (the run reported a failure: see $OUT/$case.txt)"
    stop_relay
done
