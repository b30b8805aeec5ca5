#!/usr/bin/env bash
# Per-message cost accounting of the echo servers: where a server spends more
# than the floor (floor-echo, the hand-written io_uring loop with no runtime).
#
# For each server, two runs, each with the server pinned to core $SERVER_CORE
# (`--cores 1`) and loadgen on core $LOADGEN_CORE in throughput mode
# ($CONNS conns x $DEPTH in flight x $SIZE B, no warm-up, so loadgen counts
# every message of the run):
#
# 1. under `valgrind --tool=callgrind` for $CG_DURATION s: user-space
#    instructions per message = Ir / messages loadgen counted in that run
#    (valgrind slows the server, so a count, never a rate). The counters are
#    zeroed when the port is open and dumped when loadgen is done
#    (`callgrind_control -z` / `-d`), so start-up and shutdown are left out.
#    The dump is kept in $OUT for `callgrind_annotate`, and the top
#    $TOP functions are printed with their Ir per message.
# 2. natively for $NATIVE_DURATION s, with `--stats` for echo-node and floor:
#    the server's own counters per message (SQEs, CQEs, loop turns, parks or
#    io_uring_enter calls), divided by the messages the server echoed
#    (bytes_sent_total / frame size); and, when perf is installed, `perf stat`
#    (server CPU time and syscalls per message, loadgen's count) and
#    `perf record -e cpu-clock -g` (top $TOP symbols of the server).
#
# Instruction counts are repeatable whatever the machine's load; CPU time and
# profile shares are not: read them as ratios within one run.
#
# Usage: ./benches/costs.sh [SERVER ...]     (default: floor echo-node tokio)
#   servers: floor, floor-copy (--gather copy), floor-nobatch (--wait-batch
#   off), floor-spin (--spin 20), echo-node (park, the default),
#   echo-node-poll, echo-node-spin (--idle spin:20), echo-node-nobatch, tokio
#
# Environment (defaults in brackets):
#   CG_DURATION [5]   NATIVE_DURATION [5]   SIZE [1024]   CONNS [64]
#   DEPTH [16]   WIRE [lenprefix]   TOP [15]   SERVER_CORE [0]
#   LOADGEN_CORE [1]   BASE_PORT [7500]
#   FLOOR_ARGS    extra floor-echo flags, e.g. "--recv-buffers 64" []
#   NODE_ARGS     extra echo-node flags, e.g. "--wait-batch off" []
#   OUT           where callgrind dumps and perf data are kept
#                 [target/costs]
#   PERF=0        skip perf (it is used when installed)
#   CALLGRIND=0   skip the callgrind run
#   NO_BUILD=1    skip `cargo build` (binaries must already be built)
set -euo pipefail

cd "$(dirname "$0")/.."
# shellcheck source=benches/lib.sh
. benches/lib.sh

CG_DURATION=${CG_DURATION:-5}
NATIVE_DURATION=${NATIVE_DURATION:-5}
SIZE=${SIZE:-1024}
CONNS=${CONNS:-64}
DEPTH=${DEPTH:-16}
WIRE=${WIRE:-lenprefix}
TOP=${TOP:-15}
SERVER_CORE=${SERVER_CORE:-0}
LOADGEN_CORE=${LOADGEN_CORE:-1}
BASE_PORT=${BASE_PORT:-7500}
OUT=${OUT:-target/costs}
CALLGRIND=${CALLGRIND:-1}
if [ -z "${PERF:-}" ]; then
    if command -v perf >/dev/null 2>&1; then PERF=1; else PERF=0; fi
fi

die() {
    echo "costs.sh: $*" >&2
    exit 1
}

LIST=("$@")
[ "${#LIST[@]}" -gt 0 ] || LIST=(floor echo-node tokio)
for s in "${LIST[@]}"; do
    case "$s" in
        floor | floor-copy | floor-nobatch | floor-spin | echo-node | echo-node-poll | echo-node-spin | echo-node-nobatch | tokio) ;;
        *) die "unknown server '$s' (known: floor floor-copy floor-nobatch floor-spin echo-node echo-node-poll echo-node-spin echo-node-nobatch tokio)" ;;
    esac
