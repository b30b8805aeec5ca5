#!/usr/bin/env bash
# Runs ringwire-proto's tests (codec, session, property tests with few cases)
# under miri with strict provenance. Installs miri when it is missing.
set -euo pipefail

cd "$(dirname "$0")/.."

if ! rustup toolchain list | grep -q '^nightly'; then
    rustup toolchain install nightly --profile minimal
fi
if ! rustup component list --toolchain nightly --installed | grep -q '^miri'; then
    rustup component add --toolchain nightly miri rust-src
fi

# Tree Borrows: rkyv's relative pointers derive the pointer to an archived
# vector's bytes from a reference to the vector's header field and step
# outside it, which Stacked Borrows rejects (inside rkyv's `ArchivedVec::
# as_slice`, not in ringwire code) and Tree Borrows, miri's newer aliasing
# model, accepts.
export MIRIFLAGS="${MIRIFLAGS:--Zmiri-tree-borrows -Zmiri-strict-provenance}"
nice -n 10 cargo +nightly miri setup
nice -n 10 cargo +nightly miri test -p ringwire-proto
