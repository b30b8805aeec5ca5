#!/usr/bin/env bash
# Installs what building and testing ringwire needs on a fresh machine of
# this kind (Debian, rustup with stable and nightly). Idempotent and quiet
# when everything is already there.
set -euo pipefail

need_apt=()
command -v taskset >/dev/null 2>&1 || need_apt+=(util-linux)
command -v cc >/dev/null 2>&1 || need_apt+=(gcc)
# kv-node's integration tests drive it with redis-cli and redis-benchmark;
# benches/kv.sh compares it with a stock redis-server.
command -v redis-benchmark >/dev/null 2>&1 || need_apt+=(redis-tools)
command -v redis-server >/dev/null 2>&1 || need_apt+=(redis-server)
# The ZeroMQ peer of benches/typed.sh links Debian's libzmq (the zmq crate
# finds it through pkg-config when its build script runs, for clippy too).
command -v pkg-config >/dev/null 2>&1 || need_apt+=(pkg-config)
dpkg-query -W -f='${Status}' libzmq3-dev 2>/dev/null | grep -q 'install ok installed' ||
    need_apt+=(libzmq3-dev)
# transports/tests/netfault.rs makes a real network path between two
# network namespaces (ip) and drops packets on it with nftables (nft).
command -v ip >/dev/null 2>&1 || need_apt+=(iproute2)
command -v nft >/dev/null 2>&1 || need_apt+=(nftables)
if [ "${#need_apt[@]}" -gt 0 ]; then
    echo "== installing Debian packages: ${need_apt[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_apt[@]}"
fi

if ! rustup component list --installed 2>/dev/null | grep -q '^clippy'; then
    rustup component add clippy
fi
if ! rustup component list --installed 2>/dev/null | grep -q '^rustfmt'; then
    rustup component add rustfmt
fi
