#!/usr/bin/env bash
# The echo benchmark in one line: builds ringwire's `echo-node` example and the
# load generator (release), starts echo-node pinned to core 0 (`taskset -c 0
# echo-node --cores 1`: one core, the first CPU it may use) on
# 127.0.0.1:$PORT (lenprefix wire), loads it from core 1 in throughput mode
# (loadgen defaults: 64 connections x 16 in flight x 1 KiB, 1 s warm-up, 5 s
# measured), then with a short ping-pong run, and stops the node by its PID.
#
# Usage: ./benches/echo.sh
# Environment: PORT (default 7000), NODE_CORE (0), LOADGEN_CORE (1),
#              IDLE (echo-node --idle mode; unset = echo-node's default).
set -euo pipefail

cd "$(dirname "$0")/.."
# shellcheck source=benches/lib.sh
. benches/lib.sh
PORT=${PORT:-7000}
NODE_CORE=${NODE_CORE:-0}
LOADGEN_CORE=${LOADGEN_CORE:-1}
if [ "$(nproc)" -lt 2 ] && [ "$LOADGEN_CORE" = 1 ]; then
    echo "echo.sh: only one core; running the load generator on core 0 too" >&2
    LOADGEN_CORE=0
fi

echo "== building (release)"
cargo build --release -p ringwire-examples --bin echo-node
cargo build --release -p ringwire-benches --bin loadgen
BIN=$(release_bin_dir)

NODE_PID=""
stop_node() {
    stop_pid "$NODE_PID" "echo.sh: echo-node"
    NODE_PID=""
}
trap stop_node EXIT
trap 'exit 130' INT TERM

IDLE_ARGS=()
if [ -n "${IDLE:-}" ]; then
    IDLE_ARGS=(--idle "$IDLE")
fi

echo "== starting echo-node on core $NODE_CORE, 127.0.0.1:$PORT, lenprefix"
taskset -c "$NODE_CORE" "$BIN/echo-node" --cores 1 --listen "127.0.0.1:$PORT" \
    --wire lenprefix "${IDLE_ARGS[@]}" &
NODE_PID=$!
listening=0
for _ in $(seq 100); do
    if ! kill -0 "$NODE_PID" 2>/dev/null; then
        NODE_PID=""
        echo "echo.sh: echo-node exited before listening on port $PORT" >&2
        exit 1
    fi
    if ss -Hltn "sport = :$PORT" 2>/dev/null | grep -q .; then
        listening=1
        break
    fi
    sleep 0.1
done
if [ "$listening" != 1 ]; then
    echo "echo.sh: nothing listens on port $PORT after 10 s" >&2
    exit 1
fi

echo "== throughput (loadgen on core $LOADGEN_CORE)"
taskset -c "$LOADGEN_CORE" "$BIN/loadgen" --core "$LOADGEN_CORE" --addr "127.0.0.1:$PORT" \
    --wire lenprefix --mode throughput --server-pid "$NODE_PID" --label echo-node

echo "== ping-pong (1 connection, 64 B)"
taskset -c "$LOADGEN_CORE" "$BIN/loadgen" --core "$LOADGEN_CORE" --addr "127.0.0.1:$PORT" \
    --wire lenprefix --mode pingpong --warmup 0.5s --duration 3s --server-pid "$NODE_PID" --label echo-node

stop_node
echo "== done"
