#!/usr/bin/env bash
# mmseg's tools/slurm_test.sh: bash tools/slurm_test.sh PARTITION JOB_NAME CONFIG CHECKPOINT [test.py args...]
# (see tools/launch.sh for the environment variables).
exec bash "$(dirname "${BASH_SOURCE[0]}")/launch.sh" slurm test "$@"
