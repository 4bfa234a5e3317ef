#!/usr/bin/env bash
# qrelay beside Redis pub/sub and NATS core pub/sub, in one run on this machine: every case
# runs the same evenly paced load (`qrelay-cli bench` against the relay, `qrelay-cli
# peer-bench` against redis-server and nats-server), each server in its own process, one
# after the other. JSON reports go to $OUT/CASE.SYSTEM.json; a table is printed at the end;
# benches/plot.py draws the room-size cases from them.
#
#   benches/compare.sh [CASE ...]     # no CASE: every case
#   SYSTEMS="qrelay redis" benches/compare.sh size10 size100
#   SYSTEMS="qrelay qrelay-ack200 redis nats" benches/compare.sh size100   # qrelay-ackN: the
#             relay with `ack_delay_ms = N` put in front of its config, reported as its own system
#
# Cases (one sender, 64-byte messages, 10 s):
#   fan100    1 -> 100 receivers, 5,000 msg/s (500,000 deliveries/s)
#   fan1000   1 -> 1,000, 100 msg/s (100,000 deliveries/s)
#   fan10000  1 -> 10,000, 5 msg/s (50,000 deliveries/s)
#   size10 size100 size1000 size10000: a room of N receivers at 10 msg/s, the default
#             broadcast limit of a room (one delivery per packet): how cost grows with the room
#   1to1      1 -> 1, 5,000 msg/s
#
# Environment: OUT (reports, /tmp/qrelay-compare), CERTS (the relay's development certificates,
# /tmp/qrelay-bench/certs), SYSTEMS ("qrelay redis nats"), PACING (even or tick), RELAY and
# TOOL (other binaries, e.g. a before/after pair of relays with the same tool; by default those
# of $CARGO_TARGET_DIR, else ./target), RELAY_CONFIG
# (the relay's config file, benches/relay-bench.toml: a copy with one setting changed compares
# settings with the same binary), QRELAY_PORT,
# REDIS_PORT, NATS_PORT (27433, 26379, 24222: below Linux's ephemeral range, so an outgoing
# connection never holds them).
# Needs a release build (cargo build --release --workspace); installs redis-server and
# nats-server with apt-get when SYSTEMS names them and they are missing.
set -euo pipefail
cd "$(dirname "$0")/.."
if [[ ${1:-} == -h || ${1:-} == --help ]]; then
    sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'
    exit 0
fi

OUT=${OUT:-/tmp/qrelay-compare}
CERTS=${CERTS:-/tmp/qrelay-bench/certs}
SYSTEMS=${SYSTEMS:-"qrelay redis nats"}
PACING=${PACING:-even}
RELAY=${RELAY:-${CARGO_TARGET_DIR:-./target}/release/qrelay}
TOOL=${TOOL:-${CARGO_TARGET_DIR:-./target}/release/qrelay-cli}
RELAY_CONFIG=${RELAY_CONFIG:-benches/relay-bench.toml}
QRELAY_PORT=${QRELAY_PORT:-27433} REDIS_PORT=${REDIS_PORT:-26379} NATS_PORT=${NATS_PORT:-24222}
mkdir -p "$OUT"
for bin in "$RELAY" "$TOOL"; do
    [[ -x $bin ]] || { echo "missing $bin: run cargo build --release --workspace" >&2; exit 1; }
done
missing=()
[[ " $SYSTEMS " == *" redis "* ]] && ! command -v redis-server >/dev/null && missing+=(redis-server)
[[ " $SYSTEMS " == *" nats "* ]] && ! command -v nats-server >/dev/null && missing+=(nats-server)
if ((${#missing[@]})); then
    echo "installing ${missing[*]}" >&2
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi
# 10,000 TCP or UDP sockets in the tool, as many in the server: raise the soft limit as far
# as allowed.
ulimit -n "$(ulimit -Hn)"
(( $(ulimit -n) > 10100 )) || echo "warning: only $(ulimit -n) open files allowed: the 10,000 cases will fail" >&2

declare -A CASES=(
    [fan100]="101 5000"
    [fan1000]="1001 100"
    [fan10000]="10001 5"
    [size10]="11 10"
    [size100]="101 10"
    [size1000]="1001 10"
    [size10000]="10001 10"
    [1to1]="2 5000"
)
ORDER=(1to1 fan100 fan1000 fan10000 size10 size100 size1000 size10000)
(($# > 0)) && ORDER=("$@")

server_pid=
stop_server() {
    if [[ -n $server_pid ]]; then
        kill "$server_pid" 2>/dev/null || true
        wait "$server_pid" 2>/dev/null || true
        server_pid=
    fi
}
trap stop_server EXIT

# `start SYSTEM LOG`: starts the server, sets server_pid, waits until it listens; fails (and
# stops it) if it does not.
start() {
    case $1 in
        qrelay | qrelay-ack*)
            local config=$RELAY_CONFIG
            if [[ $1 == qrelay-ack* ]]; then
                config=$OUT/relay-$1.toml
                { echo "ack_delay_ms = ${1#qrelay-ack}"; cat "$RELAY_CONFIG"; } >"$config"
            fi
            "$RELAY" serve --config "$config" --certs-dir "$CERTS" \
                --listen "127.0.0.1:$QRELAY_PORT" --no-http >"$2" 2>&1 &
            server_pid=$!
            for _ in $(seq 100); do grep -q "qrelay ready" "$2" && return; sleep 0.1; done ;;
        redis)
            redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --save '' --appendonly no \
                --maxclients 20000 >"$2" 2>&1 &
            server_pid=$!
            for _ in $(seq 100); do grep -q "Ready to accept" "$2" && return; sleep 0.1; done ;;
        nats)
            nats-server -a 127.0.0.1 -p "$NATS_PORT" >"$2" 2>&1 &
            server_pid=$!
            for _ in $(seq 100); do grep -q "Server is ready" "$2" && return; sleep 0.1; done ;;
    esac
    echo "   $1 did not start: see $2" >&2
    stop_server
    return 1
}

for case in "${ORDER[@]}"; do
    spec=${CASES[$case]:-}
    [[ -n $spec ]] || { echo "unknown case $case (known: ${!CASES[*]})" >&2; exit 2; }
    read -r connections rate <<<"$spec"
    common="--connections $connections --senders 1 --rate $rate --duration 10s --pacing $PACING"
    for system in $SYSTEMS; do
        log=$OUT/$case.$system.log
        rm -f "$OUT/$case.$system.json"
        start "$system" "$log" || continue
        echo "== $case $system ($(date -u +%FT%TZ), load average $(cut -d' ' -f1-3 /proc/loadavg))"
        case $system in
            qrelay | qrelay-ack*)
                args="--server 127.0.0.1:$QRELAY_PORT --ca $CERTS/ca.pem --secret $CERTS/token.secret bench --server-pid $server_pid $common --per-endpoint 10 --connect-parallel 20 --timeout 60 --json" ;;
            redis) args="peer-bench --system redis --url redis://127.0.0.1:$REDIS_PORT --server-pid $server_pid $common --json" ;;
            nats) args="peer-bench --system nats --url nats://127.0.0.1:$NATS_PORT --server-pid $server_pid $common --json" ;;
        esac
        echo "   $TOOL $args"
        # shellcheck disable=SC2086 # the arguments are words
        "$TOOL" $args 2>"$OUT/$case.$system.progress" >"$OUT/$case.$system.json" ||
            echo "   (the run reported a failure: see $OUT/$case.$system.json and .progress)"
        stop_server
    done
done
python3 benches/plot.py --table "$OUT" "${ORDER[@]}"
