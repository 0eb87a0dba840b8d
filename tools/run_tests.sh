#!/usr/bin/env bash
# Run the test suite in the project environment (created on first use).
#
#   bash tools/run_tests.sh [pytest args...]     e.g. -k dataset -x -q
#   bash tools/run_tests.sh tests/test_dataset.py -q   (only that file)
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$ROOT/tools/setup_env.sh"
# the cross compiler and qemu-user of the ARM kernel test (where possible)
bash "$ROOT/tools/setup_cross.sh"
cd "$ROOT"

# One BLAS/OpenMP thread per core, at most 4 (small test models gain nothing
# from more).
ncpu="$(nproc 2>/dev/null || echo 2)"
threads=$(( ncpu < 4 ? ncpu : 4 ))
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-$threads}"
export MKL_NUM_THREADS="${MKL_NUM_THREADS:-$OMP_NUM_THREADS}"
# Idle OpenMP threads sleep instead of spinning: with spinning, a CPU shared
# with other jobs slows multi-threaded training down many times over.
export OMP_WAIT_POLICY="${OMP_WAIT_POLICY:-PASSIVE}"

# Default target: tests/. When test paths are given (tests/test_x.py,
# tests/test_x.py::test_y), only those run.
target=(tests)
for arg in "$@"; do
    if [[ "$arg" != -* && -e "${arg%%::*}" ]]; then
        target=()
        break
    fi
done
exec "${MMSEG_DIDB_VENV:-$ROOT/.venv}/bin/python" -m pytest "${target[@]}" "$@"
