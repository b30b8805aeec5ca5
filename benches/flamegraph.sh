#!/usr/bin/env bash
# One command to a CPU flamegraph of echo-node under load.
#
# Builds echo-node and the load generator with the `profiling` profile
# (release optimisations, full debug info) and frame pointers, runs echo-node
# pinned to CPU $NODE_CPU with the load generator on CPU $LOADGEN_CPU, samples
# the node with `perf record -e cpu-clock --call-graph fp` (software clock:
# works on VMs without hardware counters) and renders an SVG with inferno.
# Installs what it lacks: Debian's linux-perf, and inferno from crates.io.
#
# Usage: ./benches/flamegraph.sh [OUT.svg]            (default: flamegraph.svg)
# Environment: SECONDS_TO_SAMPLE (5), PORT (7900), NODE_CPU (0), LOADGEN_CPU (1),
#              NODE_ARGS (extra echo-node flags, e.g. "--wire raw --idle poll"),
#              LOADGEN_ARGS (extra loadgen flags, e.g. "--mode pingpong").
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=benches/lib.sh
. benches/lib.sh

OUT=${1:-flamegraph.svg}
SECONDS_TO_SAMPLE=${SECONDS_TO_SAMPLE:-5}
PORT=${PORT:-7900}
NODE_CPU=${NODE_CPU:-0}
LOADGEN_CPU=${LOADGEN_CPU:-1}

if ! command -v perf >/dev/null 2>&1; then
    echo "== installing linux-perf"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq linux-perf
fi
if ! command -v inferno-flamegraph >/dev/null 2>&1; then
    echo "== installing inferno (flamegraph renderer)"
    cargo install inferno --locked --version 0.12.8
fi

echo "== building with the profiling profile and frame pointers"
export RUSTFLAGS="${RUSTFLAGS:-} -C force-frame-pointers=yes"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-target/frame-pointers}"
cargo build --profile profiling -p ringwire-examples --bin echo-node
cargo build --profile profiling -p ringwire-benches --bin loadgen
BIN="$CARGO_TARGET_DIR/profiling"

WORK=$(mktemp -d)
NODE_PID=""
cleanup() {
    stop_pid "$NODE_PID" "flamegraph.sh: echo-node"
    rm -rf "$WORK"
}
trap cleanup EXIT

# shellcheck disable=SC2086
taskset -c "$NODE_CPU" "$BIN/echo-node" --cores 1 --listen "127.0.0.1:$PORT" ${NODE_ARGS:-} \
    >"$WORK/node.log" 2>&1 &
NODE_PID=$!
for _ in $(seq 50); do
    grep -q "listening" "$WORK/node.log" 2>/dev/null && break
    kill -0 "$NODE_PID" 2>/dev/null || { cat "$WORK/node.log" >&2; exit 1; }
    sleep 0.1
done

LOAD_SECS=$((SECONDS_TO_SAMPLE + 2))
# shellcheck disable=SC2086
taskset -c "$LOADGEN_CPU" "$BIN/loadgen" --addr "127.0.0.1:$PORT" --core "$LOADGEN_CPU" \
    --warmup 1 --duration "$LOAD_SECS" ${LOADGEN_ARGS:-} >"$WORK/loadgen.log" 2>&1 &
LOADGEN_PID=$!
sleep 1

echo "== sampling echo-node (pid $NODE_PID) for ${SECONDS_TO_SAMPLE}s"
perf record -e cpu-clock -F 999 --call-graph fp -p "$NODE_PID" -o "$WORK/perf.data" \
    -- sleep "$SECONDS_TO_SAMPLE" 2>"$WORK/perf.log" || { cat "$WORK/perf.log" >&2; exit 1; }
wait "$LOADGEN_PID" || true
grep RESULT "$WORK/loadgen.log" || true

perf script -i "$WORK/perf.data" 2>/dev/null | inferno-collapse-perf | inferno-flamegraph \
    --title "echo-node ${NODE_ARGS:-} under loadgen ${LOADGEN_ARGS:-}" >"$OUT"
echo "== wrote $OUT ($(wc -c <"$OUT") bytes)"
