"""State-dict conversion for :class:`~mmseg_didb.models.backbones.DIDBViT`.

Accepted source layouts (detected from the keys):

* ``timm``: timm ``VisionTransformer`` / DeiT state dicts, and the official
  DeiT release (``{'model': state_dict}``, same key names as timm).
* ``mmseg``: a ViT converted for mmseg's ``VisionTransformer``
  (the layout of mmseg's ``tools/model_converters/vit2mmseg.py``: ``layers.i.attn.attn.
  in_proj_weight``, ``layers.i.ffn.layers.0.0`` ...).
* ``didb``: the plugin's own checkpoints (any preset), with or without a
  ``backbone.`` / ``module.`` prefix.

Conversion is the two steps of :mod:`.convert_core`: :func:`to_fp_layout`
renames a source into the plugin's FP layout (the fused ``qkv`` split into
the ``q``/``k``/``v`` units); :func:`adapt_to_model` then fits that dict to
a concrete model: with HFSC on, the pretrained Q (K) initialises both the
low- and the high-frequency unit (:func:`~.convert_core.route_qk`), the
position embedding and the Token RPReLU maps are resized to the model's
token grid (:func:`~mmseg_didb.binary.rprelu.resize_token_map`, the resize
the model itself uses), and keys the backbone never uses (classification
heads, the distillation token, the final ``norm`` of a model without one)
are dropped and reported.

Parameters that exist only in binary models (unit norms, RPReLU and Token
RPReLU terms, quantizer shifts/scales, HFSC mixing, DIBA scales) keep their
initial values when the source is an FP checkpoint (it holds none of them);
a binary source must provide all of them. Whether the result covers the
model is checked by the strict loader
(:func:`mmseg_didb.models.utils.checkpoint.load_checkpoint_strict`), which
names every missing and unexpected key.
"""
import math
import re
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

import torch

from mmseg_didb.binary.rprelu import GridLike, TokenGrid, resize_token_map
from .checkpoint import unwrap_state_dict
from .convert_core import (FP_ATTN_UNITS, fill_init_only, route_qk,
                           split_qkv, stem_key, upgrade_legacy_keys)

__all__ = [
    'FP_KEY_PATTERN', 'is_fp_key', 'detect_layout', 'to_fp_layout',
    'infer_token_grid', 'adapt_to_model', 'convert_vit_state_dict',
    'convert_vit_checkpoint'
]

Tensor = torch.Tensor

#: Keys of a classification checkpoint that a segmentation backbone never
#: uses. They are dropped (and reported), never silently matched.
CLASSIFICATION_ONLY = ('head.', 'head_dist.', 'pre_logits.', 'fc_norm.')

#: DIDBViT keys an FP (timm / DeiT / mmseg) checkpoint can provide; every
#: other key of a DIDBViT state dict is binary-only.
FP_KEY_PATTERN = re.compile(
    r'^(patch_embed\.proj\.(weight|bias)|cls_token|pos_embed'
    r'|norm\.(weight|bias)'
    r'|layers\.\d+\.(norm1|norm2)\.(weight|bias)'
    r'|layers\.\d+\.' + FP_ATTN_UNITS +
    r'|layers\.\d+\.mlp\.fc[12]\.linear\.(weight|bias))$')

#: Parameter names of Token RPReLU maps (resized like the position embedding).
TOKEN_MAP_NAMES = ('token_gamma', 'token_zeta')


def is_fp_key(key: str) -> bool:
    """True if an FP ViT checkpoint can provide DIDBViT key ``key``."""
    return FP_KEY_PATTERN.match(key) is not None


def detect_layout(sd: Mapping[str, Tensor]) -> str:
    """Name the layout of a ViT state dict: ``'timm'``, ``'mmseg'`` or
    ``'didb'``.

    Raises:
        ValueError: if the keys match none of them.
    """
    keys = list(sd)
    if any(re.match(r'blocks\.\d+\.', k) for k in keys):
        return 'timm'
    if any(re.match(r'layers\.\d+\.(attn\.attn\.in_proj_|ffn\.layers\.)', k)
           for k in keys):
        return 'mmseg'
    if any(re.match(r'layers\.\d+\.(attn|mlp|norm1)\.', k) for k in keys):
        return 'didb'
    raise ValueError(
        'Unrecognised ViT checkpoint: expected timm/DeiT keys ("blocks.0."), '
        'mmseg ViT keys ("layers.0.attn.attn.in_proj_weight") or DIDBViT '
        f'keys ("layers.0.attn.v."), got e.g. {sorted(keys)[:6]}. For a '
        'segmentor checkpoint pass prefix="backbone.".')


