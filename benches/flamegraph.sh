#!/usr/bin/env bash
# One command to a CPU flamegraph of any example node under load.
#
# Builds the node (and the load generator it needs) with the `profiling`
# profile (release optimisations, full debug info) and frame pointers, runs
# the node pinned to CPU $NODE_CPU on 127.0.0.1:$PORT with its load on CPU
# $LOADGEN_CPU, samples the node with `perf record -e cpu-clock --call-graph
# fp` (software clock: works on VMs without hardware counters) and renders
# an SVG with inferno. Checks that the samples include ringwire's own
# functions. Installs what it lacks: Debian's linux-perf, and inferno from
# crates.io.
#
# Usage: ./benches/flamegraph.sh [OUT.svg]            (default: flamegraph.svg)
#
#   NODE=echo-node (default)  load: loadgen, 64 connections x 16 x 1 KiB
#                             (LOADGEN_ARGS adds flags, e.g. "--mode pingpong")
#   NODE=kv-node              load: redis-benchmark SET/GET, 50 clients,
#                             pipeline 16, 64 B values (Debian's redis-tools)
#   NODE=<binary> NODE_ARGS="..." LOAD_CMD="..."
#                             any binary of examples/ or benches/: NODE_ARGS
#                             is its whole argument list and LOAD_CMD a shell
#                             command that loads it; both may say {PORT},
#                             LOAD_CMD also {NODE_PID} (the node's process id)
#                             and {BIN}/NAME (a benches/ binary, built with
#                             the same profile), e.g.
#   NODE=typed-ringwire NODE_ARGS="server --endpoint tcp://127.0.0.1:{PORT}" \
#   LOAD_CMD="{BIN}/typed-ringwire client --endpoint tcp://127.0.0.1:{PORT} --duration 7" \
#   ./benches/flamegraph.sh typed.svg
#
# Environment: SECONDS_TO_SAMPLE (5), PORT (7900), NODE_CPU (0),
#              LOADGEN_CPU (1), NODE_ARGS (for echo-node and kv-node: extra
#              flags after --cores 1 --listen 127.0.0.1:$PORT, e.g.
#              "--idle poll"), LOAD_CMD (replaces the default load).
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=benches/lib.sh
. benches/lib.sh

OUT=${1:-flamegraph.svg}
NODE=${NODE:-echo-node}
SECONDS_TO_SAMPLE=${SECONDS_TO_SAMPLE:-5}
PORT=${PORT:-7900}
NODE_CPU=${NODE_CPU:-0}
LOADGEN_CPU=${LOADGEN_CPU:-1}

die() {
    echo "flamegraph.sh: $*" >&2
    exit 1
}

[[ "$SECONDS_TO_SAMPLE" =~ ^[1-9][0-9]*$ ]] || die "SECONDS_TO_SAMPLE must be a positive whole number"
[[ "$NODE" =~ ^[A-Za-z0-9_-]+$ ]] || die "NODE must be a binary name, not '$NODE'"
if [ "$(nproc)" -lt 2 ] && [ "$LOADGEN_CPU" = 1 ]; then
    echo "flamegraph.sh: only one CPU; the load shares CPU 0 with the node" >&2
    LOADGEN_CPU=0
fi

# Which package builds the node.
if [ -f "examples/src/bin/$NODE.rs" ] || [ -f "examples/src/bin/$NODE/main.rs" ]; then
    PACKAGE=ringwire-examples
elif [ -f "benches/src/bin/$NODE.rs" ] || [ -f "benches/src/bin/$NODE/main.rs" ]; then
    PACKAGE=ringwire-benches
else
    die "no binary '$NODE' in examples/src/bin or benches/src/bin"
fi

# What the node runs with and what loads it. {PORT} is replaced below.
LOAD_BINS=()
case "$NODE" in
    echo-node)
        ARGS="--cores 1 --listen 127.0.0.1:{PORT} ${NODE_ARGS:-}"
        LOAD_BINS=(loadgen)
        DEFAULT_LOAD="{BIN}/loadgen --addr 127.0.0.1:{PORT} --core $LOADGEN_CPU --warmup 1 --duration {LOAD_SECS} --server-pid {NODE_PID} --label echo-node ${LOADGEN_ARGS:-}"
        ;;
    kv-node)
        ARGS="--cores 1 --listen 127.0.0.1:{PORT} ${NODE_ARGS:-}"
        DEFAULT_LOAD="redis-benchmark -h 127.0.0.1 -p {PORT} -c 50 -P 16 -d 64 -t set,get -r 100000 -n 100000000 -q"
        if [ -z "${LOAD_CMD:-}" ] && ! command -v redis-benchmark >/dev/null 2>&1; then
            die "kv-node is loaded with redis-benchmark, which is not installed (Debian: apt-get install redis-tools); or give LOAD_CMD"
        fi
        ;;
    *)
        [ -n "${NODE_ARGS:-}" ] || die "NODE=$NODE needs NODE_ARGS (its arguments; {PORT} is replaced by the port)"
        [ -n "${LOAD_CMD:-}" ] || die "NODE=$NODE needs LOAD_CMD (a shell command that loads it; {PORT} is replaced)"
        ARGS=$NODE_ARGS
        DEFAULT_LOAD=""
        # Binaries of benches/ that LOAD_CMD names as {BIN}/NAME are built too.
        read -r -a LOAD_BINS <<<"$(grep -o '{BIN}/[A-Za-z0-9_-]*' <<<"$LOAD_CMD" | sed 's|{BIN}/||' | sort -u | tr '\n' ' ')"
        ;;