done
if [ "$CALLGRIND" = 1 ]; then
    command -v valgrind >/dev/null 2>&1 || die "valgrind is not installed (apt-get install valgrind), or set CALLGRIND=0"
    command -v callgrind_control >/dev/null 2>&1 || die "callgrind_control is missing (it comes with valgrind)"
fi
if [ "$(nproc)" -lt 2 ] && [ "$LOADGEN_CORE" = 1 ]; then
    echo "costs.sh: only one core; the load generator shares core 0 with the server" >&2
    LOADGEN_CORE=0
fi
case "$WIRE" in
    lenprefix) FRAME=$((SIZE + 4)) ;;
    raw) FRAME=$SIZE ;;
    *) die "WIRE must be lenprefix or raw" ;;
esac

if [ "${NO_BUILD:-0}" != 1 ]; then
    echo "== building (release)"
    cargo build --release -p ringwire-benches --bin loadgen --bin tokio-echo --bin floor-echo
    cargo build --release -p ringwire-examples --bin echo-node
fi
BIN=$(release_bin_dir)
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)

WORK=$(mktemp -d "${TMPDIR:-/tmp}/ringwire-costs.XXXXXX")
SERVER_PID=""
HELPER_PIDS=()

cleanup() {
    local p
    for p in "${HELPER_PIDS[@]}"; do
        stop_pid "$p" "costs.sh: helper"
    done
    stop_pid "$SERVER_PID" "costs.sh: server"
    rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# server_cmd NAME PORT STATS: the server's command line.
server_cmd() {
    local name=$1 port=$2 stats=$3
    local common=(--cores 1 --listen "127.0.0.1:$port" --wire "$WIRE")
    local floor="$BIN/floor-echo ${common[*]} ${FLOOR_ARGS:-} $stats"
    local node="$BIN/echo-node ${common[*]} ${NODE_ARGS:-} $stats"
    case "$name" in
        floor) echo "$floor" ;;
        floor-copy) echo "$floor --gather copy" ;;
        floor-nobatch) echo "$floor --wait-batch off" ;;
        floor-spin) echo "$floor --spin 20" ;;
        echo-node) echo "$node --idle park" ;;
        echo-node-poll) echo "$node --idle poll" ;;
        echo-node-spin) echo "$node --idle spin:20" ;;
        echo-node-nobatch) echo "$node --idle park --wait-batch off" ;;
        tokio) echo "$BIN/tokio-echo ${common[*]}" ;;
    esac
}

# stats_flag NAME: the flag that makes the server print its counters.
stats_flag() {
    case "$1" in
        floor* | echo-node*) echo "--stats" ;;
        *) echo "" ;;
    esac
}

# listening PORT: whether something listens on PORT.
listening() {
    ss -Hltn "sport = :$1" 2>/dev/null | grep -q .
}

# wait_port PORT LOG SECONDS: waits until something listens on PORT.
wait_port() {
    local port=$1 log=$2 secs=$3
    for _ in $(seq $((secs * 10))); do
        kill -0 "$SERVER_PID" 2>/dev/null || {
            cat "$log" >&2
            die "server exited before listening on port $port"
        }
        listening "$port" && return 0
        sleep 0.1
    done
    cat "$log" >&2
    die "nothing listens on port $port after $secs s"
}

# start_callgrind NAME PORT DUMP LOG: starts NAME under callgrind and waits for
# its port. valgrind 3.19 keeps its big lock while a thread blocks in
# io_uring_enter, so a runtime whose core parks before its main thread has
# handed it the listener never opens the port; such a start is retried.
start_callgrind() {
    local name=$1 port=$2 dump=$3 log=$4 try
    for try in 1 2 3; do
        # shellcheck disable=SC2046 # word splitting of the command is intended
        taskset -c "$SERVER_CORE" valgrind --tool=callgrind --callgrind-out-file="$dump" \
            $(server_cmd "$name" "$port" "") >"$log" 2>&1 &
        SERVER_PID=$!
        for _ in $(seq 600); do
            kill -0 "$SERVER_PID" 2>/dev/null || {
                cat "$log" >&2
                die "$name exited under valgrind before listening on port $port"
            }
            listening "$port" && return 0
            sleep 0.1
        done
        echo "   $name did not open its port under valgrind in 60 s (attempt $try); restarting it" >&2
        stop_pid "$SERVER_PID" "costs.sh: $name under valgrind" 2>/dev/null
        SERVER_PID=""
        rm -f "$dump" "$dump".*
    done
    die "$name never opened its port under valgrind (see $log)"
}

