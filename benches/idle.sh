#!/usr/bin/env bash
# The idle-strategy sweep: what spinning before parking buys and what it
# costs, for choosing echo-node's (and the runtime's) default.
#
# For each strategy in $STRATEGIES (echo-node `--idle` values) and tokio-echo
# as the reference, server pinned to $SERVER_CORE, loadgen to $LOADGEN_CORE,
# rounds interleaved ($REPEAT), medians printed:
#   pp        ping-pong, 1 connection x 64 B, flat out: p50/p99 round trip;
#   pp@RATE   ping-pong at $RATE round trips/s: p50/p99 and the server's CPU
#             (share of one core) at that steady, low rate;
#   tp1k      throughput 64 conns x 16 in flight x 1 KiB: messages per
#             server CPU-second;
#   idle      the server's CPU (share of one core) over $IDLE_SECS s with one
#             connection open and no traffic.
#
# Usage: ./benches/idle.sh
# Environment: STRATEGIES ["park spin:10 spin:20 spin:50 spin:200 poll"],
#   REPEAT [3], DURATION [3] (tp1k), PP_DURATION [3], RATE [1000],
#   IDLE_SECS [3], WARMUP [1], SERVER_CORE [0], LOADGEN_CORE [1],
#   BASE_PORT [7700], NO_BUILD=1 (binaries must exist).
set -euo pipefail

cd "$(dirname "$0")/.."
# shellcheck source=benches/lib.sh
. benches/lib.sh

STRATEGIES=${STRATEGIES:-park spin:10 spin:20 spin:50 spin:200 poll}
REPEAT=${REPEAT:-3}
DURATION=${DURATION:-3}
PP_DURATION=${PP_DURATION:-3}
RATE=${RATE:-1000}
IDLE_SECS=${IDLE_SECS:-3}
WARMUP=${WARMUP:-1}
SERVER_CORE=${SERVER_CORE:-0}
LOADGEN_CORE=${LOADGEN_CORE:-1}
BASE_PORT=${BASE_PORT:-7700}

die() {
    echo "idle.sh: $*" >&2
    exit 1
}

if [ "${NO_BUILD:-0}" != 1 ]; then
    cargo build --release -p ringwire-benches --bin loadgen --bin tokio-echo
    cargo build --release -p ringwire-examples --bin echo-node