def _timm_to_fp(sd: Mapping[str, Tensor]) -> Dict[str, Tensor]:
    out: Dict[str, Tensor] = {}
    fused: Dict[str, Dict[str, Tensor]] = {}
    for k, v in sd.items():
        m = re.match(r'blocks\.(\d+)\.(.+)$', k)
        if m is None:
            out[k] = v
            continue
        i, rest = m.groups()
        base = f'layers.{i}'
        qkv = re.match(r'attn\.qkv\.(weight|bias)$', rest)
        if qkv:
            fused.setdefault(f'{base}.attn', {})[qkv.group(1)] = v
            continue
        unit = re.match(r'(attn\.proj|mlp\.fc1|mlp\.fc2)\.(weight|bias)$',
                        rest)
        if unit:
            out[f'{base}.{unit.group(1)}.linear.{unit.group(2)}'] = v
        else:  # norm1 / norm2 keep their names; anything else is reported
            out[f'{base}.{rest}'] = v
    for prefix, wb in fused.items():
        split_qkv(prefix, wb['weight'], wb.get('bias'), out)
    return out


def _mmseg_to_fp(sd: Mapping[str, Tensor]) -> Dict[str, Tensor]:
    out: Dict[str, Tensor] = {}
    fused: Dict[str, Dict[str, Tensor]] = {}
    renames = (
        (r'ln1\.', 'norm1.'),
        (r'ln2\.', 'norm2.'),
        (r'attn\.attn\.out_proj\.', 'attn.proj.linear.'),
        (r'ffn\.layers\.0\.0\.', 'mlp.fc1.linear.'),
        (r'ffn\.layers\.1\.', 'mlp.fc2.linear.'),
    )
    for k, v in sd.items():
        m = re.match(r'layers\.(\d+)\.(.+)$', k)
        if m is None:
            # mmseg names the final norm "ln1" at the top level.
            out[stem_key(re.sub(r'^ln1\.', 'norm.', k))] = v
            continue
        i, rest = m.groups()
        qkv = re.match(r'attn\.attn\.in_proj_(weight|bias)$', rest)
        if qkv:
            fused.setdefault(f'layers.{i}.attn', {})[qkv.group(1)] = v
            continue
        for pattern, repl in renames:
            if re.match(pattern, rest):
                rest = re.sub('^' + pattern, repl, rest)
                break
        out[f'layers.{i}.{rest}'] = v
    for prefix, wb in fused.items():
        split_qkv(prefix, wb['weight'], wb.get('bias'), out)
    return out


def to_fp_layout(sd: Mapping[str, Tensor],
                 layout: Optional[str] = None) -> Dict[str, Tensor]:
    """Rename a timm / DeiT / mmseg / own ViT state dict to the FP layout.

    Args:
        sd: The plain state dict (see
            :func:`~mmseg_didb.models.utils.checkpoint.unwrap_state_dict`).
        layout: ``'timm'``, ``'mmseg'`` or ``'didb'``; detected if None.

    Returns:
        dict: DIDBViT keys; from timm and mmseg sources the attention units
        are ``similarity.q``, ``similarity.k``, ``v`` (fused ``qkv`` split in
        three); own checkpoints of the first release get today's names.
    """
    layout = layout or detect_layout(sd)
    if layout == 'timm':
        return _timm_to_fp(sd)
    if layout == 'mmseg':
        return _mmseg_to_fp(sd)
    if layout == 'didb':
        return upgrade_legacy_keys(sd)
    raise ValueError(
        f'layout must be "timm", "mmseg" or "didb", got {layout!r}')


def _square_grid(num_tokens: int, candidates: Sequence[int],
                 key: str) -> TokenGrid:
    """Infer the square token grid (and its extra tokens) of a count."""
    for extra in candidates:
        side = math.isqrt(max(num_tokens - extra, 0))
        if side > 0 and side * side == num_tokens - extra:
            return TokenGrid((side, side), extra)
    raise ValueError(
        f'{key}: cannot infer the token grid of {num_tokens} tokens (not a '
        'square grid plus extra tokens). Pass src_grid=(H, W) of the '
        'checkpoint\'s pretraining grid.')


def infer_token_grid(num_tokens: int) -> TokenGrid:
    """The :class:`TokenGrid` of a square position embedding of
    ``num_tokens`` rows (1 CLS row, 2 for distilled DeiT, or none)."""
    return _square_grid(num_tokens, (1, 2, 0), 'pos_embed')


def _fit_grid_param(key: str, v: Tensor, target_shape: torch.Size,
                    dst: TokenGrid, mode: str,
                    src_grid: Optional[Tuple[int, int]],
                    src_extra_candidates: Sequence[int]) -> Tensor:
    if src_grid is not None:
        src_extra = v.shape[1] - src_grid[0] * src_grid[1]
        if src_extra < 0:
            raise ValueError(f'{key}: {v.shape[1]} tokens cannot hold the '
                             f'given src_grid {tuple(src_grid)}.')
    else:
        found = _square_grid(v.shape[1], src_extra_candidates, key)
        src_grid, src_extra = found.size, found.num_extra
    # CLS rows: keep the common ones, drop a distillation token, add zeros
    # (the init value of token maps) where the target has more.
    dst_extra = dst.num_extra
    if src_extra > dst_extra:
        v = torch.cat([v[:, :dst_extra], v[:, src_extra:]], dim=1)
    elif src_extra < dst_extra:
        pad = v.new_zeros(1, dst_extra - src_extra, v.shape[2])
        v = torch.cat([v[:, :src_extra], pad, v[:, src_extra:]], dim=1)
    v = resize_token_map(v, TokenGrid(src_grid, dst_extra), dst.size, mode)
    if v.shape != target_shape:
        raise ValueError(f'{key}: resized to {tuple(v.shape)}, but the model '
                         f'expects {tuple(target_shape)}.')
    return v