esac
LOAD=${LOAD_CMD:-$DEFAULT_LOAD}

if ! command -v perf >/dev/null 2>&1; then
    echo "== installing linux-perf"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq linux-perf
fi
if ! command -v inferno-flamegraph >/dev/null 2>&1; then
    echo "== installing inferno (flamegraph renderer)"
    cargo install inferno --locked --version 0.12.8
fi

echo "== building $NODE with the profiling profile and frame pointers"
export RUSTFLAGS="${RUSTFLAGS:-} -C force-frame-pointers=yes"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-target/frame-pointers}"
cargo build --profile profiling -p "$PACKAGE" --bin "$NODE"
for b in "${LOAD_BINS[@]+"${LOAD_BINS[@]}"}"; do
    cargo build --profile profiling -p ringwire-benches --bin "$b"
done
BIN="$CARGO_TARGET_DIR/profiling"

LOAD_SECS=$((SECONDS_TO_SAMPLE + 2))
NODE_PID=""
subst() { # subst TEXT: fills in {PORT}, {BIN}, {LOAD_SECS} and {NODE_PID}
    local s=$1
    s=${s//\{PORT\}/$PORT}
    s=${s//\{BIN\}/$BIN}
    s=${s//\{LOAD_SECS\}/$LOAD_SECS}
    s=${s//\{NODE_PID\}/$NODE_PID}
    printf '%s' "$s"
}
ARGS=$(subst "$ARGS")

WORK=$(mktemp -d)
LOAD_PID=""
cleanup() {
    stop_pid "$LOAD_PID" "flamegraph.sh: load"
    stop_pid "$NODE_PID" "flamegraph.sh: $NODE"
    rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

if ss -Hltn "sport = :$PORT" 2>/dev/null | grep -q .; then
    die "something already listens on port $PORT; set PORT"
fi
echo "== starting $NODE on CPU $NODE_CPU: $NODE $ARGS"
# shellcheck disable=SC2086 # ARGS is a word list on purpose
taskset -c "$NODE_CPU" "$BIN/$NODE" $ARGS >"$WORK/node.log" 2>&1 &
NODE_PID=$!
listening=0
for _ in $(seq 100); do
    kill -0 "$NODE_PID" 2>/dev/null || {
        cat "$WORK/node.log" >&2
        NODE_PID=""
        die "$NODE exited before listening on port $PORT"
    }
    if ss -Hltn "sport = :$PORT" 2>/dev/null | grep -q .; then
        listening=1
        break
    fi
    sleep 0.1
done
[ "$listening" = 1 ] || {
    cat "$WORK/node.log" >&2
    die "$NODE does not listen on port $PORT after 10 s"
}

LOAD=$(subst "$LOAD")
echo "== load on CPU $LOADGEN_CPU: $LOAD"
taskset -c "$LOADGEN_CPU" timeout -k 5 $((LOAD_SECS + 5)) bash -c "$LOAD" >"$WORK/load.log" 2>&1 &
LOAD_PID=$!
sleep 1
kill -0 "$LOAD_PID" 2>/dev/null || {
    cat "$WORK/load.log" >&2
    LOAD_PID=""
    die "the load command exited within a second"
}

echo "== sampling $NODE (pid $NODE_PID) for ${SECONDS_TO_SAMPLE}s"
perf record -e cpu-clock -F 999 --call-graph fp -p "$NODE_PID" -o "$WORK/perf.data" \
    -- sleep "$SECONDS_TO_SAMPLE" 2>"$WORK/perf.log" || {
    cat "$WORK/perf.log" >&2
    die "perf record failed (as non-root, /proc/sys/kernel/perf_event_paranoid must allow it)"
}
# A load that ends by itself (loadgen) prints its summary; give it a moment.
for _ in $(seq 40); do
    kill -0 "$LOAD_PID" 2>/dev/null || break
    sleep 0.1
done
stop_pid "$LOAD_PID" "flamegraph.sh: load"
LOAD_PID=""
# The load's summary, or its last progress line (redis-benchmark rewrites one
# line with carriage returns).
tr '\r' '\n' <"$WORK/load.log" | grep -E 'RESULT|requests per second|rps=' | tail -n 2 | sed 's/^/    /' || true

perf script -i "$WORK/perf.data" 2>/dev/null | inferno-collapse-perf >"$WORK/collapsed.txt"
[ -s "$WORK/collapsed.txt" ] || die "perf recorded no samples of $NODE"
inferno-flamegraph --title "$NODE $ARGS under: $LOAD" <"$WORK/collapsed.txt" >"$OUT"

# How much of the node's sampled time passes through ringwire's own
# functions (frames of the ringwire_* crates; the first frame, the thread's
# name, does not count), and how much is spent in their own code (the
# innermost frame is theirs).
awk '
    {
        n = $NF; total += n
        stack = $0; sub(/ [0-9]+$/, "", stack); sub(/^[^;]*;?/, "", stack)
        if (stack ~ /ringwire_[a-z_]+::/) through += n
        leaf = stack; sub(/^.*;/, "", leaf)
        if (leaf ~ /ringwire_[a-z_]+::/) own += n
    }
    END {
        if (total == 0) exit 1
        printf "== of the sampled time: %.0f%% in stacks through ringwire_* functions, %.1f%% in their own code\n", \
            100 * through / total, 100 * own / total
        exit (through > 0 ? 0 : 2)
    }
' "$WORK/collapsed.txt" || die "no sample has a frame of a ringwire_* crate: the profile lacks symbols (debug info or frame pointers missing?)"
echo "== wrote $OUT ($(wc -c <"$OUT") bytes)"
