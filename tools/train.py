"""Train a model: mmseg's own ``tools/train.py`` with the plugin (or
mmpretrain's / mmdet's for a config of theirs: configs/pretrain/,
configs/det/).

    python tools/train.py CONFIG [--work-dir DIR] [--resume] [--amp]
        [--cfg-options k=v ...] [--launcher {none,pytorch,slurm,mpi}]
        [--unsafe-load]

The arguments are mmseg 1.2.2's (its script, shipped in the mmsegmentation
wheel, runs unchanged; for a config whose ``default_scope`` is mmpretrain or
mmdet, that toolbox's script and arguments); the plugin is imported first, so every config can use
its types and the compatibility fixes apply (``--amp`` trains in bfloat16 on
a machine without GPU; ``--launcher pytorch`` runs on CPUs with gloo).
``--unsafe-load`` (plugin) lets ``load_from`` / ``--resume`` fully unpickle a
trusted checkpoint that weights-only loading refuses. Checkpoints are
written atomically (``SafeCheckpointHook`` in place of the config's
``CheckpointHook``), and ``--resume`` skips an unreadable last checkpoint
for the newest readable one, with a warning
(``mmseg_didb.engine.checkpoint``).
"""
import os.path as osp
import sys

# the repository root on the path: also works from a checkout that was not
# pip-installed
sys.path.insert(0, osp.dirname(osp.dirname(osp.abspath(__file__))))
import mmseg_didb  # noqa: E402,F401

from mmseg_didb.engine import safe_checkpoints  # noqa: E402
from mmseg_didb.engine.mmseg_tools import (  # noqa: E402
    plugin_parser, run_openmmlab_tool)


def main(argv=None) -> None:
    with safe_checkpoints():
        run_openmmlab_tool('train', plugin_parser('Train a model'), argv)


if __name__ == '__main__':
    main()
