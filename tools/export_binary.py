"""Export a trained binary segmentor as a packed 1-bit checkpoint; check it.

Usage::

    python tools/export_binary.py CONFIG CKPT OUT [--verify-shape H W]
        [--no-verify] [--cfg-options key=value ...]

Writes ``OUT``: the sign bits of every binary weight (8 per byte), their
scales, and every other parameter and buffer in FP32, plus the config text
(format: :mod:`mmseg_didb.analysis.export`). Then rebuilds the model from the
export alone and checks that its outputs equal the original model's in eval
mode on a random input, and prints the file size against the FP32 state dict
of the same model (and against CKPT). Restore with::

    from mmseg_didb.analysis.export import build_from_packed
    model = build_from_packed(OUT)

The latent FP weights of binary layers are not stored (only their signs and
scales), so the export is for inference; resume training from CKPT.
"""
import argparse
import os
import os.path as osp
import sys
import tempfile

import torch

sys.path.insert(0, osp.abspath(osp.join(osp.dirname(__file__), '..')))

from mmengine.config import DictAction  # noqa: E402

from mmseg_didb.compat import add_unsafe_load_argument  # noqa: E402
from mmseg_didb.analysis import build_segmentor, load_config  # noqa: E402
from mmseg_didb.analysis.complexity import analysis_view  # noqa: E402
from mmseg_didb.analysis.export import (build_from_packed,  # noqa: E402
                                        save_packed)
from mmseg_didb.models.utils import load_whole_checkpoint  # noqa: E402


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('config', help='model config file')
    parser.add_argument('checkpoint', help='trained checkpoint (.pth)')
    parser.add_argument('out', help='packed output file')
    parser.add_argument('--verify-shape', type=int, nargs=2, default=[64, 64],
                        metavar=('H', 'W'),
                        help='input size of the equality check (default 64)')
    parser.add_argument('--no-verify', action='store_true',
                        help='skip the reload-and-compare check')
    parser.add_argument('--cfg-options', nargs='+', action=DictAction,
                        help='override config settings, key=value')
    add_unsafe_load_argument(parser)
    return parser.parse_args(argv)


def load_weights(model: torch.nn.Module, path: str,
                 allow_unsafe: bool = False) -> None:
    """Load a state dict (raw, or mmengine's ``state_dict`` entry), strictly,
    with weights-only unpickling unless ``allow_unsafe``."""
    load_whole_checkpoint(model, path, allow_unsafe=allow_unsafe)


def main(argv=None) -> dict:
    args = parse_args(argv)
    cfg = load_config(args.config, args.cfg_options)
    model = build_segmentor(cfg)
    load_weights(model, args.checkpoint, args.unsafe_load)
    model.eval()
    packed = save_packed(model, args.out, config=cfg.pretty_text)
    with tempfile.TemporaryDirectory() as tmp:
        fp_path = osp.join(tmp, 'fp32.pth')
        torch.save(model.state_dict(), fp_path)
        fp_size = os.path.getsize(fp_path)
    size = os.path.getsize(args.out)
    ckpt_size = os.path.getsize(args.checkpoint)
    result = dict(out=args.out, packed_bytes=size,
                  fp32_state_dict_bytes=fp_size, checkpoint_bytes=ckpt_size, ratio_vs_fp32=fp_size / size,
                  binary_layers=len(packed['binary']))
    print(f'wrote {args.out}: {size / 1e6:.3f} MB, {len(packed["binary"])} '
          'packed binary weights')
    print(f'FP32 state dict of the same model: {fp_size / 1e6:.3f} MB '
          f'-> {fp_size / size:.2f}x smaller '
          f'(checkpoint file {ckpt_size / 1e6:.3f} MB)')
    if not args.no_verify:
        restored = build_from_packed(args.out)
        x = torch.rand(1, 3, *args.verify_shape)
        with torch.no_grad():
            y0 = analysis_view(model)(x)
            y1 = analysis_view(restored)(x)
        equal = torch.equal(y0, y1)
        result['outputs_equal'] = equal
        print(f'reloaded from {args.out} alone: outputs on a '
              f'{args.verify_shape[0]}x{args.verify_shape[1]} input '
              f'{"are identical" if equal else "DIFFER"} '
              f'(max |diff| {(y0 - y1).abs().max().item():.3g})')
        if not equal:
            sys.exit(1)
    return result


if __name__ == '__main__':
    main()