def adapt_to_model(sd: Mapping[str, Tensor],
                   target_shapes: Mapping[str, torch.Size],
                   grid: GridLike,
                   num_heads: Optional[int] = None,
                   interpolate_mode: str = 'bicubic',
                   token_map_mode: str = 'bilinear',
                   src_grid: Optional[Tuple[int, int]] = None
                   ) -> Tuple[Dict[str, Tensor], List[str]]:
    """Fit a DIDBViT-layout state dict to a concrete model.

    Args:
        sd: Output of :func:`to_fp_layout`.
        target_shapes: The model's ``{key: shape}`` (from its state dict).
        grid: The model's reference :class:`TokenGrid` (``img_size //
            patch_size`` and the CLS tokens of its Token RPReLU maps; the
            position embedding always holds one CLS row, as in mmseg). A
            pair ``(H, W)`` means one CLS token.
        num_heads: Attention heads; needed for ``hfsc='split'`` targets.
        interpolate_mode: Resize mode of the position embedding.
        token_map_mode: Resize mode of the Token RPReLU maps (bilinear, as
            :class:`~mmseg_didb.binary.rprelu.TokenRPReLU` resizes them).
        src_grid: The checkpoint's token grid; inferred (square) if None.

    Returns:
        (state_dict, dropped): the fitted dict (keys the model lacks are kept
        so that the load reports them as unexpected) and the dropped keys:
        classification heads, the distillation token, and the final ``norm``
        when the model has none (``final_norm=False``).
    """
    grid = TokenGrid.of(grid, num_extra=1)
    out: Dict[str, Tensor] = {}
    dropped: List[str] = []
    for k, v in sd.items():
        # Distilled DeiT: the CLS token is kept, the distillation token not;
        # the final norm only matters to a model built with final_norm=True.
        if (k.startswith(CLASSIFICATION_ONLY + ('norm.', ))
                or k == 'dist_token') and k not in target_shapes:
            dropped.append(k)
            continue
        if not route_qk(out, k, v, target_shapes, num_heads):
            out[k] = v

    if 'pos_embed' in out and 'pos_embed' in target_shapes:
        # timm DeiT-distilled has 2 prefix rows, plain ViT/DeiT 1.
        out['pos_embed'] = _fit_grid_param(
            'pos_embed', out['pos_embed'], target_shapes['pos_embed'],
            TokenGrid(grid.size, 1), interpolate_mode, src_grid, (1, 2, 0))
    for k in list(out):
        if k.rsplit('.', 1)[-1] in TOKEN_MAP_NAMES and k in target_shapes \
                and out[k].shape != target_shapes[k]:
            out[k] = _fit_grid_param(k, out[k], target_shapes[k], grid,
                                     token_map_mode, src_grid, (1, 0))
    return out, dropped


def convert_vit_state_dict(sd: Mapping[str, Tensor],
                           model_sd: Mapping[str, Tensor],
                           grid: GridLike,
                           num_heads: Optional[int] = None,
                           interpolate_mode: str = 'bicubic',
                           src_grid: Optional[Tuple[int, int]] = None
                           ) -> Tuple[Dict[str, Tensor], Dict[str, list]]:
    """Convert any supported ViT layout to a DIDBViT's keys.

    Binary-only parameters are filled with the model's current (initial)
    values when the source is FP (see the module docstring).

    Args:
        sd: Plain state dict (unwrapped, prefix stripped).
        model_sd: The target model's state dict.
        grid, num_heads, interpolate_mode, src_grid: see
            :func:`adapt_to_model`.

    Returns:
        ``(state_dict, report)``; ``report`` has ``layout``, ``dropped``
        (classification-only keys) and ``kept_init`` (binary-only keys left
        at their initial values).
    """
    layout = detect_layout(sd)
    shapes = {k: v.shape for k, v in model_sd.items()}
    out, dropped = adapt_to_model(
        to_fp_layout(sd, layout), shapes, grid, num_heads, interpolate_mode,
        src_grid=src_grid)
    kept = fill_init_only(out, model_sd, is_fp_key)
    return out, dict(layout=layout, dropped=dropped, kept_init=kept)


def convert_vit_checkpoint(checkpoint: Mapping,
                           model_sd: Mapping[str, Tensor],
                           grid: GridLike,
                           num_heads: Optional[int] = None,
                           prefix: Optional[str] = None,
                           interpolate_mode: str = 'bicubic',
                           src_grid: Optional[Tuple[int, int]] = None
                           ) -> Tuple[Dict[str, Tensor], Dict[str, list]]:
    """Unwrap a checkpoint (``{'model': ...}``, ``{'state_dict': ...}``,
    ``backbone.`` prefix) and :func:`convert_vit_state_dict` it."""
    return convert_vit_state_dict(
        unwrap_state_dict(checkpoint, prefix), model_sd, grid, num_heads,
        interpolate_mode, src_grid)
