"""Convert a classification-pretrained checkpoint into a ready-to-load file.

Usage::

    python tools/convert_pretrained.py SRC DST [--arch auto|swin] \
        [--prefix backbone.] [--preset fp] [--window-size 7]

SRC may be a timm state dict, an official Microsoft Swin release
(``{'model': ...}``), an mmseg / mmpretrain Swin checkpoint (use
``--prefix backbone.`` for a classifier or segmentor) or a DIDBSwin
checkpoint. The architecture (embed dims, depths, heads, window, MLP ratio,
patch size) is read from the weights; the tool builds the backbone with
``--preset``, loads SRC strictly (every backbone key matched, the conversion of
:mod:`mmseg_didb.models.utils.swin_convert`) and writes
``{'state_dict': ..., 'meta': ...}`` in the backbone's own layout.

ViT / DeiT sources (``--arch vit``, detected too): a timm ViT / DeiT state
dict, an official DeiT release (``{'model': ...}``; distilled DeiT drops its
distillation token), an mmseg-converted ViT, or a DIDBViT checkpoint (convert
it with its own ``--preset``); conversion of
:mod:`mmseg_didb.models.utils.vit_convert`, pretraining size and depth read
from the weights, heads = embed_dims / 64.

With the default ``--preset fp`` the result loads into a backbone of *any*
preset (``init_cfg=dict(type='Pretrained', checkpoint=DST)``); the DIDB-only
parameters then start from their FP counterparts / initial values.
"""
import argparse
import math
import os
import os.path as osp
import re
import sys
from typing import Callable, Dict, Mapping, Optional, Sequence, Tuple

import torch

sys.path.insert(0, osp.dirname(osp.dirname(osp.abspath(__file__))))

import mmseg_didb  # noqa: E402,F401
from mmseg_didb.compat import add_unsafe_load_argument  # noqa: E402
from mmseg_didb.models.backbones.didb_swin import DIDBSwin  # noqa: E402
from mmseg_didb.models.utils.checkpoint import (  # noqa: E402
    load_checkpoint_strict, read_checkpoint, resolve_checkpoint_path,
    unwrap_state_dict)
from mmseg_didb.models.utils.swin_convert import (  # noqa: E402
    detect_swin_layout, to_fp_layout as swin_fp_layout)

Tensor = torch.Tensor


def infer_swin_arch(sd: Mapping[str, Tensor]) -> dict:
    """Read DIDBSwin architecture arguments from a Swin state dict (any layout)."""
    sd, _, _ = swin_fp_layout(sd)
    try:
        proj = sd['patch_embed.proj.weight']
    except KeyError as e:
        raise ValueError('not a Swin backbone: no patch_embed.proj weight '
                         f'(keys look like {sorted(sd)[:5]})') from e
    depths, heads = [], []
    mlp_ratio = window = None
    for i in range(64):
        blocks = {int(m.group(1)) for m in
                  (re.match(rf'layers\.{i}\.blocks\.(\d+)\.', k) for k in sd) if m}
        if not blocks:
            break
        depths.append(max(blocks) + 1)
        table = sd[f'layers.{i}.blocks.0.attn.relative_position_bias_table']
        heads.append(table.shape[1])
        window = window or int(round((math.sqrt(table.shape[0]) + 1) / 2))
        if mlp_ratio is None:
            fc1 = sd[f'layers.{i}.blocks.0.mlp.fc1.linear.weight']
            mlp_ratio = fc1.shape[0] / fc1.shape[1]
    if not depths:
        raise ValueError('not a Swin backbone: no layers.i.blocks.j keys')
    return dict(embed_dims=proj.shape[0], patch_size=proj.shape[-1],
                in_channels=proj.shape[1], depths=tuple(depths),
                num_heads=tuple(heads), window_size=window,
                mlp_ratio=mlp_ratio)


def convert_swin(checkpoint: Mapping, prefix: Optional[str], preset: str,
                 window_size: Optional[int]) -> Tuple[torch.nn.Module, dict]:
    """Build a DIDBSwin matching ``checkpoint`` and load it strictly."""
    sd = unwrap_state_dict(checkpoint, prefix)
    layout = detect_swin_layout(sd)
    arch = infer_swin_arch(sd)
    if window_size:
        arch['window_size'] = window_size
    model = DIDBSwin(preset=preset, drop_path_rate=0., **arch)
    load_checkpoint_strict(model, sd)
    return model, dict(arch=arch, layout=layout)


