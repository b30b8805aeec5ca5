#!/usr/bin/env bash
# Model-checks the runtime's lock-free protocols with loom: every
# interleaving of the `#[cfg(loom)]` tests (modules named `loom_tests`) up to
# LOOM_MAX_PREEMPTIONS preemptions per execution (5 finishes in about a
# minute on a laptop core; unbounded takes far longer):
#   - ringwire-ring (runtime/ring/): the SPSC ring and its park handshake;
#   - mailbox::*: the rest of the mailbox protocols;
#   - mailbox::channel: the typed channel's waiter handshake with both
#     doorbells (MSG_RING completion; eventfd with the pending flag);
#   - remote: the control queue, its wake flag and the eventfd.
# Runnable locally and in CI:
#   .ci/loom.sh                              # all loom tests
#   LOOM_MAX_PREEMPTIONS=3 .ci/loom.sh park  # quicker, one test family
set -euo pipefail
cd "$(dirname "$0")/.."

export RUSTFLAGS="${RUSTFLAGS:-} --cfg loom"
export LOOM_MAX_PREEMPTIONS="${LOOM_MAX_PREEMPTIONS:-5}"
# A `--cfg loom` build shares nothing with the normal one: keep it apart so
# the two do not keep invalidating each other.
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-target/loom}"

filter="${1:-loom_tests}"
echo "loom: LOOM_MAX_PREEMPTIONS=$LOOM_MAX_PREEMPTIONS, filter '$filter'"
cargo test -p ringwire-runtime --release --lib "$filter"
cargo test -p ringwire-ring --release --lib "${1:-}"
