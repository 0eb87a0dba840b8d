#!/usr/bin/env bash
# Create the project environment .venv/ at the repository root, or reuse it.
#
#   bash tools/setup_env.sh        (called by tools/demo.sh, tools/run_tests.sh)
#
# Installs requirements/{runtime,tests,integrations}.txt under the tested
# pins of requirements/constraints.txt, then the package itself in editable
# mode. A stamp file in .venv/ holds a hash of those files: when it matches,
# nothing is installed (fast path). An existing .venv/ is never recreated;
# it is only completed (pip skips what is already installed).
#
# Environment: PYTHON (interpreter that creates .venv, default python3),
# MMSEG_DIDB_VENV (environment folder, default <repo>/.venv).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${MMSEG_DIDB_VENV:-$ROOT/.venv}"
PYTHON="${PYTHON:-python3}"
STAMP="$VENV/.mmseg_didb_setup"

cd "$ROOT"
# what the environment is built from: the pins, the build script and the
# C++ sources of the kernels (a change rebuilds them)
REQS=(requirements/constraints.txt requirements/runtime.txt
      requirements/tests.txt requirements/integrations.txt
      requirements/build.txt setup.py
      mmseg_didb/deploy/csrc/*)
WANT="$(cat "${REQS[@]}" | sha256sum | cut -d' ' -f1)"

up_to_date() {
    [ -x "$VENV/bin/python" ] && [ -f "$STAMP" ] &&
        [ "$(cat "$STAMP")" = "$WANT" ]
}

if up_to_date; then
    exit 0
fi

# One setup at a time (the demo and the tests may start together).
LOCK="${TMPDIR:-/tmp}/mmseg_didb-setup-$(printf '%s' "$VENV" | sha256sum | cut -c1-12).lock"
if command -v flock >/dev/null 2>&1; then
    exec 9>"$LOCK"
    flock 9
    if up_to_date; then
        exit 0
    fi
fi

start=$(date +%s)
if [ ! -x "$VENV/bin/python" ]; then
    if ! command -v "$PYTHON" >/dev/null 2>&1; then
        echo "setup_env: '$PYTHON' not found; install Python 3.11 or set PYTHON=/path/to/python3" >&2
        exit 1
    fi
    pyver="$("$PYTHON" -c 'import sys; print("%d.%d" % sys.version_info[:2])')"
    if [ "$pyver" != "3.11" ]; then
        echo "setup_env: warning: the lock (requirements/constraints.txt) is tested on Python 3.11, '$PYTHON' is $pyver" >&2
    fi
    echo "setup_env: creating $VENV with $PYTHON ($pyver)"
    if ! "$PYTHON" -m venv "$VENV"; then
        echo "setup_env: '$PYTHON -m venv' failed; on Debian/Ubuntu install python3-venv (apt-get install python3-venv)" >&2
        exit 1
    fi
fi

echo "setup_env: installing the tested stack into $VENV (pinned by requirements/constraints.txt)"
"$VENV/bin/python" -m pip install --disable-pip-version-check \
    -c requirements/constraints.txt \
    -r requirements/runtime.txt -r requirements/tests.txt \
    -r requirements/integrations.txt \
    -r requirements/build.txt
# The package itself, editable: no dependencies (all pinned above) and no
# build isolation (setuptools and torch are already in the environment). This
# also compiles the C++ kernels (mmseg_didb/deploy/_C*.so, about 1-2 minutes)
# against the installed torch.
echo "setup_env: building the package and its C++ kernels"
"$VENV/bin/python" -m pip install --disable-pip-version-check \
    --no-deps --no-build-isolation -e "$ROOT"
"$VENV/bin/python" -c "from mmseg_didb.deploy import kernels_available, \
kernel_variant; assert kernels_available(), 'the C++ kernels did not build'; \
print('setup_env: C++ kernels ready (' + kernel_variant() + ')')"

echo "$WANT" > "$STAMP"
echo "setup_env: environment ready in $(( $(date +%s) - start )) s ($VENV)"