def _detect_arch(checkpoint: Mapping, prefix: Optional[str]) -> str:
    try:
        detect_swin_layout(unwrap_state_dict(checkpoint, prefix))
        return 'swin'
    except ValueError as e:
        try:  # a ViT / DeiT checkpoint
            detect_vit_layout(unwrap_state_dict(checkpoint, prefix))
            return 'vit'
        except ValueError:
            pass
        raise SystemExit(f'cannot detect the architecture: {e}; supported: '
                         f'{sorted(CONVERTERS)}') from e


#: Converters by architecture: (checkpoint, prefix, preset, window) -> model.
CONVERTERS: Dict[str, Callable] = {'swin': convert_swin}


# ----------------------------------------------------------------- ViT / DeiT
from mmseg_didb.models.backbones.didb_vit import DIDBViT  # noqa: E402
from mmseg_didb.models.utils.vit_convert import (  # noqa: E402
    detect_layout as detect_vit_layout, infer_token_grid,
    to_fp_layout as vit_fp_layout)


def infer_vit_arch(sd: Mapping[str, Tensor]) -> dict:
    """Read DIDBViT arguments from a ViT / DeiT state dict (any layout).

    ``num_heads`` is not stored in the weights: every DeiT / ViT arch uses a
    head dimension of 64, so ``embed_dims // 64`` is assumed.
    """
    sd = vit_fp_layout(sd)
    try:
        proj = sd['patch_embed.proj.weight']
        pos = sd['pos_embed']
    except KeyError as e:
        raise ValueError('not a ViT backbone: no patch embedding / pos_embed '
                         f'(keys look like {sorted(sd)[:5]})') from e
    layers = {int(m.group(1)) for m in
              (re.match(r'layers\.(\d+)\.', k) for k in sd) if m}
    if not layers:
        raise ValueError('not a ViT backbone: no blocks.i / layers.i keys')
    embed_dims, patch_size = proj.shape[0], proj.shape[-1]
    gh, gw = infer_token_grid(pos.shape[1]).size
    fc1 = sd['layers.0.mlp.fc1.linear.weight']
    return dict(embed_dims=embed_dims, num_layers=max(layers) + 1,
                num_heads=max(embed_dims // 64, 1), patch_size=patch_size,
                in_channels=proj.shape[1], mlp_ratio=fc1.shape[0] / embed_dims,
                img_size=(gh * patch_size, gw * patch_size),
                qkv_bias=any(re.match(r'layers\.0\.attn\.similarity\.q(_low)?'
                                      r'\.linear\.bias$', k) for k in sd),
                final_norm='norm.weight' in sd)


def convert_vit(checkpoint: Mapping, prefix: Optional[str], preset: str,
                window_size: Optional[int]) -> Tuple[torch.nn.Module, dict]:
    """Build a DIDBViT matching ``checkpoint`` and load it strictly.

    ``window_size`` does not apply to a ViT (global attention) and is ignored.
    """
    sd = unwrap_state_dict(checkpoint, prefix)
    layout = detect_vit_layout(sd)
    arch = infer_vit_arch(sd)
    model = DIDBViT(preset=preset, drop_path_rate=0., **arch)
    load_checkpoint_strict(model, sd)
    return model, dict(arch=arch, layout=layout)


CONVERTERS['vit'] = convert_vit


def main(argv: Optional[Sequence[str]] = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('src', help='source checkpoint file')
    parser.add_argument('dst', help='output file')
    parser.add_argument('--arch', default='auto',
                        choices=['auto', *sorted(CONVERTERS)])
    parser.add_argument('--prefix', default=None,
                        help="keep keys under this prefix, e.g. 'backbone.'")
    parser.add_argument('--preset', default='fp',
                        help='preset of the written backbone (default fp: '
                        'loads into any preset)')
    parser.add_argument('--window-size', type=int, default=None,
                        help='target window (relative-position tables are '
                        'resized); default: the checkpoint window')
    add_unsafe_load_argument(parser)
    args = parser.parse_args(argv)
    checkpoint = read_checkpoint(resolve_checkpoint_path(
        args.src, 'Pass the path of a downloaded classification checkpoint.'),
        allow_unsafe=args.unsafe_load)
    arch = (_detect_arch(checkpoint, args.prefix)
            if args.arch == 'auto' else args.arch)
    model, meta = CONVERTERS[arch](checkpoint, args.prefix, args.preset,
                                   args.window_size)
    meta.update(source=osp.basename(args.src), preset=args.preset,
                backbone=type(model).__name__)
    if osp.dirname(args.dst):
        os.makedirs(osp.dirname(args.dst), exist_ok=True)
    torch.save(dict(state_dict=model.state_dict(), meta=meta), args.dst)
    print(f'wrote {args.dst}: {type(model).__name__} ({arch}, '
          f"{meta.get('layout', '?')} source), preset {args.preset}")
    return args.dst


if __name__ == '__main__':
    main()
