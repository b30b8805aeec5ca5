#!/usr/bin/env bash
# UDP quotes benchmark: 64-byte market-data quotes over udp://, unicast and
# multicast, sender and receiver pinned to different cores of one runtime
# (benches/src/bin/udp-quotes.rs). For each target:
#
#   - flat out, 32 quotes per loop turn, sent as UDP GSO runs and as one
#     SENDMSG per datagram: quotes/s received, the share the receiver lost
#     (its socket buffer overflowed: the sender is faster), and each side's
#     CPU time per quote;
#   - paced at RATE quotes/s, one at a time: one-way latency p50/p99.
#
# Multicast runs inside a network namespace this script creates (loopback
# with multicast on and a route for 224.0.0.0/4), so the host's interfaces
# are untouched; that needs root and `ip`, and is skipped with the reason
# otherwise. Prints the CPU model and one table.
#
# Usage: ./benches/udp.sh
# Environment: SENDER_CPU (0), RECEIVER_CPU (1), DURATION (3), WARMUP (1),
#              RATE (100000), IDLE (park; spin or poll for lower latency).
set -euo pipefail

cd "$(dirname "$0")/.."
# shellcheck source=benches/lib.sh
. benches/lib.sh
SENDER_CPU=${SENDER_CPU:-0}
RECEIVER_CPU=${RECEIVER_CPU:-1}
DURATION=${DURATION:-3}
WARMUP=${WARMUP:-1}
RATE=${RATE:-100000}
IDLE=${IDLE:-park}
if [ "$(nproc)" -lt 2 ] && [ "$RECEIVER_CPU" = 1 ]; then
    echo "udp.sh: only one core; sender and receiver share core 0" >&2
    RECEIVER_CPU=0
fi

echo "== building (release)"
cargo build --release -p ringwire-benches --bin udp-quotes
BIN=$(release_bin_dir)/udp-quotes

NS=""
cleanup() {
    if [ -n "$NS" ]; then
        ip netns del "$NS" 2>/dev/null || true
    fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

RESULTS=()
# run TARGET MODE RATE [netns]: one run; its RESULT line goes to RESULTS.
run() {
    local target=$1 mode=$2 rate=$3 ns=${4:-}
    local cmd=("$BIN" --target "$target" --send-mode "$mode" --rate "$rate" --batch 32
        --duration "$DURATION" --warmup "$WARMUP" --idle "$IDLE"
        --cpus "$SENDER_CPU,$RECEIVER_CPU")
    if [ -n "$ns" ]; then
        cmd=(ip netns exec "$ns" "${cmd[@]}")
    fi
    echo "== $target, $mode, rate ${rate:-0} (0 = flat out)"
    local out
    if ! out=$("${cmd[@]}" 2>&1); then
        echo "$out" >&2
        echo "udp.sh: the $target $mode run failed" >&2
        exit 1
    fi
    echo "$out" | grep -v '^RESULT' | grep -v '^cpu:'
    RESULTS+=("$(echo "$out" | grep '^RESULT')")
}

run unicast gso 0
run unicast per-datagram 0
run unicast gso "$RATE"

MULTICAST_SKIPPED=""
if [ "$(id -u)" != 0 ]; then
    MULTICAST_SKIPPED="needs root to create a network namespace"
elif ! command -v ip >/dev/null; then
    MULTICAST_SKIPPED="the ip command is missing"
else
    NS="rwbench-udp-$$"
    if ip netns add "$NS" && ip -n "$NS" link set lo up &&
        ip -n "$NS" link set lo multicast on &&
        ip -n "$NS" route add 224.0.0.0/4 dev lo; then
        run multicast gso 0 "$NS"
        run multicast per-datagram 0 "$NS"
        run multicast gso "$RATE" "$NS"
    else
        MULTICAST_SKIPPED="could not set up network namespace $NS"
    fi
fi

# field NAME LINE: the value of NAME=... in a RESULT line.
field() {
    echo "$2" | tr ' ' '\n' | grep "^$1=" | cut -d= -f2
}

echo
echo "CPU: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//')"
echo "sender on CPU $SENDER_CPU, receiver on CPU $RECEIVER_CPU, idle $IDLE, ${DURATION}s measured after ${WARMUP}s warm-up, 64-byte datagrams"
echo
printf '%-10s %-13s %9s %12s %7s %9s %9s %11s %11s\n' \
    target send rate quotes/s lost% p50_us p99_us send_ns/q recv_ns/q
for line in "${RESULTS[@]}"; do
    sent=$(field sent "$line")
    lost=$(field lost "$line")
    rate=$(field rate "$line")
    lost_pct=$(awk -v l="$lost" -v s="$sent" 'BEGIN { if (s > 0) printf "%.1f", 100 * l / s; else print "-" }')
    if [ "$rate" = 0 ]; then
        rate_s="flat-out"
        p50="-"
        p99="-"
        send_ns=$(field sender_ns_per_quote "$line")
    else
        rate_s=$rate
        p50=$(field p50_us "$line")
        p99=$(field p99_us "$line")
        send_ns="(spins)"
    fi
    printf '%-10s %-13s %9s %12s %7s %9s %9s %11s %11s\n' \
        "$(field target "$line")" "$(field mode "$line")" "$rate_s" \
        "$(field quotes_per_s "$line")" "$lost_pct" "$p50" "$p99" \
        "$send_ns" "$(field receiver_ns_per_quote "$line")"
done
if [ -n "$MULTICAST_SKIPPED" ]; then
    echo "multicast: SKIPPED ($MULTICAST_SKIPPED)"
fi
echo
echo "Flat out, latency is queueing in the receiver's socket buffer and not shown;"
echo "the paced rows give the one-way latency (sender stamp to receiver, one clock)."
