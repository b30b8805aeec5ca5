#!/usr/bin/env bash
# kv-node against a stock redis-server, side by side in one run.
#
# Builds kv-node (release), then for each server in turn:
#   redis-server   Debian's, `--save '' --appendonly no`, pinned to core 0;
#   kv-node x1     `taskset -c 0 kv-node --cores 1` (one core, no forwarding);
#   kv-node x2     `kv-node --cpus 0,1` (two cores, requests for the other
#                  core's keys forwarded through the mailboxes), the
#                  benchmark sharing core 1 with it;
# runs the same redis-benchmark, pinned to core 1: SET and GET, 50 clients,
# 64-byte values, keys drawn from 100000, pipeline 16 then pipeline 1, and
# prints requests per second and the ratio to redis-server, with the CPU
# model and the load average (figures taken on a busy machine are noise).
# On each kv-node, `kv-client bench` then drives the same node over its
# typed listener (ringwire transports, rkyv calls), pinned to the same core
# as redis-benchmark: 50 connections with 16 then 1 calls in flight on
# each (the typed counterparts of pipeline 16 and 1), all puts then all
# gets, same values and key space; a second table sets the typed figures
# beside the Redis path's on the same node. The two clients differ
# (redis-benchmark is C over epoll, kv-client a ringwire core), so the
# ratio is client and protocol together.
# Servers are stopped by their PIDs.
#
# Usage: ./benches/kv.sh
# Environment: REDIS_PORT (6390), KV_PORT (6391), TYPED_PORT (7391),
#   SERVER_CORE (0),
#   CLIENT_CORE (1), N_P16 (2000000 requests per test at pipeline 16),
#   N_P1 (300000 at pipeline 1), KEYSPACE (100000), ROUNDS (1; with more,
#   the servers take turns and each figure is the best of its rounds),
#   IDLE (kv-node --idle; unset = its default).
set -euo pipefail

cd "$(dirname "$0")/.."
# shellcheck source=benches/lib.sh
. benches/lib.sh
REDIS_PORT=${REDIS_PORT:-6390}
KV_PORT=${KV_PORT:-6391}
TYPED_PORT=${TYPED_PORT:-7391}
SERVER_CORE=${SERVER_CORE:-0}
CLIENT_CORE=${CLIENT_CORE:-1}
N_P16=${N_P16:-2000000}
N_P1=${N_P1:-300000}
KEYSPACE=${KEYSPACE:-100000}
ROUNDS=${ROUNDS:-1}
CLIENTS=50
VALUE_BYTES=64

if [ "$(nproc)" -lt 2 ]; then
    echo "kv.sh: needs two CPUs (server on one, benchmark on the other)" >&2
    exit 1
fi
if ! command -v redis-server >/dev/null || ! command -v redis-benchmark >/dev/null; then
    echo "== installing redis-server and redis-tools (.ci/setup.sh)"
    .ci/setup.sh
fi

echo "== building kv-node and kv-client (release)"
cargo build --release -p ringwire-examples --bin kv-node --bin kv-client
BIN=$(release_bin_dir)

WORK=$(mktemp -d)
SERVER_PID=""
stop_server() {
    stop_pid "$SERVER_PID" "kv.sh: server"
    SERVER_PID=""
}
cleanup() {
    stop_server
    rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

IDLE_ARGS=()
if [ -n "${IDLE:-}" ]; then
    IDLE_ARGS=(--idle "$IDLE")
fi

# wait_ready PORT: until the server answers PING (10 s at most).
wait_ready() {
    local port=$1
    for _ in $(seq 100); do
        if ! kill -0 "$SERVER_PID" 2>/dev/null; then
            echo "kv.sh: the server exited before answering on port $port" >&2
            cat "$WORK/server.log" >&2 || true
            exit 1
        fi
        if [ "$(redis-cli -p "$port" PING 2>/dev/null)" = PONG ]; then
            return 0
        fi
        sleep 0.1
    done
    echo "kv.sh: nothing answers on port $port after 10 s" >&2
    exit 1
}

start_server() {
    case $1 in
    redis)
        taskset -c "$SERVER_CORE" redis-server --port "$REDIS_PORT" --bind 127.0.0.1 \
            --save '' --appendonly no --dir "$WORK" >"$WORK/server.log" 2>&1 &
        SERVER_PID=$!
        wait_ready "$REDIS_PORT"
        ;;
    kv1)
        taskset -c "$SERVER_CORE" "$BIN/kv-node" --cores 1 --listen "tcp://127.0.0.1:$KV_PORT" \
            --listen-typed "tcp://127.0.0.1:$TYPED_PORT" \
            "${IDLE_ARGS[@]}" >"$WORK/server.log" 2>&1 &
        SERVER_PID=$!
        wait_ready "$KV_PORT"
        ;;
    kv2)
        "$BIN/kv-node" --cpus "$SERVER_CORE,$CLIENT_CORE" --listen "tcp://127.0.0.1:$KV_PORT" \
            --listen-typed "tcp://127.0.0.1:$TYPED_PORT" \
            "${IDLE_ARGS[@]}" >"$WORK/server.log" 2>&1 &
        SERVER_PID=$!
        wait_ready "$KV_PORT"
        ;;
    esac
}

