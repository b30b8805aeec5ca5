#!/usr/bin/env bash
# Echo server comparison: ringwire's echo-node against the floor (floor-echo,
# a hand-written io_uring echo loop with no runtime) and the tokio and glommio
# peer servers, on one server core.
#
# For each server: start it pinned to core $SERVER_CORE (`taskset -c
# $SERVER_CORE server --cores 1`: one core, the first CPU it may use), wait for
# its port, run the load generator pinned to core
# $LOADGEN_CORE in throughput mode ($CONNS conns x $DEPTH in flight x $SIZE B)
# and in ping-pong mode (1 conn, $PP_SIZE B), both with --server-pid, then stop
# the server by its PID. Every run uses a fresh port. With REPEAT > 1 the
# servers are run in interleaved rounds and the table shows medians.
#
# Usage: ./benches/compare.sh
#        SERVERS="tokio glommio" DURATION=3 ./benches/compare.sh
#
# Environment (defaults in brackets):
#   SERVERS       servers to run [floor echo-node-park tokio glommio];
#                 also echo-node-poll (never blocks), echo-node-single (park,
#                 one single-shot RECV per arrival instead of multishot: the
#                 receive-path A/B), echo-node-nobatch (park, waking on the
#                 first completion), echo-node-spin (--idle spin:20),
#                 floor-copy (floor, copying a send that spans buffers instead
#                 of one SENDMSG), floor-nobatch (floor, waking on the first
#                 completion) and floor-spin (floor, polling 20 us before it
#                 blocks); `echo-node` stands for echo-node-park and
#                 echo-node-poll
#                 The table gives every server's ratios to tokio and to the
#                 floor (when `floor` ran).
#   DURATION      measured seconds per throughput run [5]
#   PP_DURATION   measured seconds per ping-pong run [$DURATION]
#   WARMUP        warm-up seconds before each run [1]
#   SIZE          throughput payload bytes [1024]
#   CONNS         throughput connections [64]
#   DEPTH         throughput messages in flight per connection [16]
#   PP_SIZE       ping-pong payload bytes [64]
#   WIRE          lenprefix or raw [lenprefix]
#   REPEAT        rounds over all servers [1]
#   SERVER_CORE   [0]   LOADGEN_CORE [1]   BASE_PORT [7400]
#   NO_BUILD=1    skip `cargo build` (binaries must already be built)
set -euo pipefail

cd "$(dirname "$0")/.."
# shellcheck source=benches/lib.sh
. benches/lib.sh
SERVERS=${SERVERS:-floor echo-node-park tokio glommio}
DURATION=${DURATION:-5}
PP_DURATION=${PP_DURATION:-$DURATION}
WARMUP=${WARMUP:-1}
SIZE=${SIZE:-1024}
CONNS=${CONNS:-64}
DEPTH=${DEPTH:-16}
PP_SIZE=${PP_SIZE:-64}
WIRE=${WIRE:-lenprefix}
REPEAT=${REPEAT:-1}
SERVER_CORE=${SERVER_CORE:-0}
LOADGEN_CORE=${LOADGEN_CORE:-1}
BASE_PORT=${BASE_PORT:-7400}

die() {
    echo "compare.sh: $*" >&2
    exit 1
}

# Expand aliases and validate the server list.
LIST=()
for s in $SERVERS; do
    case "$s" in
        echo-node) LIST+=(echo-node-park echo-node-poll) ;;
        floor | floor-copy | floor-nobatch | floor-spin | echo-node-park | echo-node-poll | echo-node-spin | echo-node-single | echo-node-nobatch | tokio | glommio) LIST+=("$s") ;;
        *) die "unknown server '$s' (known: floor floor-copy floor-nobatch floor-spin echo-node-park echo-node-poll echo-node-spin echo-node-single echo-node-nobatch echo-node tokio glommio)" ;;
    esac
done
[ "${#LIST[@]}" -gt 0 ] || die "SERVERS is empty"
[[ "$REPEAT" =~ ^[1-9][0-9]*$ ]] || die "REPEAT must be a positive integer"
if [ "$(nproc)" -lt 2 ] && [ "$LOADGEN_CORE" = 1 ]; then
    echo "compare.sh: only one core; the load generator shares core 0 with the server" >&2
    LOADGEN_CORE=0
fi

