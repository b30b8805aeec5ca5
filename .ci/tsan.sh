#!/usr/bin/env bash
# ThreadSanitizer over the runtime's cross-thread code: the mailbox ring's
# two-thread stress test and the runtime's integration tests (cores, control
# queues, wakers, mailboxes, doorbells, lent buffers) plus its unit tests.
# Needs the nightly toolchain with rust-src (installed here when missing):
# std is rebuilt with the sanitizer (-Zbuild-std) so that its atomics and
# locks are instrumented too. Runnable locally and in CI:
#   .ci/tsan.sh                 # everything below
#   .ci/tsan.sh -p ringwire-runtime --test runtime   # any cargo test arguments
set -euo pipefail
cd "$(dirname "$0")/.."

if ! rustup toolchain list | grep -q '^nightly'; then
    rustup toolchain install nightly --profile minimal
fi
if ! rustup component list --toolchain nightly --installed | grep -q '^rust-src'; then
    rustup component add --toolchain nightly rust-src
fi

host="$(rustc +nightly -vV | sed -n 's/^host: //p')"
export RUSTFLAGS="${RUSTFLAGS:-} -Zsanitizer=thread"
export RUSTDOCFLAGS="${RUSTDOCFLAGS:-} -Zsanitizer=thread"
# A sanitized build shares nothing with the normal one: keep it apart.
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-target/tsan}"
# Stop at the first report; the exit status then fails the run.
export TSAN_OPTIONS="${TSAN_OPTIONS:-halt_on_error=1 second_deadlock_stack=1}"

if [ "$#" -gt 0 ]; then
    echo "tsan: $*"
    nice -n 10 cargo +nightly test -Zbuild-std --target "$host" "$@"
    exit 0
fi
# The mailbox ring (its own crate): unit tests and the two-thread stress
# test; then the runtime's threaded tests.
echo "tsan: ringwire-ring --lib --test stress"
nice -n 10 cargo +nightly test -Zbuild-std --target "$host" -p ringwire-ring --lib --test stress
targets=(--lib --test runtime --test mailbox_runtime --test bufpath --test handle --test stream_io)
echo "tsan: ringwire-runtime ${targets[*]}"
nice -n 10 cargo +nightly test -Zbuild-std --target "$host" -p ringwire-runtime "${targets[@]}"
