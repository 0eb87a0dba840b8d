#!/usr/bin/env bash
# mmseg's tools/slurm_train.sh: bash tools/slurm_train.sh PARTITION JOB_NAME CONFIG [train.py args...]
# (see tools/launch.sh for the environment variables).
exec bash "$(dirname "${BASH_SOURCE[0]}")/launch.sh" slurm train "$@"
