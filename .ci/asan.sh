#!/usr/bin/env bash
# AddressSanitizer over the runtime's and the transports' tests: buffer
# rings, registered and lent buffers, the operation lifecycle, messages read
# in place, the hostile-peer suite and the soak. Like .ci/tsan.sh: nightly
# with rust-src (installed here when missing), std rebuilt with the
# sanitizer (-Zbuild-std) so that its allocations are checked too, a target
# directory of its own. Each cargo run is bounded (ASAN_STEP_SECONDS,
# default 900). Runnable locally and in CI:
#   .ci/asan.sh                                   # everything below
#   .ci/asan.sh -p ringwire-transports --test hostile   # any cargo test arguments
set -euo pipefail
cd "$(dirname "$0")/.."

if ! rustup toolchain list | grep -q '^nightly'; then
    rustup toolchain install nightly --profile minimal
fi
if ! rustup component list --toolchain nightly --installed | grep -q '^rust-src'; then
    rustup component add --toolchain nightly rust-src
fi

host="$(rustc +nightly -vV | sed -n 's/^host: //p')"
export RUSTFLAGS="${RUSTFLAGS:-} -Zsanitizer=address"
export RUSTDOCFLAGS="${RUSTDOCFLAGS:-} -Zsanitizer=address"
# A sanitized build shares nothing with the normal one: keep it apart.
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-target/asan}"
# Stop at the first report; the exit status then fails the run.
# LeakSanitizer is off by default: the runtime leaks a few allocations by
# design (each core's 8-byte eventfd read buffer, which the kernel may
# still write after the core ends; a lifecycle test that leaks on purpose),
# and the suites check what matters themselves (connections freed, buffer
# pools full again, fds back). ASAN_DETECT_LEAKS=1 turns it on, with those
# suppressed where a stack names them.
export ASAN_OPTIONS="${ASAN_OPTIONS:-halt_on_error=1 detect_leaks=${ASAN_DETECT_LEAKS:-0} detect_stack_use_after_return=1}"
mkdir -p "$CARGO_TARGET_DIR"
supp="$(cd "$CARGO_TARGET_DIR" && pwd)/lsan.supp"
printf '%s\n' 'leak:driver::lifecycle::tests::leaking_keeps_resources_alive' \
    'leak:eventfd_read' >"$supp"
export LSAN_OPTIONS="${LSAN_OPTIONS:-suppressions=$supp print_suppressions=0}"
step="${ASAN_STEP_SECONDS:-900}"
# The soak runs 10 s here unless told otherwise (it checks counts, not rates).
export RINGWIRE_SOAK_SECS="${ASAN_SOAK_SECS:-10}"

run() {
    echo "asan: $*"
    timeout "$step" nice -n 10 cargo +nightly test -Zbuild-std --target "$host" "$@"
}

if [ "$#" -gt 0 ]; then
    run "$@"
    exit 0
fi
run -p ringwire-ring --lib --test stress
run -p ringwire-runtime --lib --test runtime --test mailbox_runtime \
    --test bufpath --test handle --test stream_io --test udp --test core_fault
# Not resume.rs: its relay starts cutting at once, and under the
# sanitizer's slowdown the first connect (which does not reconnect) can be
# cut during its handshake.
run -p ringwire-transports --lib --test stream --test mem --test handle --test held_reader \
    --test keepalive --test pool --test hostile --test soak --test starvation --test broadcast
