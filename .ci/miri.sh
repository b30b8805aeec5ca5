#!/usr/bin/env bash
# Runs the runtime's pure-memory unit tests under miri with strict provenance
# (undefined behaviour, data races, weak-memory effects, leaks): the mailbox
# ring, the operation lifecycle's transitions, the user_data tags, the scoped
# thread-locals, the buffer types, the counters and the start-up errors.
# Runnable locally and in CI; installs miri into the nightly toolchain if it
# is missing.
#   .ci/miri.sh            # all of the above
#   .ci/miri.sh wrap       # only tests whose name contains "wrap"
set -euo pipefail
cd "$(dirname "$0")/.."

if ! cargo +nightly miri --version >/dev/null 2>&1; then
    rustup component add --toolchain nightly miri rust-src
fi

export MIRIFLAGS="-Zmiri-strict-provenance ${MIRIFLAGS:-}"

if [ "$#" -gt 0 ]; then
    filters=("$@")
else
    filters=(mailbox driver::lifecycle driver::tags scoped buf:: stats:: error::)
fi
cargo +nightly miri test -p ringwire-runtime --lib -- "${filters[@]}"
cargo +nightly miri test -p ringwire-ring --lib -- "${@}"
