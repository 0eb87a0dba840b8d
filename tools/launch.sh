#!/usr/bin/env bash
# The one launcher of tools/train.py and tools/test.py on several processes;
# tools/dist_{train,test}.sh and tools/slurm_{train,test}.sh (mmseg's names)
# call it.
#
#   bash tools/launch.sh dist train CONFIG GPUS [train.py args...]
#   bash tools/launch.sh dist test CONFIG CHECKPOINT GPUS [test.py args...]
#   bash tools/launch.sh slurm train PARTITION JOB_NAME CONFIG [train.py args...]
#   bash tools/launch.sh slurm test PARTITION JOB_NAME CONFIG CHECKPOINT [test.py args...]
#
# dist: torch.distributed (torchrun), one process per GPU (gloo on CPUs);
#   multi-node with NNODES, NODE_RANK, MASTER_ADDR and PORT set on every node,
#   e.g. NNODES=2 NODE_RANK=0 MASTER_ADDR=10.0.0.1 bash tools/dist_train.sh
#   configs/didb_swin_t_ade20k.py 8.
# slurm: srun, one task per GPU, torch.distributed set up from the Slurm
#   environment by mmengine's --launcher=slurm; GPUS (4), GPUS_PER_NODE (4),
#   CPUS_PER_TASK (5), SRUN_ARGS.
set -euo pipefail

usage() {
    echo "usage:" >&2
    sed -n '6,9p' "${BASH_SOURCE[0]}" | sed 's/^# */  /' >&2
    exit 2
}
[ $# -ge 2 ] || usage
LAUNCHER=$1
TOOL=$2
shift 2
case "$TOOL" in
    train) NPOS=1 ;;  # CONFIG
    test) NPOS=2 ;;   # CONFIG CHECKPOINT
    *) usage ;;
esac
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
if [ -z "${PYTHON:-}" ]; then
    if [ -x "$ROOT/.venv/bin/python" ]; then PYTHON="$ROOT/.venv/bin/python"; else PYTHON=python; fi
fi
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"

case "$LAUNCHER" in
    dist)
        [ $# -ge $((NPOS + 1)) ] || usage
        TOOL_ARGS=("${@:1:NPOS}")
        GPUS=${*:NPOS+1:1}
        shift $((NPOS + 1))
        exec "$PYTHON" -m torch.distributed.run \
            --nnodes="${NNODES:-1}" \
            --node_rank="${NODE_RANK:-0}" \
            --master_addr="${MASTER_ADDR:-127.0.0.1}" \
            --nproc_per_node="$GPUS" \
            --master_port="${PORT:-29500}" \
            "$ROOT/tools/$TOOL.py" "${TOOL_ARGS[@]}" --launcher pytorch "$@"
        ;;
    slurm)
        [ $# -ge $((NPOS + 2)) ] || usage
        PARTITION=$1
        JOB_NAME=$2
        shift 2
        TOOL_ARGS=("${@:1:NPOS}")
        shift "$NPOS"
        GPUS=${GPUS:-4}
        GPUS_PER_NODE=${GPUS_PER_NODE:-4}
        set -x
        # shellcheck disable=SC2086  # SRUN_ARGS is a list of options
        exec srun -p "$PARTITION" \
            --job-name="$JOB_NAME" \
            --gres=gpu:"$GPUS_PER_NODE" \
            --ntasks="$GPUS" \
            --ntasks-per-node="$GPUS_PER_NODE" \
            --cpus-per-task="${CPUS_PER_TASK:-5}" \
            --kill-on-bad-exit=1 \
            ${SRUN_ARGS:-} \
            "$PYTHON" -u "$ROOT/tools/$TOOL.py" "${TOOL_ARGS[@]}" --launcher=slurm "$@"
        ;;
    *) usage ;;
esac
