#!/usr/bin/env bash
# The benchmark suite: every comparison of the project side by side with its
# peers in one run, written to target/bench-report/ as report.md (Markdown
# tables with ratios, the machine, the exact commands) and SVG charts made by
# `bench-report`.
#
# Steps (each one's whole output is kept in target/bench-report/raw/):
#   echo        benches/compare.sh: echo-node against tokio and glommio (and
#               the io_uring floor when compare.sh has it), 1 KiB throughput
#               and 64 B ping-pong
#   echo-sizes  compare.sh throughput at other message sizes (Gbit/s by size)
#   typed       benches/typed.sh, typed request/reply against tokio+codec and
#               ZeroMQ (when the script is in the tree)
#   tls         benches/tls.sh, typed request/reply over tls:// against
#               tokio-rustls (needs openssl for its certificates)
#   kv          benches/kv.sh, kv-node against redis-server with
#               redis-benchmark (when the script and the tools are there)
#   mailbox     criterion: the cross-core ring against crossbeam and glommio
#   codec       criterion: rkyv framing against bincode
#   bulk        bulk-bench: sync, async and mix transfers, ringwire against a
#               plain TCP copy loop, with peak RSS of each process
#   bulk-sizes  bulk-bench sync at other message sizes (Gbit/s by size)
# A step whose script or tool is missing is skipped with the reason in the
# report; a step that fails or overruns its time limit is marked failed and
# the suite goes on.
#
# Usage: ./benches/suite.sh [--quick]
#   --quick   short durations, one round, a subset of servers and criterion
#             benchmarks: under a minute once built. The full run takes
#             under 10 minutes.
#
# Environment:
#   OUT           report directory [target/bench-report]
#   STEPS         steps to run [echo echo-sizes typed tls kv mailbox codec bulk bulk-sizes]
#   SERVER_CORE   CPU of servers / senders [0]   CLIENT_CORE  CPU of load [1]
#   NO_BUILD=1    skip building (the release binaries and benches must exist)
#
# Scripts run by the suite get QUICK=1 in --quick mode and SERVER_CORE (and
# build what they need themselves); anything they print as `RESULT
# key=value` lines lands in the report (see benches/src/report/ for how lines
# are read).
set -euo pipefail

cd "$(dirname "$0")/.."
# shellcheck source=benches/lib.sh
. benches/lib.sh

QUICK=0
for arg in "$@"; do
    case "$arg" in
        --quick) QUICK=1 ;;
        -h | --help)
            sed -n '2,/^set -euo/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//'
            exit 0
            ;;
        *)
            echo "suite.sh: unknown argument '$arg' (try --help)" >&2
            exit 2
            ;;
    esac
done

OUT=${OUT:-target/bench-report}
STEPS=${STEPS:-echo echo-sizes typed tls kv mailbox codec bulk bulk-sizes}
SERVER_CORE=${SERVER_CORE:-0}
CLIENT_CORE=${CLIENT_CORE:-1}
if [ "$(nproc)" -lt 2 ] && [ "$CLIENT_CORE" = 1 ]; then
    echo "suite.sh: only one CPU; load generators share CPU 0 with the servers" >&2
    CLIENT_CORE=0
fi
MODE=full
[ "$QUICK" = 1 ] && MODE=quick

want() { # want STEP: whether STEP is selected
    case " $STEPS " in *" $1 "*) return 0 ;; esac
    return 1
}

