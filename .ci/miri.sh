#!/usr/bin/env bash
# Runs the mailbox ring's unit tests under miri with strict provenance (undefined
# behaviour, data races, weak-memory effects, leaks). Runnable locally and in CI;
# installs miri into the nightly toolchain if it is missing.
#   .ci/miri.sh            # all mailbox unit tests
#   .ci/miri.sh wrap       # only tests whose name contains "wrap"
set -euo pipefail
cd "$(dirname "$0")/.."

if ! cargo +nightly miri --version >/dev/null 2>&1; then
    rustup component add --toolchain nightly miri rust-src
fi

export MIRIFLAGS="-Zmiri-strict-provenance ${MIRIFLAGS:-}"

filter="${1:-mailbox}"
cargo +nightly miri test -p ringwire-runtime --lib "$filter"
cargo +nightly miri test -p ringwire-ring --lib "${1:-}"
