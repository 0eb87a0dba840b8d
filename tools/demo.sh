#!/usr/bin/env bash
# The demo: build the texture-mosaic dataset (if missing), train the demo model
# on CPU with tools/train.py, evaluate it with tools/test.py, and write a
# picture (image | ground truth | prediction) to the work dir.
#
#   bash tools/demo.sh [extra tools/train.py args, e.g. --cfg-options ...]
#
# Environment: DEMO_CONFIG (default configs/demo_texture.py), WORK_DIR
# (default work_dirs/demo_texture), DATA_DIR (default data/texture_mosaic,
# the config's data_root).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$ROOT/tools/setup_env.sh"
cd "$ROOT"

PY="${MMSEG_DIDB_VENV:-$ROOT/.venv}/bin/python"
CONFIG="${DEMO_CONFIG:-configs/demo_texture.py}"
WORK_DIR="${WORK_DIR:-work_dirs/demo_texture}"
DATA_DIR="${DATA_DIR:-data/texture_mosaic}"
# One BLAS/OpenMP thread per core.
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-$(nproc 2>/dev/null || echo 2)}"
export MKL_NUM_THREADS="${MKL_NUM_THREADS:-$OMP_NUM_THREADS}"
# Idle OpenMP threads sleep instead of spinning: with spinning, a CPU shared
# with other jobs slows multi-threaded training down many times over.
export OMP_WAIT_POLICY="${OMP_WAIT_POLICY:-PASSIVE}"

t0=$(date +%s)
echo "== [1/5] dataset: $DATA_DIR"
"$PY" tools/make_texture_dataset.py "$DATA_DIR"
t1=$(date +%s)

echo "== [2/5] train: $CONFIG -> $WORK_DIR"
# A fresh run each time: old checkpoints of this work dir are dropped.
rm -f "$WORK_DIR"/iter_*.pth "$WORK_DIR"/last_checkpoint
"$PY" tools/train.py "$CONFIG" --work-dir "$WORK_DIR" \
    --cfg-options "train_dataloader.dataset.data_root=$DATA_DIR" \
    "val_dataloader.dataset.data_root=$DATA_DIR" \
    "test_dataloader.dataset.data_root=$DATA_DIR" "$@"
CKPT="$(cat "$WORK_DIR/last_checkpoint")"
t2=$(date +%s)

echo "== [3/5] test: $CKPT"
TEST_LOG="$WORK_DIR/test_output.log"
"$PY" tools/test.py "$CONFIG" "$CKPT" --work-dir "$WORK_DIR/test" \
    --cfg-options "test_dataloader.dataset.data_root=$DATA_DIR" \
    2>&1 | tee "$TEST_LOG"
t3=$(date +%s)

echo "== [4/5] picture"
PICTURE="$WORK_DIR/demo_predictions.png"
"$PY" tools/visualize_demo.py "$CONFIG" "$CKPT" --out "$PICTURE" \
    --cfg-options "test_dataloader.dataset.data_root=$DATA_DIR"
t4=$(date +%s)

echo "== [5/5] deploy: the bit-packed model, checked and timed"
DEPLOY_LOG="$WORK_DIR/deploy_output.log"
"$PY" tools/deploy.py "$CONFIG" "$CKPT" --out "$WORK_DIR/demo_packed.pth" \
    --cfg-options "val_dataloader.dataset.data_root=$DATA_DIR" \
    2>&1 | tee "$DEPLOY_LOG"
t5=$(date +%s)

metrics="$(grep -Eo 'aAcc: [0-9.]+ +mIoU: [0-9.]+ +mAcc: [0-9.]+' "$TEST_LOG" | tail -1)"
speed="$(grep -Eo 'inference per image: .*' "$DEPLOY_LOG" | tail -1)"
agree="$(grep -Eo 'pixel argmax agreement: [0-9.]+%' "$DEPLOY_LOG" | tail -1)"
echo
echo "================ demo finished ================"
echo "model:      $CONFIG (checkpoint $CKPT)"
echo "validation: ${metrics:-metrics not found, see $TEST_LOG}"
echo "picture:    $PICTURE (image | ground truth | prediction)"
echo "deployment: ${speed:-see $DEPLOY_LOG}"
echo "            packed vs fake-quantized ${agree:-?} (1-bit file: $WORK_DIR/demo_packed.pth)"
echo "time:       dataset $((t1 - t0)) s, train $((t2 - t1)) s, test $((t3 - t2)) s, picture $((t4 - t3)) s, deploy $((t5 - t4)) s, total $((t5 - t0)) s"
