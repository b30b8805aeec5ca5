#!/usr/bin/env bash
# Installs what building ringwire-transports with `--features rdma` needs on a
# fresh Debian machine. Idempotent and quiet when everything is already there.
#
# The `rdma` feature links libibverbs through the `ibverbs-sys` crate, whose
# build script configures its vendored rdma-core with cmake (to produce the
# header tree; nothing of rdma-core is compiled) and runs bindgen over it:
#   libibverbs-dev     libibverbs.so to link against (rdma-core's library)
#   ibverbs-providers  the user-space device drivers (mlx5, rxe, ...) loaded at run time
#   cmake              configures the vendored rdma-core
#   pkg-config, libnl-3-dev, libnl-route-3-dev, python3
#                      what rdma-core's cmake configuration insists on
#   libclang-dev       bindgen's libclang
#   gcc                the C compiler cmake probes
#
# No RDMA device is needed to build or to run the tests (they use the
# in-memory fabric, and the device tests check the clear "no device" error).
# To run against a real stack without RDMA hardware, on a kernel with the
# rdma_rxe module: `rdma link add rxe0 type rxe netdev <interface>`.
set -euo pipefail

need_apt=()
have_pkg() {
    dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q 'install ok installed'
}
for pkg in libibverbs-dev ibverbs-providers cmake pkg-config libnl-3-dev libnl-route-3-dev \
    libclang-dev gcc; do
    have_pkg "$pkg" || need_apt+=("$pkg")
done
# rdma-core's cmake needs a Python 3 interpreter; any one on PATH does.
command -v python3 >/dev/null 2>&1 || need_apt+=(python3)

if [ "${#need_apt[@]}" -gt 0 ]; then
    echo "== installing Debian packages for the rdma feature: ${need_apt[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
        "${need_apt[@]}" >/dev/null
fi
