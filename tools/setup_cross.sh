#!/usr/bin/env bash
# The aarch64 cross compiler and qemu-user that tests/test_portable_kernels.py
# builds and runs the portable kernels with (Debian's g++-aarch64-linux-gnu
# and qemu-user). Installed only where missing, with apt-get as root; where
# that is not possible it says why and the ARM test skips. Never fails.
#
#   bash tools/setup_cross.sh      (called by tools/run_tests.sh)
if command -v aarch64-linux-gnu-g++ >/dev/null 2>&1 &&
    { command -v qemu-aarch64 >/dev/null 2>&1 ||
      command -v qemu-aarch64-static >/dev/null 2>&1; }; then
    exit 0
fi
why=""
if ! command -v apt-get >/dev/null 2>&1; then
    why="no apt-get on this machine"
elif [ "$(id -u)" != 0 ]; then
    why="apt-get needs root (run: sudo apt-get install g++-aarch64-linux-gnu qemu-user)"
else
    echo "setup_cross: installing g++-aarch64-linux-gnu and qemu-user (Debian packages) for the ARM kernel test"
    export DEBIAN_FRONTEND=noninteractive
    if ! apt-get install -y -q --no-install-recommends g++-aarch64-linux-gnu \
            libc6-dev-arm64-cross qemu-user >/dev/null 2>&1; then
        apt-get update -q >/dev/null 2>&1 || true
        apt-get install -y -q --no-install-recommends g++-aarch64-linux-gnu \
            libc6-dev-arm64-cross qemu-user >/dev/null 2>&1 ||
            why="apt-get install failed (no package index reachable?)"
    fi
fi
if [ -n "$why" ]; then
    echo "setup_cross: the ARM kernel test will be skipped: $why" >&2
fi
exit 0