# The report directory: only what the suite writes there is replaced.
mkdir -p "$OUT"
rm -rf "$OUT/raw" "$OUT/criterion"
rm -f "$OUT"/*.svg "$OUT/report.md" "$OUT/steps.tsv" "$OUT/suite.env"
mkdir -p "$OUT/raw"
OUT_ABS=$(cd "$OUT" && pwd)
STEPS_TSV="$OUT_ABS/steps.tsv"
: >"$STEPS_TSV"

now() { date +%s.%N; }
elapsed() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.1f", b - a }'; }

# ---------------------------------------------------------------- build

SUITE_START=$(now)
HAVE_FLOOR=0
[ -f benches/src/bin/floor-echo.rs ] && grep -q 'floor' benches/compare.sh && HAVE_FLOOR=1
HAVE_KV_NODE=0
[ -f examples/src/bin/kv-node.rs ] && HAVE_KV_NODE=1

if [ "${NO_BUILD:-0}" != 1 ]; then
    echo "== building (release binaries and criterion benches)"
    bins=(--bin loadgen --bin tokio-echo --bin glommio-echo --bin bulk-bench --bin bench-report)
    [ "$HAVE_FLOOR" = 1 ] && bins+=(--bin floor-echo)
    nice -n 10 cargo build --release -p ringwire-benches "${bins[@]}"
    ex_bins=(--bin echo-node)
    [ "$HAVE_KV_NODE" = 1 ] && ex_bins+=(--bin kv-node)
    nice -n 10 cargo build --release -p ringwire-examples "${ex_bins[@]}"
    # The other scripts' binaries, so that building them is not timed; a
    # failure here shows again in the step that needs them. One package per
    # command, as the scripts build them (features are unified over the
    # packages of one command, so building both at once would not be reused).
    if [ -x benches/typed.sh ] || [ -x benches/kv.sh ]; then
        for p in ringwire-benches ringwire-examples; do
            nice -n 10 cargo build --release -p "$p" --bins ||
                echo "suite.sh: building every binary of $p failed; the steps that need them will fail" >&2
        done
    fi
    if want mailbox || want codec; then
        nice -n 10 cargo bench -p ringwire-benches --bench mailbox --bench codec --no-run
    fi
fi
BUILD_SECONDS=$(elapsed "$SUITE_START")
BIN=$(release_bin_dir)
# Commands are kept in the report as run; inside the tree, with relative paths.
BIN=${BIN#"$PWD"/}
for b in loadgen bulk-bench bench-report; do
    [ -x "$BIN/$b" ] || {
        echo "suite.sh: $BIN/$b is missing; run without NO_BUILD=1" >&2
        exit 1
    }
done

LOAD_START=$(cut -d' ' -f1-3 /proc/loadavg)
MEASURE_START=$(now)

# ---------------------------------------------------------------- steps

# record NAME STATUS SECONDS OPTIONS TITLE COMMAND NOTE
record() {
    local IFS=$'\t'
    echo "$*" | tr -d '\n' >>"$STEPS_TSV"
    echo >>"$STEPS_TSV"
}

# skip NAME OPTIONS TITLE COMMAND REASON
skip() {
    record "$1" skipped 0 "$2" "$3" "$4" "$5"
    printf '== %-11s skipped: %s\n' "$1" "$5"
}

# run NAME OPTIONS TITLE LIMIT_SECONDS COMMAND_STRING
# Runs COMMAND_STRING (a shell command line, kept verbatim in the report)
# with a time limit; its output goes to raw/NAME.txt.
run() {
    local name=$1 options=$2 title=$3 limit=$4 cmd=$5
    local raw="$OUT_ABS/raw/$name.txt" start status note=""
    printf '== %-11s %s\n' "$name" "$cmd"
    start=$(now)
    set +e
    timeout -k 10 "$limit" bash -c "$cmd" >"$raw" 2>&1
    status=$?
    set -e
    local secs
    secs=$(elapsed "$start")
    if [ "$status" = 0 ]; then
        record "$name" ok "$secs" "$options" "$title" "$cmd" ""
        printf '   %-11s ok in %s s (%s RESULT lines)\n' "" "$secs" "$(grep -c 'RESULT ' "$raw" || true)"
    else
        if [ "$status" = 124 ] || [ "$status" = 137 ]; then
            note="stopped at its time limit of $limit s"
        else
            note="exit status $status; see raw/$name.txt"
        fi
        record "$name" failed "$secs" "$options" "$title" "$cmd" "$note"
        printf '   %-11s FAILED in %s s: %s; last lines:\n' "" "$secs" "$note"
        tail -n 15 "$raw" | sed 's/^/      /'
    fi
}

# Environment every script gets; compare.sh's binaries were built above.
COMMON="SERVER_CORE=$SERVER_CORE"
[ "$QUICK" = 1 ] && COMMON="QUICK=1 $COMMON"
COMPARE="NO_BUILD=1 $COMMON LOADGEN_CORE=$CLIENT_CORE"

ECHO_REF="ref=tokio"
[ "$HAVE_FLOOR" = 1 ] && ECHO_REF="ref=tokio,floor"

if want echo; then
    if [ "$QUICK" = 1 ]; then
        servers="echo-node-park tokio"
        envs="DURATION=1 PP_DURATION=1 WARMUP=0.3 REPEAT=1"
    else
        servers="echo-node-park echo-node-nobatch echo-node-poll tokio glommio"
        envs="DURATION=3 PP_DURATION=3 WARMUP=1 REPEAT=3"
    fi
    [ "$HAVE_FLOOR" = 1 ] && servers="floor $servers"
    run echo "$ECHO_REF" "Echo servers, one server core" 400 \
        "$COMPARE SERVERS=\"$servers\" $envs ./benches/compare.sh"
fi

if want echo-sizes; then
    if [ "$QUICK" = 1 ]; then
        sizes="16384"
        servers="echo-node-park tokio"
        envs="DURATION=1 PP_DURATION=0.2 WARMUP=0.3 REPEAT=1"
    else
        sizes="64 4096 16384 65536"
        servers="echo-node-park tokio"
        envs="DURATION=2 PP_DURATION=0.2 WARMUP=0.5 REPEAT=1"
        [ "$HAVE_FLOOR" = 1 ] && servers="floor $servers"
    fi
    cmd=""
    for s in $sizes; do
        cmd+="${cmd:+ && }$COMPARE SERVERS=\"$servers\" SIZE=$s $envs ./benches/compare.sh"
    done
    options="$ECHO_REF;with=echo;keep=mode=throughput;charts=by-size,efficiency"
    run echo-sizes "$options" "Echo servers by message size" 300 "$cmd"
fi

if want typed; then
    title="Typed request/reply"
    if [ ! -x benches/typed.sh ]; then
        skip typed "" "$title" "./benches/typed.sh" "benches/typed.sh is not in this tree"
    else
        if [ "$QUICK" = 1 ]; then
            envs="STACKS=\"ringwire tokio\" TRANSPORTS=tcp WORKLOADS=rr DURATION=1 PP_DURATION=1 WARMUP=0.3 REPEAT=1"
        else
            envs="DURATION=3 PP_DURATION=3 WARMUP=1 REPEAT=1"
        fi
        run typed "ref=tokio,zmq" "$title" 300 "$COMMON CLIENT_CORE=$CLIENT_CORE $envs ./benches/typed.sh"
    fi
fi

if want tls; then
    title="Typed request/reply over TLS"
    if [ ! -x benches/tls.sh ]; then
        skip tls "" "$title" "./benches/tls.sh" "benches/tls.sh is not in this tree"
    elif ! command -v openssl >/dev/null; then
        skip tls "" "$title" "./benches/tls.sh" "openssl is not installed (Debian package openssl)"
    else
        if [ "$QUICK" = 1 ]; then
            envs="DURATION=1 WARMUP=0.3 REPEAT=1"
        else
            envs="DURATION=3 WARMUP=1 REPEAT=1"
        fi
        run tls "ref=tokio" "$title" 200 "$COMMON CLIENT_CORE=$CLIENT_CORE $envs ./benches/tls.sh"
    fi
fi

# kv.sh prints a table but no RESULT lines: derive them from its per-run
# lines ("== round R: SERVER", then "   SET  P16   123456 requests/s"), into
# raw/kv-results.txt, unless it printed RESULT lines itself.
kv_results() {
    local raw="$OUT_ABS/raw/kv.txt" out="$OUT_ABS/raw/kv-results.txt"
    [ -f "$raw" ] || return 0
    grep -q '^ *RESULT ' "$raw" && return 0
    {
        echo "# RESULT lines derived by suite.sh from raw/kv.txt"
        awk '
            /^== round [0-9]+: / { server = $4; round = $3; sub(/:$/, "", round) }
            /^ +[A-Z]+ +P[0-9]+ +[0-9.]+ requests\/s/ {
                name = server
                if (server == "redis") name = "redis-server"
                else if (server == "kv1") name = "kv-node-x1"
                else if (server == "kv2") name = "kv-node-x2"
                printf "RESULT server=%s op=%s pipeline=%s run=%s requests_per_s=%s\n", name, $1, substr($2, 2), round, $3
            }
        ' "$raw"
    } >"$out"
}

if want kv; then
    title="Key-value node against redis-server"
    if [ ! -x benches/kv.sh ]; then
        skip kv "" "$title" "./benches/kv.sh" "benches/kv.sh is not in this tree"
    elif ! command -v redis-benchmark >/dev/null 2>&1; then
        skip kv "" "$title" "./benches/kv.sh" "redis-benchmark is not installed (Debian package redis-tools)"
    elif ! command -v redis-server >/dev/null 2>&1; then
        skip kv "" "$title" "./benches/kv.sh" "redis-server is not installed (Debian package redis-server)"
    else
        if [ "$QUICK" = 1 ]; then
            envs="N_P16=100000 N_P1=10000 KEYSPACE=10000 ROUNDS=1"
        else
            envs="N_P16=1000000 N_P1=150000 ROUNDS=1"
        fi
        run kv "ref=redis-server;with=kv-results" "$title" 300 "$COMMON CLIENT_CORE=$CLIENT_CORE $envs ./benches/kv.sh"
        kv_results
    fi
fi

# criterion: results go to the report directory, so only this run's are read
# (cargo bench runs benchmarks in the package's directory: an absolute path).
case "$OUT" in
    /*) CRIT="CRITERION_HOME=$OUT/criterion" ;;
    *) CRIT="CRITERION_HOME=\$PWD/$OUT/criterion" ;;
esac
if want mailbox; then
    if [ "$QUICK" = 1 ]; then
        filter=" --warm-up-time 0.3 --measurement-time 0.6 '^mailbox/64B/(ringwire|glommio_shared_channel)/16\$'"
    else
        filter=""
    fi
    run mailbox "criterion=mailbox;pairs=ringwire/glommio_shared_channel,ringwire/crossbeam_arrayqueue" \
        "Mailbox ring, one message or batches" 300 \
        "$CRIT cargo bench -q -p ringwire-benches --bench mailbox -- --noplot --nresamples 10000$filter"
fi

if want codec; then
    if [ "$QUICK" = 1 ]; then
        args="--warm-up-time 0.2 --measurement-time 0.4 --nresamples 10000 '/1KiB\$'"
    else
        args="--warm-up-time 0.5 --measurement-time 1"
    fi
    run codec "criterion=proto_codec;pairs=rkyv_round_trip/bincode_round_trip,decode_validate/bincode_decode,decode_unchecked/decode_validate" \
        "proto codec: rkyv framing against bincode" 300 \
        "$CRIT cargo bench -q -p ringwire-benches --bench codec -- --noplot $args"
fi

BULK="$BIN/bulk-bench --server-core $SERVER_CORE --client-core $CLIENT_CORE"
if want bulk; then
    if [ "$QUICK" = 1 ]; then
        args="--count 32 --rounds 1"
    else
        args="--rounds 3"
    fi
    run bulk "ref=tcp" "Bulk transfer (net-queue's tests)" 300 "$BULK $args"
fi

if want bulk-sizes; then
    if [ "$QUICK" = 1 ]; then
        plan="262144:32"
    else
        plan="16384:8192 131072:2048 1048576:256 8388608:32"
    fi
    cmd=""
    for p in $plan; do
        cmd+="${cmd:+ && }$BULK --tests sync --size ${p%%:*} --count ${p##*:} --rounds 1"
    done
    run bulk-sizes "ref=tcp;with=bulk;keep=test=sync;charts=by-size" "Bulk transfer by message size" 300 "$cmd"
fi

MEASURE_SECONDS=$(elapsed "$MEASURE_START")
LOAD_END=$(cut -d' ' -f1-3 /proc/loadavg)

# ---------------------------------------------------------------- report

{
    echo "date=$(date -u '+%Y-%m-%d %H:%M')"
    echo "mode=$MODE"
    echo "cpu=$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//')"
    echo "cpus=$(nproc)"
    echo "kernel=$(uname -sr)"
    echo "rustc=$(rustc -V)"
    echo "commit=$(git describe --always --dirty 2>/dev/null || echo unknown)"
    echo "load_start=$LOAD_START"
    echo "load_end=$LOAD_END"
    cmdline="./benches/suite.sh"
    [ "$QUICK" = 1 ] && cmdline+=" --quick"
    echo "command=$cmdline"
    echo "build_seconds=$BUILD_SECONDS"
    echo "measure_seconds=$MEASURE_SECONDS"
} >"$OUT_ABS/suite.env"

echo "== report"
"$BIN/bench-report" "$OUT_ABS"
echo "== measured in $MEASURE_SECONDS s (build $BUILD_SECONDS s); report: $OUT/report.md"
if grep -q $'\tfailed\t' "$STEPS_TSV"; then
    echo "suite.sh: some steps failed (see the report)" >&2
    exit 1
fi
