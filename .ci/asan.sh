#!/usr/bin/env bash
# AddressSanitizer over the runtime's and the transports' tests: buffer
# rings, registered and lent buffers, the operation lifecycle, messages read
# in place, connections freed (LeakSanitizer runs at each test binary's
# exit). Like .ci/tsan.sh: nightly with rust-src (installed here when
# missing), std rebuilt with the sanitizer (-Zbuild-std) so that its
# allocations are checked too, a target directory of its own. Each cargo
# run is bounded (ASAN_STEP_SECONDS, default 900). Runnable locally and in CI:
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
export ASAN_OPTIONS="${ASAN_OPTIONS:-halt_on_error=1 detect_leaks=1 detect_stack_use_after_return=1}"
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
run -p ringwire-runtime --lib --test mailbox_stress --test runtime --test mailbox_runtime \
    --test bufpath --test handle --test stream_io --test udp
run -p ringwire-transports --lib --test stream --test mem --test handle --test held_reader \
    --test resume --test keepalive --test pool --test hostile --test soak
