#!/usr/bin/env bash
# Relays in a cluster through NATS JetStream, measured with `qrelay-cli bench --spread`: each
# case starts what it needs on loopback (a fresh nats-server with JetStream and its monitoring
# port, then 3 relays with --nats, or one relay without), runs the tool once, reads NATS's
# /varz and every process's CPU time (/proc/PID/task/*/schedstat) before and after, prints a
# summary line, and stops everything. JSON reports go to $OUT/CASE.N.json (N counts runs).
#
#   benches/cluster.sh [CASE ...]     # no CASE: every case, in this order
#   RELAY=/other/qrelay benches/cluster.sh single1 single1000
#
# Cases (one sender, 64-byte messages, evenly paced, relays with --limits benchmark):
#   single1     one relay without --nats: 1 -> 1, 100 msg/s, 10 s
#   node1       3-node cluster, sender and receiver on node A: 1 -> 1, 100 msg/s, 10 s
#   cross1      3-node cluster, sender on node A, receiver on node B: 1 -> 1, 100 msg/s, 10 s
#   fan10       3-node cluster, 1 -> 1,000 receivers spread over the 3 nodes, 10 msg/s, 20 s
#   fan100      the same at 100 msg/s, 20 s
#   fan3k       3-node cluster, 1 -> 3,000 receivers spread (1,000 per node), 10 msg/s, 20 s
#   single1000  one relay without --nats: 1 -> 1,000, 100 msg/s, 10 s (as compare.sh fan1000)
#   idle1000    3-node cluster, 1,001 connections spread, nobody sends, 20 s: the NATS traffic
#               of logins, member records, liveness and leaves, to subtract from fan10/fan100
#   entries1 entries3 entries6: a cluster of 1, 3 or 6 nodes, 1 -> 1 on node A, 500 msg/s,
#               10 s: NATS's CPU per log entry as the number of nodes (consumers) grows (run
#               them with BASELINE=5 to subtract the idle cluster's CPU)
#
# Summary line: the tool's p50/p99, deliveries/s, lost; per node its receivers, CPU seconds
# and CPU per delivery; NATS CPU; /varz deltas (in_msgs, out_msgs, in_bytes, out_bytes) and
# those per broadcast accepted.
#
# Environment: OUT (/tmp/qrelay-cluster), CERTS (/tmp/qrelay-bench/certs: a relay writes its
# development certificates there if missing), RELAY and TOOL (./target/release/...), NATS
# (/usr/sbin/nats-server), BASE_PORT (28433: relays on BASE_PORT..+2, NATS on BASE_PORT+10,
# its monitoring on BASE_PORT+11), BASELINE (seconds, 0: with the relays up and before any
# client, measure every process's idle CPU for this long and print it per second).
set -euo pipefail
cd "$(dirname "$0")/.."

OUT=${OUT:-/tmp/qrelay-cluster}
CERTS=${CERTS:-/tmp/qrelay-bench/certs}
RELAY=${RELAY:-./target/release/qrelay}
TOOL=${TOOL:-./target/release/qrelay-cli}
NATS=${NATS:-/usr/sbin/nats-server}
BASE_PORT=${BASE_PORT:-28433}
NATS_PORT=$((BASE_PORT + 10)) MON_PORT=$((BASE_PORT + 11))
if [[ ${1:-} == -h || ${1:-} == --help ]]; then
    sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'
    exit 0
fi
mkdir -p "$OUT"
for bin in "$RELAY" "$TOOL" "$NATS"; do
    [[ -x $bin ]] || { echo "missing $bin (cargo build --release --workspace --bins)" >&2; exit 1; }
done
ulimit -n "$(ulimit -Hn)"
# Relays since the demo page have a web listener (TCP 8080 by default): none here.
no_web=()
"$RELAY" serve --help | grep -q -- --no-web && no_web=(--no-web)