# bench PORT PIPELINE REQUESTS: prints "SET rps" and "GET rps".
bench() {
    local port=$1 pipeline=$2 requests=$3
    timeout 600 taskset -c "$CLIENT_CORE" redis-benchmark -h 127.0.0.1 -p "$port" \
        -t set,get -c "$CLIENTS" -d "$VALUE_BYTES" -r "$KEYSPACE" -P "$pipeline" \
        -n "$requests" --csv 2>/dev/null |
        awk -F'","' 'NR > 1 { gsub(/"/, "", $1); print $1, $2 }'
}

# bench_typed DEPTH REQUESTS: prints "SET ops/s" and "GET ops/s" from
# kv-client over the typed listener.
bench_typed() {
    local depth=$1 requests=$2 test ratio ops
    for test in SET GET; do
        ratio=0
        [ "$test" = GET ] && ratio=1
        ops=$(timeout 600 "$BIN/kv-client" --node "tcp://127.0.0.1:$TYPED_PORT" bench \
            --cpus "$CLIENT_CORE" --connections "$CLIENTS" --depth "$depth" \
            --requests "$requests" --get-ratio "$ratio" --keys "$KEYSPACE" \
            --value-size "$VALUE_BYTES" | grep -o 'ops/s: [0-9]*' | cut -d' ' -f2)
        echo "$test ${ops:-0}"
    done
}

# Rounds interleave the servers, so that drift in the machine's load touches
# all of them alike; each figure is the best of its rounds.
declare -A RPS
for round in $(seq "$ROUNDS"); do
    for server in redis kv1 kv2; do
        port=$KV_PORT
        [ "$server" = redis ] && port=$REDIS_PORT
        echo "== round $round: $server"
        start_server "$server"
        for pipeline in 16 1; do
            requests=$N_P16
            [ "$pipeline" = 1 ] && requests=$N_P1
            while read -r test rps; do
                best=${RPS[$server,$test,$pipeline]:-0}
                if awk -v a="$rps" -v b="$best" 'BEGIN { exit !(a > b) }'; then
                    RPS[$server,$test,$pipeline]=$rps
                fi
                printf '   %-4s P%-2s %12.0f requests/s\n' "$test" "$pipeline" "$rps"
            done < <(bench "$port" "$pipeline" "$requests")
            [ "$server" = redis ] && continue
            while read -r test rps; do
                best=${RPS[$server-typed,$test,$pipeline]:-0}
                if awk -v a="$rps" -v b="$best" 'BEGIN { exit !(a > b) }'; then
                    RPS[$server-typed,$test,$pipeline]=$rps
                fi
                printf '   %-4s D%-2s %12.0f ops/s (typed)\n' "$test" "$pipeline" "$rps"
            done < <(bench_typed "$pipeline" "$requests")
        done
        # Still answering after the load, and holding the keys it was given.
        echo "   DBSIZE after the runs: $(redis-cli -p "$port" DBSIZE)"
        stop_server
    done
done

ratio() {
    awk -v a="$1" -v b="$2" 'BEGIN { if (b > 0) printf "%.2fx", a / b; else print "-" }'
}

echo
echo "CPU: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//')"
echo "load while measuring: $(uptime | sed 's/.*load average/load average/')"
echo "redis-benchmark -t set,get -c $CLIENTS -d $VALUE_BYTES -r $KEYSPACE -P {16,1} -n {$N_P16,$N_P1} on core $CLIENT_CORE; best of $ROUNDS rounds"
echo "redis-server $(redis-server --version | grep -o 'v=[^ ]*' | cut -c3-) (--save '' --appendonly no) and kv-node x1 on core $SERVER_CORE; kv-node x2 on cores $SERVER_CORE,$CLIENT_CORE"
echo
echo "| test | pipeline | redis-server | kv-node x1 | x1 / redis | kv-node x2 (shares a core) | x2 / redis |"
echo "|------|---------:|-------------:|-----------:|-----------:|---------------------------:|-----------:|"
for pipeline in 16 1; do
    for test in SET GET; do
        r=${RPS[redis,$test,$pipeline]:-0}
        k1=${RPS[kv1,$test,$pipeline]:-0}
        k2=${RPS[kv2,$test,$pipeline]:-0}
        printf '| %s | %s | %.0f | %.0f | %s | %.0f | %s |\n' "$test" "$pipeline" "$r" "$k1" \
            "$(ratio "$k1" "$r")" "$k2" "$(ratio "$k2" "$r")"
    done
done

echo
echo "kv-client bench --connections $CLIENTS --depth {16,1} --value-size $VALUE_BYTES --keys $KEYSPACE on core $CLIENT_CORE, same nodes"
echo
echo "| test | in flight per connection | kv-node x1 Redis | x1 typed | typed / Redis | kv-node x2 Redis | x2 typed | typed / Redis |"
echo "|------|-------------------------:|-----------------:|---------:|--------------:|-----------------:|---------:|--------------:|"
for pipeline in 16 1; do
    for test in SET GET; do
        k1=${RPS[kv1,$test,$pipeline]:-0}
        t1=${RPS[kv1-typed,$test,$pipeline]:-0}
        k2=${RPS[kv2,$test,$pipeline]:-0}
        t2=${RPS[kv2-typed,$test,$pipeline]:-0}
        printf '| %s | %s | %.0f | %.0f | %s | %.0f | %.0f | %s |\n' "$test" "$pipeline" "$k1" "$t1" \
            "$(ratio "$t1" "$k1")" "$k2" "$t2" "$(ratio "$t2" "$k2")"
    done
done
