"""Train a segmentor: mmseg's own ``tools/train.py`` with the plugin.

    python tools/train.py CONFIG [--work-dir DIR] [--resume] [--amp]
        [--cfg-options k=v ...] [--launcher {none,pytorch,slurm,mpi}]
        [--unsafe-load]

The arguments are mmseg 1.2.2's (its script, shipped in the mmsegmentation
wheel, runs unchanged); the plugin is imported first, so every config can use
its types and the compatibility fixes apply (``--amp`` trains in bfloat16 on
a machine without GPU; ``--launcher pytorch`` runs on CPUs with gloo).
``--unsafe-load`` (plugin) lets ``load_from`` / ``--resume`` fully unpickle a
trusted checkpoint that weights-only loading refuses.
"""
import os.path as osp
import sys

# the repository root on the path: also works from a checkout that was not
# pip-installed
sys.path.insert(0, osp.dirname(osp.dirname(osp.abspath(__file__))))
import mmseg_didb  # noqa: E402,F401

from mmseg_didb.engine.mmseg_tools import (plugin_parser,  # noqa: E402
                                           run_mmseg_tool)


def main(argv=None) -> None:
    run_mmseg_tool('train', plugin_parser('Train a segmentor'), argv)


if __name__ == '__main__':
    main()
