#!/usr/bin/env bash
# mmseg's tools/dist_test.sh: bash tools/dist_test.sh CONFIG CHECKPOINT GPUS [test.py args...]
# (see tools/launch.sh for the environment variables).
exec bash "$(dirname "${BASH_SOURCE[0]}")/launch.sh" dist test "$@"