# CASE: nodes (0: one relay without NATS), connections, senders, rate, duration, spread over
# how many nodes (1: every connection on node A).
declare -A CASES=(
    [single1]="0 2 1 100 10s 1"
    [node1]="3 2 1 100 10s 1"
    [cross1]="3 2 1 100 10s 2"
    [fan10]="3 1001 1 10 20s 3"
    [fan100]="3 1001 1 100 20s 3"
    [fan3k]="3 3001 1 10 20s 3"
    [single1000]="0 1001 1 100 10s 1"
    [idle1000]="3 1001 0 1 20s 3"
    [entries1]="1 2 1 500 10s 1"
    [entries3]="3 2 1 500 10s 1"
    [entries6]="6 2 1 500 10s 1"
)
ORDER=(single1 node1 cross1 fan10 fan100 single1000 idle1000)
BASELINE=${BASELINE:-0}
(($# > 0)) && ORDER=("$@")

pids=()
nats_pid=
stop_all() {
    for pid in "${pids[@]}" $nats_pid; do kill "$pid" 2>/dev/null || true; done
    for pid in "${pids[@]}" $nats_pid; do wait "$pid" 2>/dev/null || true; done
    pids=() nats_pid=
}
trap stop_all EXIT

# CPU time of a process so far, nanoseconds (every thread's schedstat).
cpu_ns() {
    cat /proc/"$1"/task/*/schedstat 2>/dev/null | awk '{s += $1} END {printf "%.0f", s}'
}
varz() {
    curl -s "http://127.0.0.1:$MON_PORT/varz" |
        python3 -c 'import json,sys; v=json.load(sys.stdin); print(v["in_msgs"], v["out_msgs"], v["in_bytes"], v["out_bytes"])'
}
wait_for() { # FILE PATTERN: up to 20 s
    for _ in $(seq 200); do grep -q "$2" "$1" 2>/dev/null && return; sleep 0.1; done
    echo "   '$2' never appeared in $1" >&2
    return 1
}

# `start_relays NODES LOG_PREFIX`: NATS and NODES relays (one relay without NATS for 0).
start_relays() {
    local nodes=$1 prefix=$2
    local nats_args=()
    if ((nodes > 0)); then
        local store
        store=$(mktemp -d "$OUT/js.XXXX")
        "$NATS" -js -a 127.0.0.1 -p "$NATS_PORT" -sd "$store" -m "$MON_PORT" >"$prefix.nats.log" 2>&1 &
        nats_pid=$!
        wait_for "$prefix.nats.log" "Server is ready"
    fi
    local count=$((nodes > 0 ? nodes : 1))
    for ((i = 0; i < count; i++)); do
        if ((nodes > 0)); then nats_args=(--nats "nats://127.0.0.1:$NATS_PORT" --node "n$i"); fi
        "$RELAY" serve --config benches/relay-bench.toml --limits benchmark --certs-dir "$CERTS" \
            --listen "127.0.0.1:$((BASE_PORT + i))" --no-http "${no_web[@]}" "${nats_args[@]}" >"$prefix.relay$i.log" 2>&1 &
        pids+=($!)
    done
    for ((i = 0; i < count; i++)); do
        wait_for "$prefix.relay$i.log" "qrelay ready"
        if ((nodes > 0)); then wait_for "$prefix.relay$i.log" "caught up with the cluster"; fi
    done
}

for case in "${ORDER[@]}"; do
    spec=${CASES[$case]:-}
    [[ -n $spec ]] || { echo "unknown case $case (known: ${!CASES[*]})" >&2; exit 2; }
    read -r nodes connections senders rate duration spread <<<"$spec"
    n=1
    while [[ -e $OUT/$case.$n.json ]]; do n=$((n + 1)); done
    prefix=$OUT/$case.$n
    start_relays "$nodes" "$prefix"
    servers=() server_pids=()
    for ((i = 0; i < spread; i++)); do servers+=("127.0.0.1:$((BASE_PORT + i))"); server_pids+=("${pids[i]}"); done
    spread_arg=
    if ((spread > 1)); then spread_arg=--spread; fi
    args="--server $(IFS=,; echo "${servers[*]}") --ca $CERTS/ca.pem --secret $CERTS/token.secret bench $spread_arg --server-pid $(IFS=,; echo "${server_pids[*]}") --connections $connections --senders $senders --rate $rate --duration $duration --per-endpoint 10 --connect-parallel 20 --timeout 60 --json"
    echo "== $case run $n ($(date -u +%FT%TZ), load average $(cut -d' ' -f1-3 /proc/loadavg)), nodes $nodes"
    echo "   $TOOL $args"
    # Every relay's and NATS's CPU, and /varz, around the whole tool run (connect included);
    # the tool's own per-node figures cover the traffic window only.
    all=("${pids[@]}" $nats_pid)
    before=() after=()
    if ((BASELINE > 0)); then
        for pid in "${all[@]}"; do before+=("$(cpu_ns "$pid")"); done
        sleep "$BASELINE"
        idle=
        for ((i = 0; i < ${#all[@]}; i++)); do
            name=relay$i
            if [[ ${all[i]} == "$nats_pid" ]]; then name=nats; fi
            idle+="$name $(awk -v a="${before[i]}" -v b="$(cpu_ns "${all[i]}")" -v t="$BASELINE" 'BEGIN {printf "%.1f", (b - a) / 1e6 / t}') ms/s; "
        done
        echo "   idle CPU before the run: $idle"
        before=()
    fi
    for pid in "${all[@]}"; do before+=("$(cpu_ns "$pid")"); done
    v0=$( ((nodes > 0)) && varz || echo "0 0 0 0")
    # shellcheck disable=SC2086 # the arguments are words
    "$TOOL" $args 2>"$prefix.progress" >"$prefix.json" ||
        echo "   (the run reported a failure: see $prefix.json and .progress)"
    v1=$( ((nodes > 0)) && varz || echo "0 0 0 0")
    for pid in "${all[@]}"; do after+=("$(cpu_ns "$pid")"); done
    whole=
    for ((i = 0; i < ${#all[@]}; i++)); do
        name=relay$i
        if [[ ${all[i]} == "$nats_pid" ]]; then name=nats; fi
        whole+="$name $(awk -v a="${before[i]}" -v b="${after[i]}" 'BEGIN {printf "%.2f", (b - a) / 1e9}') s; "
    done
    python3 - "$prefix.json" "$v0" "$v1" "$whole" <<'EOF'
import json, sys
r = json.load(open(sys.argv[1]))
v0, v1 = [list(map(int, v.split())) for v in sys.argv[2:4]]
k = next(k for k in r["kinds"] if k["kind"] == "broadcast")
if not k["latency"]["p50_us"]: k["latency"] = dict(p50_us=0, p99_us=0)
l = k["latency"]
print(f"   broadcast p50 {l['p50_us']/1e3:.2f} ms p99 {l['p99_us']/1e3:.2f} ms, "
      f"{k['delivery']['delivered']}/{k['delivery']['expected']} delivered, "
      f"{k['deliveries_per_sec']:.0f}/s, lost {k['lost']}, accepted {k['accepted']}, "
      f"late sends {r['late_sends']}, tool cpu {r['client_cpu_seconds'] or 0:.2f} s")
for n in r["nodes"]:
    cpu = "n/a" if n["cpu_seconds"] is None else f"{n['cpu_seconds']:.2f} s"
    per = "n/a" if n["cpu_per_delivery_us"] is None else f"{n['cpu_per_delivery_us']:.2f} us"
    print(f"   node {n['server']}: {n['senders']} senders, {n['receivers']} receivers, "
          f"{n['deliveries']} deliveries, cpu {cpu} ({per} per delivery)")
s = r["server"]
if s["cpu_seconds"] is not None:
    per = "n/a" if s["cpu_per_delivery_us"] is None else f"{s['cpu_per_delivery_us']:.2f} us"
    print(f"   relays together (traffic window): cpu {s['cpu_seconds']:.2f} s, {per} per delivery")
print(f"   whole run (connect + traffic): {sys.argv[4]}")
if v1[0] or v1[1]:
    d = [b - a for a, b in zip(v0, v1)]
    n = max(k["accepted"], 1)
    print(f"   nats /varz delta: in_msgs {d[0]} out_msgs {d[1]} in_bytes {d[2]} out_bytes {d[3]}; "
          f"per broadcast: {d[0]/n:.2f} in msgs, {d[1]/n:.2f} out msgs, "
          f"{d[2]/n:.0f} in bytes, {d[3]/n:.0f} out bytes")
EOF
    stop_all
done