if [ "${NO_BUILD:-0}" != 1 ]; then
    echo "== building (release)"
    cargo build --release -p ringwire-benches --bin loadgen --bin tokio-echo --bin glommio-echo --bin floor-echo
    case " ${LIST[*]} " in
        *" echo-node-"*) cargo build --release -p ringwire-examples --bin echo-node ;;
    esac
fi
BIN=$(release_bin_dir)

WORK=$(mktemp -d "${TMPDIR:-/tmp}/ringwire-compare.XXXXXX")
SERVER_PID=""

stop_server() {
    stop_pid "$SERVER_PID" "compare.sh: server"
    SERVER_PID=""
}

cleanup() {
    stop_server
    rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

server_cmd() {
    local name=$1 port=$2
    local common=(--cores 1 --listen "127.0.0.1:$port" --wire "$WIRE")
    case "$name" in
        echo-node-park) echo "$BIN/echo-node ${common[*]} --idle park" ;;
        echo-node-poll) echo "$BIN/echo-node ${common[*]} --idle poll" ;;
        echo-node-spin) echo "$BIN/echo-node ${common[*]} --idle spin:20" ;;
        echo-node-single) echo "$BIN/echo-node ${common[*]} --idle park --recv single" ;;
        echo-node-nobatch) echo "$BIN/echo-node ${common[*]} --idle park --wait-batch off" ;;
        floor) echo "$BIN/floor-echo ${common[*]}" ;;
        floor-copy) echo "$BIN/floor-echo ${common[*]} --gather copy" ;;
        floor-nobatch) echo "$BIN/floor-echo ${common[*]} --wait-batch off" ;;
        floor-spin) echo "$BIN/floor-echo ${common[*]} --spin 20" ;;
        tokio) echo "$BIN/tokio-echo ${common[*]}" ;;
        glommio) echo "$BIN/glommio-echo ${common[*]}" ;;
    esac
}

# Waits until something listens on $1, failing if the server exits first.
wait_port() {
    local port=$1 log=$2
    for _ in $(seq 100); do
        kill -0 "$SERVER_PID" 2>/dev/null || {
            cat "$log" >&2
            die "server exited before listening on port $port"
        }
        if ss -Hltn "sport = :$port" 2>/dev/null | grep -q .; then
            return 0
        fi
        sleep 0.1
    done
    cat "$log" >&2
    die "nothing listens on port $port after 10 s"
}

# run_loadgen NAME RUN_ID MODE ARGS...: runs the load generator, keeps its RESULT line.
run_loadgen() {
    local name=$1 id=$2 mode=$3
    shift 3
    local out="$WORK/$id.$mode.out"
    if ! taskset -c "$LOADGEN_CORE" "$BIN/loadgen" --core "$LOADGEN_CORE" --label "$name" \
        --server-pid "$SERVER_PID" --wire "$WIRE" --mode "$mode" --warmup "$WARMUP" "$@" >"$out" 2>&1; then
        cat "$out" >&2
        die "loadgen failed against $name ($mode)"
    fi
    sed 's/^/    /' "$out" | grep -v '^    RESULT '
    grep '^RESULT ' "$out" | sed "s/^RESULT /RESULT run=$id /" >>"$WORK/results"
}

port=$BASE_PORT
run=0
for round in $(seq "$REPEAT"); do
    for name in "${LIST[@]}"; do
        run=$((run + 1))
        port=$((port + 1))
        log="$WORK/$run.server.log"
        echo "== [$round/$REPEAT] $name on core $SERVER_CORE, 127.0.0.1:$port"
        # shellcheck disable=SC2046 # word splitting of the command is intended
        taskset -c "$SERVER_CORE" $(server_cmd "$name" "$port") >"$log" 2>&1 &
        SERVER_PID=$!
        wait_port "$port" "$log"
        run_loadgen "$name" "$run" throughput --addr "127.0.0.1:$port" \
            --conns "$CONNS" --depth "$DEPTH" --size "$SIZE" --duration "$DURATION"
        run_loadgen "$name" "$run" pingpong --addr "127.0.0.1:$port" \
            --conns 1 --size "$PP_SIZE" --duration "$PP_DURATION"
        stop_server
        if grep -v ' stopped: ' "$log" | grep -Eiq 'error|warn|panic'; then
            echo "    server log (it reported problems):"
            sed 's/^/      /' "$log"
        fi
    done
done

echo
median_note=""
if [ "$REPEAT" -gt 1 ]; then
    median_note=" (median of $REPEAT rounds)"
