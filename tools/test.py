"""Test (and evaluate) a segmentor: mmseg's own ``tools/test.py`` with the
plugin. Prints aAcc, mIoU and mAcc (mmseg's IoUMetric) and the per-class
table.

    python tools/test.py CONFIG CHECKPOINT [--work-dir DIR] [--out DIR]
        [--show] [--show-dir DIR] [--wait-time S] [--cfg-options k=v ...]
        [--launcher {none,pytorch,slurm,mpi}] [--tta] [--packed]
        [--unsafe-load]

The arguments are mmseg 1.2.2's (its script runs unchanged) plus the
plugin's: ``--packed`` evaluates the bit-packed inference model
(:func:`mmseg_didb.deploy.convert_to_packed`, through
``PackedInferenceHook``) instead of the trained fake-quantized one;
``--unsafe-load`` fully unpickles a trusted checkpoint that weights-only
loading refuses.
"""
import os.path as osp
import sys

sys.path.insert(0, osp.dirname(osp.dirname(osp.abspath(__file__))))
import mmseg_didb  # noqa: E402,F401

from mmseg_didb.engine.mmseg_tools import (  # noqa: E402
    extra_custom_hooks, plugin_parser, run_openmmlab_tool)


def main(argv=None) -> None:
    parser = plugin_parser('Test a segmentor')
    parser.add_argument(
        '--packed', action='store_true',
        help='evaluate the bit-packed inference model (XNOR-popcount '
        'kernels) built from the checkpoint')
    argv = list(sys.argv[1:] if argv is None else argv)
    packed = parser.parse_known_args(argv)[0].packed
    hooks = [dict(type='PackedInferenceHook')] if packed else []
    with extra_custom_hooks(hooks):
        run_openmmlab_tool('test', parser, argv)


if __name__ == '__main__':
    main()