# loadgen PORT SECONDS OUTFILE: one throughput run without warm-up.
loadgen() {
    local port=$1 secs=$2 out=$3
    if ! taskset -c "$LOADGEN_CORE" "$BIN/loadgen" --core "$LOADGEN_CORE" --label costs \
        --server-pid "$SERVER_PID" --wire "$WIRE" --mode throughput --warmup 0 \
        --addr "127.0.0.1:$port" --conns "$CONNS" --depth "$DEPTH" --size "$SIZE" \
        --duration "$secs" --stall-timeout 30s >"$out" 2>&1; then
        cat "$out" >&2
        die "loadgen failed"
    fi
    result_field msgs <"$out"
}

# result_field KEY < loadgen output: a field of the RESULT line.
result_field() {
    grep '^RESULT ' | tr ' ' '\n' | awk -F= -v k="$1" '$1 == k { print $2 }'
}

# counter FILE NAME: a counter summed over cores from Prometheus text.
counter() {
    awk -v n="$2" '$1 ~ "^[a-z]+_" n "[{]" { s += $2; found = 1 } END { if (found) print s; else print "" }' "$1"
}

# self_costs DUMP: "Ir function" per function, largest first, from a callgrind
# dump: every cost line counts for the function (fn=) it appears under, except
# the cost of a call (the line after calls=), which is the callee's. Inlined
# code counts for the function it was inlined into, whatever its source file
# (callgrind_annotate splits those by file, and 3.19 misattributes the costs of
# calls in progress at a mid-run dump).
self_costs() {
    awk '
        function id(s,   key, rest) {
            if (match(s, /^\([0-9]+\)/)) {
                key = substr(s, RSTART, RLENGTH); rest = substr(s, RLENGTH + 2)
                if (rest != "") names[key] = rest
                return key
            }
            return s
        }
        /^fn=/ { cur = id(substr($0, 4)); next }
        /^cfn=/ { id(substr($0, 5)); next }
        /^calls=/ { call = 1; next }
        /^[0-9+*-]/ { if (call) { call = 0; next } cost[cur] += $NF; next }
        END { for (k in cost) printf "%d %s\n", cost[k], (k in names ? names[k] : k) }
    ' "$1" | sort -rn
}

# per MSGS VALUE [FORMAT]: VALUE / MSGS, or "-" when either is missing.
per() {
    awk -v m="$1" -v v="$2" -v f="${3:-%.3f}" 'BEGIN { if (m == "" || v == "" || m + 0 == 0) print "-"; else printf f "\n", v / m }'
}

port=$BASE_PORT
declare -A IR MSGS_CG CPU_NS SWITCHES SYSCALLS ENTERS EPOLLS SQES CQES TURNS PARKS