fi
BIN=$(release_bin_dir)
WORK=$(mktemp -d "${TMPDIR:-/tmp}/ringwire-idle.XXXXXX")
SERVER_PID=""
cleanup() {
    stop_pid "$SERVER_PID" server
    rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# Server CPU time of $SERVER_PID in clock ticks (utime + stime).
cpu_ticks() { awk '{ print $14 + $15 }' "/proc/$SERVER_PID/stat"; }

wait_port() {
    local port=$1
    for _ in $(seq 100); do
        kill -0 "$SERVER_PID" 2>/dev/null || die "server exited before listening on $port"
        ss -Hltn "sport = :$port" 2>/dev/null | grep -q . && return 0
        sleep 0.1
    done
    die "nothing listens on port $port after 10 s"
}

loadgen() { # loadgen LABEL CASE ARGS...: one run, its RESULT line tagged with the case
    local label=$1 case=$2
    shift 2
    local out="$WORK/lg.out"
    taskset -c "$LOADGEN_CORE" "$BIN/loadgen" --core "$LOADGEN_CORE" --label "$label" \
        --server-pid "$SERVER_PID" --warmup "$WARMUP" "$@" >"$out" 2>&1 ||
        { cat "$out" >&2; die "loadgen failed against $label ($case)"; }
    grep '^RESULT ' "$out" | sed "s/^RESULT /RESULT case=$case /" >>"$WORK/results"
}

echo "== idle-strategy sweep on $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//'): server core $SERVER_CORE, loadgen core $LOADGEN_CORE, $REPEAT rounds"
: >"$WORK/results"
port=$BASE_PORT
for round in $(seq "$REPEAT"); do
    for s in $STRATEGIES tokio; do
        port=$((port + 1))
        if [ "$s" = tokio ]; then
            label=tokio
            cmd=("$BIN/tokio-echo" --cores 1 --listen "127.0.0.1:$port")
        else
            label="echo-node-$s"
            cmd=("$BIN/echo-node" --cores 1 --listen "127.0.0.1:$port" --idle "$s")
        fi
        echo "-- [$round/$REPEAT] $label"
        taskset -c "$SERVER_CORE" "${cmd[@]}" >"$WORK/server.log" 2>&1 &
        SERVER_PID=$!
        wait_port "$port"
        addr="127.0.0.1:$port"
        # idle: one connection open (so a connection's receive is armed), no traffic.
        exec 3<>"/dev/tcp/127.0.0.1/$port"
        sleep 0.5
        t0=$(cpu_ticks)
        sleep "$IDLE_SECS"
        t1=$(cpu_ticks)
        exec 3>&-
        hz=$(getconf CLK_TCK)
        echo "RESULT case=idle server=$label idle_core_share=$(awk -v a="$t0" -v b="$t1" -v hz="$hz" -v s="$IDLE_SECS" 'BEGIN { printf "%.4f", (b - a) / hz / s }')" >>"$WORK/results"
        loadgen "$label" pp --addr "$addr" --mode pingpong --duration "$PP_DURATION"
        loadgen "$label" rate --addr "$addr" --mode pingpong --rate "$RATE" --duration "$PP_DURATION"
        loadgen "$label" tp1k --addr "$addr" --mode throughput --duration "$DURATION"
        stop_pid "$SERVER_PID" "$label"
        SERVER_PID=""
    done
done

echo
echo "== medians of $REPEAT rounds; ratios against tokio in the same run"
awk -v order="$STRATEGIES" '
    function field(k,   i, kv) {
        for (i = 2; i <= NF; i++) { split($i, kv, "="); if (kv[1] == k) return kv[2] }
        return ""
    }
    function add(key, v) { if (v != "" && v != "na") vals[key, ++cnt[key]] = v }
    function median(key,   n, i, j, t, a) {
        n = cnt[key]
        if (n == 0) return ""
        for (i = 1; i <= n; i++) a[i] = vals[key, i]
        for (i = 2; i <= n; i++) { t = a[i]; for (j = i - 1; j >= 1 && a[j] + 0 > t + 0; j--) a[j + 1] = a[j]; a[j + 1] = t }
        return (n % 2) ? a[(n + 1) / 2] : (a[n / 2] + a[n / 2 + 1]) / 2
    }
    function ratio(a, b) { return (a != "" && b != "" && b + 0 > 0) ? sprintf("%.2fx", a / b) : "-" }
    function num(v, f) { return v == "" ? "-" : sprintf(f, v) }
    /^RESULT / {
        c = field("case"); s = field("server")
        if (c == "idle") add(s SUBSEP "idle", field("idle_core_share") * 100)
        if (c == "pp") { add(s SUBSEP "p50", field("p50_us")); add(s SUBSEP "p99", field("p99_us")) }
        if (c == "rate") {
            add(s SUBSEP "rp50", field("p50_us")); add(s SUBSEP "rp99", field("p99_us"))
            add(s SUBSEP "rcpu", 100 * field("server_cpu_s") / field("secs"))
        }
        if (c == "tp1k") add(s SUBSEP "eff", field("msgs_per_server_cpu_s"))
    }
    END {
        n = split(order " tokio", names, " ")
        tp = median("tokio" SUBSEP "p50"); te = median("tokio" SUBSEP "eff"); trp = median("tokio" SUBSEP "rp50")
        fmt = "%-20s | %8s | %8s | %9s | %9s | %9s | %9s | %9s | %12s | %8s | %9s\n"
        printf fmt, "server", "pp p50", "pp p99", "p50/tokio", "rate p50", "rate p99", "p50/tokio", "rate CPU", "tp1k msg/CPUs", "x tokio", "idle CPU"
        printf fmt, "--------------------", "--------", "--------", "---------", "---------", "---------", "---------", "---------", "------------", "--------", "---------"
        for (i = 1; i <= n; i++) {
            s = names[i]; if (s != "tokio") s = "echo-node-" s
            p50 = median(s SUBSEP "p50"); rp50 = median(s SUBSEP "rp50"); e = median(s SUBSEP "eff")
            printf fmt, s, num(p50, "%.1fus"), num(median(s SUBSEP "p99"), "%.1fus"), ratio(p50, tp), \
                num(rp50, "%.1fus"), num(median(s SUBSEP "rp99"), "%.1fus"), ratio(rp50, trp), \
                num(median(s SUBSEP "rcpu"), "%.1f%%"), num(e, "%.0f"), ratio(e, te), num(median(s SUBSEP "idle"), "%.2f%%")
        }
    }
' "$WORK/results"
echo "pp: ping-pong flat out; rate: ping-pong at $RATE round trips/s (CPU = server share of one core);"
echo "tp1k: 64x16x1 KiB throughput, messages per server CPU-second; idle: server share of one core with"
echo "one idle connection open for $IDLE_SECS s."
echo
echo "raw RESULT lines:"
sed 's/^/  /' "$WORK/results"