fi
echo "== results: $WIRE wire, server on core $SERVER_CORE, loadgen on core $LOADGEN_CORE;" \
    "throughput ${CONNS}x${DEPTH}x${SIZE} B for ${DURATION} s, ping-pong 1x${PP_SIZE} B for ${PP_DURATION} s$median_note"
awk -v order="${LIST[*]}" '
    function field(k,   i, kv) {
        for (i = 2; i <= NF; i++) { split($i, kv, "="); if (kv[1] == k) return kv[2] }
        return ""
    }
    function median(key,   n, i, j, t, a) {
        n = cnt[key]
        for (i = 1; i <= n; i++) a[i] = vals[key, i]
        for (i = 2; i <= n; i++) { t = a[i]; for (j = i - 1; j >= 1 && a[j] + 0 > t + 0; j--) a[j + 1] = a[j]; a[j + 1] = t }
        if (n == 0) return ""
        if (n % 2) return a[(n + 1) / 2]
        return (a[n / 2] + a[n / 2 + 1]) / 2
    }
    function add(key, v) { if (v != "" && v != "na") vals[key, ++cnt[key]] = v }
    /^RESULT / {
        s = field("server"); m = field("mode")
        if (m == "throughput") { add(s SUBSEP "tput", field("msgs_per_s")); add(s SUBSEP "eff", field("msgs_per_server_cpu_s")); add(s SUBSEP "cpu", field("server_cpu_s")); add(s SUBSEP "lg", field("loadgen_cpu_s")); add(s SUBSEP "other", field("other_cpu_s")) }
        else { add(s SUBSEP "p50", field("p50_us")); add(s SUBSEP "p99", field("p99_us")); add(s SUBSEP "p999", field("p999_us")) }
    }
    function ratio(a, b) { return (a != "" && b != "" && b + 0 > 0) ? sprintf("%.2fx", a / b) : "-" }
    function num(v, fmt) { return v == "" ? "-" : sprintf(fmt, v) }
    END {
        n = split(order, names, " ")
        tt = median("tokio" SUBSEP "tput"); te = median("tokio" SUBSEP "eff"); tp = median("tokio" SUBSEP "p50")
        ft = median("floor" SUBSEP "tput"); fe = median("floor" SUBSEP "eff"); fp = median("floor" SUBSEP "p50")
        fmt = "%-17s | %10s | %7s | %7s | %14s | %7s | %7s | %7s | %7s | %7s | %8s | %8s | %9s | %9s | %9s\n"
        printf fmt, "server", "msgs/s", "x tokio", "x floor", "msgs/srv-CPU-s", "x tokio", "x floor", "srv CPU", "lg CPU", "other", "pp p50", "pp p99", "pp p99.9", "p50/tokio", "p50/floor"
        printf fmt, "-----------------", "----------", "-------", "-------", "--------------", "-------", "-------", "-------", "-------", "-------", "--------", "--------", "---------", "---------", "---------"
        for (i = 1; i <= n; i++) {
            s = names[i]
            t = median(s SUBSEP "tput"); e = median(s SUBSEP "eff"); c = median(s SUBSEP "cpu")
            lg = median(s SUBSEP "lg"); o = median(s SUBSEP "other")
            p50 = median(s SUBSEP "p50"); p99 = median(s SUBSEP "p99"); p999 = median(s SUBSEP "p999")
            printf fmt, s, num(t, "%.0f"), ratio(t, tt), ratio(t, ft), num(e, "%.0f"), ratio(e, te), ratio(e, fe), \
                num(c, "%.2fs"), num(lg, "%.2fs"), num(o, "%.2fs"), \
                num(p50, "%.1fus"), num(p99, "%.1fus"), num(p999, "%.1fus"), ratio(p50, tp), ratio(p50, fp)
        }
    }
' "$WORK/results"
echo "msgs/s and msgs per server CPU-second come from the throughput runs; 'srv CPU', 'lg CPU'"
echo "and 'other' are the CPU seconds of the server, the load generator and everything else on the"
echo "machine (other processes, interrupts) over the measured throughput interval: a large 'other'"
echo "means the run was disturbed. pp = ping-pong round-trip latency; p50/tokio < 1 is faster."
echo "x floor: ratio to floor-echo, the hand-written io_uring loop with no runtime ('-' if it did not run)."
echo
echo "raw RESULT lines:"
sed 's/^/  /' "$WORK/results"