for name in "${LIST[@]}"; do
    echo
    echo "################ $name"

    # --- 1. callgrind: user-space instructions per message.
    if [ "$CALLGRIND" = 1 ]; then
        port=$((port + 1))
        log="$WORK/$name.cg.log"
        cg="$OUT/callgrind.$name.out"
        rm -f "$cg" "$cg".*
        echo "== callgrind: $name on core $SERVER_CORE, ${CONNS}x${DEPTH}x${SIZE} B for ${CG_DURATION} s"
        start_callgrind "$name" "$port" "$cg" "$log"
        callgrind_control -z "$SERVER_PID" >/dev/null
        msgs=$(loadgen "$port" "$CG_DURATION" "$WORK/$name.cg.loadgen")
        callgrind_control -d "$SERVER_PID" >/dev/null
        # valgrind 3.19 keeps its thread lock across a blocking
        # io_uring_enter, so a parked io_uring server may not get to run its
        # SIGTERM handler; the counts are dumped already, so stop_pid's
        # SIGKILL fallback is fine here.
        stop_pid "$SERVER_PID" "costs.sh: $name under valgrind" 2>/dev/null
        SERVER_PID=""
        # callgrind_control -d writes the first dump as FILE.1.
        dump="$cg.1"
        [ -s "$dump" ] || die "no callgrind dump for $name at $dump"
        ir=$(awk '/^summary:/ { print $2 }' "$dump")
        IR[$name]=$ir
        MSGS_CG[$name]=$msgs
        echo "   $msgs messages, $ir Ir: $(per "$msgs" "$ir" %.0f) Ir per message (dump: $dump)"
        echo "   top $TOP functions by own Ir, inlined code included (Ir per message, share, function):"
        self_costs "$dump" | head -n "$TOP" |
            awk -v m="$msgs" -v t="$ir" '{
                v = $1; $1 = ""; sub(/^ /, "")
                printf "   %9.1f %5.1f%%  %s\n", v / m, 100 * v / t, substr($0, 1, 110)
            }' || true # head closes the pipe early
    fi

    # --- 2. native: the server's counters, perf stat and perf record.
    port=$((port + 1))
    log="$WORK/$name.native.log"
    echo "== native: $name on core $SERVER_CORE, ${CONNS}x${DEPTH}x${SIZE} B for ${NATIVE_DURATION} s"
    # shellcheck disable=SC2046 # word splitting of the command is intended
    taskset -c "$SERVER_CORE" $(server_cmd "$name" "$port" "$(stats_flag "$name")") >"$log" 2>&1 &
    SERVER_PID=$!
    wait_port "$port" "$log" 10
    HELPER_PIDS=()
    if [ "$PERF" = 1 ]; then
        perf stat -x, -o "$WORK/$name.stat" -p "$SERVER_PID" \
            -e cpu-clock,context-switches,raw_syscalls:sys_enter,syscalls:sys_enter_io_uring_enter,syscalls:sys_enter_epoll_wait \
            >/dev/null 2>&1 &
        HELPER_PIDS+=($!)
        perf record -q -e cpu-clock -g -p "$SERVER_PID" -o "$OUT/perf.$name.data" \
            >"$WORK/$name.record.log" 2>&1 &
        HELPER_PIDS+=($!)
        sleep 0.5
    fi
    nmsgs=$(loadgen "$port" "$NATIVE_DURATION" "$WORK/$name.native.loadgen")
    for p in "${HELPER_PIDS[@]}"; do
        kill -INT "$p" 2>/dev/null || true
        wait "$p" 2>/dev/null || true
    done
    HELPER_PIDS=()
    stop_pid "$SERVER_PID" "costs.sh: $name"
    SERVER_PID=""
    grep '^RESULT ' "$WORK/$name.native.loadgen" | sed 's/^/   /'

    if [ "$PERF" = 1 ] && [ -s "$WORK/$name.stat" ]; then
        perfstat() { awk -F, -v e="$1" '$3 == e { print $1 }' "$WORK/$name.stat" | head -n 1; }
        cpu_ms=$(perfstat cpu-clock)
        CPU_NS[$name]=$(awk -v c="$cpu_ms" -v m="$nmsgs" 'BEGIN { if (c == "" || m + 0 == 0) print "-"; else printf "%.0f\n", c * 1e6 / m }')
        SYSCALLS[$name]=$(per "$nmsgs" "$(perfstat raw_syscalls:sys_enter)")
        SWITCHES[$name]=$(per "$nmsgs" "$(perfstat context-switches)" %.4f)
        ENTERS[$name]=$(per "$nmsgs" "$(perfstat syscalls:sys_enter_io_uring_enter)")
        EPOLLS[$name]=$(per "$nmsgs" "$(perfstat syscalls:sys_enter_epoll_wait)")
    fi

    # The server's counters, per message it echoed.
    smsgs=""
    case "$name" in
        floor* | echo-node*)
            sent=$(counter "$log" bytes_sent_total)
            [ -n "$sent" ] && smsgs=$((sent / FRAME))
            SQES[$name]=$(per "$smsgs" "$(counter "$log" ops_submitted_total)")
            CQES[$name]=$(per "$smsgs" "$(counter "$log" ops_completed_total)")
            TURNS[$name]=$(per "$smsgs" "$(counter "$log" loop_turns_total)")
            ;;
    esac
    case "$name" in
        echo-node*)
            PARKS[$name]=$(per "$smsgs" "$(counter "$log" parks_total)")
            ;;
        floor*)
            PARKS[$name]=$(per "$smsgs" "$(counter "$log" io_uring_enters_total)")
            ;;
    esac

    echo "   per message ($name):"
    printf "   %-34s %s\n" \
        "user-space Ir (callgrind)" "$(per "${MSGS_CG[$name]:-}" "${IR[$name]:-}" %.0f)" \
        "server CPU ns (perf cpu-clock)" "${CPU_NS[$name]:--}" \
        "context switches (perf)" "${SWITCHES[$name]:--}" \
        "syscalls (perf)" "${SYSCALLS[$name]:--}" \
        "io_uring_enter calls (perf)" "${ENTERS[$name]:--}" \
        "epoll_wait calls (perf)" "${EPOLLS[$name]:--}" \
        "SQEs (server counter)" "${SQES[$name]:--}" \
        "CQEs (server counter)" "${CQES[$name]:--}" \
        "loop turns (server counter)" "${TURNS[$name]:--}" \
        "parks / waiting enters (counter)" "${PARKS[$name]:--}"
    if [ -n "$smsgs" ]; then
        echo "   (counters over the server's life: $smsgs messages echoed; perf over loadgen's run: $nmsgs)"
        echo "   server counters:"
        grep -v '^#' "$log" | grep -E '_total\{' | awk '{ printf "     %s %s\n", $1, $2 }' | sed 's/{core="0",cpu="[0-9]*"}//'
    fi

    if [ "$PERF" = 1 ] && [ -s "$OUT/perf.$name.data" ]; then
        echo "   top $TOP symbols of the server (perf record -e cpu-clock, self time):"
        perf report -i "$OUT/perf.$name.data" --no-children --sort dso,sym -g none --stdio 2>/dev/null |
            grep -E '^ +[0-9.]+%' | head -n "$TOP" | sed 's/^/   /' || true
    fi
