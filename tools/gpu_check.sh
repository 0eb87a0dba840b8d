#!/usr/bin/env bash
# One-command GPU check of the real training job (about 5 minutes on one
# GPU, no download): CUDA tests, fp16 AMP training of the binary and the
# stock Swin-T UPerNet through tools/dist_train.sh (NCCL, SyncBN), a test of
# the checkpoint, step time and peak memory side by side, and a JSON of it
# all. Without a GPU it runs the CPU part, says so and exits 0.
#
#   bash tools/gpu_check.sh [--out work_dirs/gpu_check] [--iters 30]
#
# See tools/gpu_check.py.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$ROOT/tools/setup_env.sh"
cd "$ROOT"
exec "${MMSEG_DIDB_VENV:-$ROOT/.venv}/bin/python" tools/gpu_check.py "$@"
