#!/usr/bin/env bash
# TLS request/reply comparison: ringwire's tls:// against tokio with
# tokio-rustls and LengthDelimitedCodec, the typed benchmark's messages (1 KiB
# requests and replies by default) over TLS 1.3, the same rustls release and
# crypto provider (ring) under both, and one cipher suite forced on both
# sides (TLS13_AES_128_GCM_SHA256, see benches/src/tls.rs). Certificates for
# localhost are made with openssl in a temporary directory. Target: ringwire
# serves at least 1.1x the messages per server CPU-second.
#
# This is typed.sh with TRANSPORTS=tls, STACKS="ringwire tokio",
# WORKLOADS=rr; every typed.sh setting applies (DURATION, REPEAT, CONNS,
# DEPTH, SIZE, PP_SIZE, SERVER_CORE, CLIENT_CORE, BASE_PORT, NO_BUILD).
#
# Usage: ./benches/tls.sh
#        DURATION=2 REPEAT=3 ./benches/tls.sh
set -euo pipefail

cd "$(dirname "$0")/.."
export STACKS="${STACKS:-ringwire tokio}"
export TRANSPORTS=tls
export WORKLOADS=rr
exec benches/typed.sh "$@"