done

echo
echo "== per message, ${CONNS}x${DEPTH}x${SIZE} B $WIRE, server on core $SERVER_CORE (load average: $(cut -d' ' -f1-3 /proc/loadavg))"
fmt="%-17s | %8s | %8s | %8s | %8s | %8s | %8s | %8s | %8s | %8s | %8s\n"
# shellcheck disable=SC2059 # the format is ours
printf "$fmt" server "Ir" "x floor" "CPU ns" "switches" "syscalls" "enters" "SQEs" "CQEs" "turns" "parks"
# shellcheck disable=SC2059
printf "$fmt" "-----------------" "--------" "--------" "--------" "--------" "--------" "--------" "--------" "--------" "--------" "--------"
floor_ir=$(per "${MSGS_CG[floor]:-}" "${IR[floor]:-}" %.6f)
for name in "${LIST[@]}"; do
    ir=$(per "${MSGS_CG[$name]:-}" "${IR[$name]:-}" %.6f)
    x=$(awk -v a="$ir" -v b="$floor_ir" 'BEGIN { if (a == "-" || b == "-" || b + 0 == 0) print "-"; else printf "%.2fx\n", a / b }')
    [ "$ir" = - ] || ir=$(printf "%.0f" "$ir")
    # shellcheck disable=SC2059
    printf "$fmt" "$name" "$ir" "$x" "${CPU_NS[$name]:--}" "${SWITCHES[$name]:--}" "${SYSCALLS[$name]:--}" \
        "${ENTERS[$name]:--}" "${SQES[$name]:--}" "${CQES[$name]:--}" "${TURNS[$name]:--}" "${PARKS[$name]:--}"
done
echo "Ir: user-space instructions per message under callgrind (repeatable). CPU ns: server CPU"
echo "time per message from perf stat (load-dependent). switches: the server's context switches"
echo "(perf). syscalls, enters (io_uring_enter): perf tracepoints. SQEs, CQEs, turns: the server's own counters; parks: echo-node's parks_total,"
echo "floor's io_uring_enters_total. tokio has no such counters ('-')."
echo "callgrind dumps and perf data: $OUT (callgrind_annotate --inclusive=yes FILE, or"
echo "callgrind_annotate FILE SOURCE.rs for line-level costs; perf report -i FILE)"
