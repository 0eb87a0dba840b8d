#!/usr/bin/env bash
# mmseg's tools/dist_train.sh: bash tools/dist_train.sh CONFIG GPUS [train.py args...]
# (see tools/launch.sh for the environment variables).
exec bash "$(dirname "${BASH_SOURCE[0]}")/launch.sh" dist train "$@"
