#!/usr/bin/env bash
# Bounded fuzz run of every parser that takes a peer's bytes:
# ringwire-proto's decoder, handshake and session; the transports' endpoint
# syntax, RDMA side-channel exchange and udp:// datagrams; kv-node's RESP
# parser. Installs what it needs: the nightly toolchain's rust-src,
# cargo-fuzz, and the rdma feature's build dependencies (.ci/setup-rdma.sh).
# Usage: .ci/fuzz.sh [seconds-per-target]   (default 60)
set -euo pipefail

cd "$(dirname "$0")/.."
SECONDS_PER_TARGET="${1:-${FUZZ_SECONDS:-60}}"

if ! rustup toolchain list | grep -q '^nightly'; then
    rustup toolchain install nightly --profile minimal
fi
if ! rustup component list --toolchain nightly --installed | grep -q '^rust-src'; then
    rustup component add --toolchain nightly rust-src
fi
if ! cargo fuzz --version >/dev/null 2>&1; then
    cargo install cargo-fuzz --locked
fi

.ci/setup-rdma.sh

cd fuzz
for target in decoder handshake session endpoint resp rdma_sidechannel udp_datagram; do
    echo "== fuzzing ${target} for ${SECONDS_PER_TARGET}s"
    mkdir -p "corpus/${target}"
    # -rss_limit_mb bounds memory; -max_len keeps inputs to a few frames.
    nice -n 10 cargo +nightly fuzz run "${target}" "corpus/${target}" -- \
        -max_total_time="${SECONDS_PER_TARGET}" -max_len=8192 -rss_limit_mb=2048 \
        -print_final_stats=1
done
echo "fuzz: all targets ran ${SECONDS_PER_TARGET}s without a crash"
