"""State-dict conversion for :class:`~mmseg_didb.models.backbones.DIDBSwin`.

Accepted source layouts (detected from the keys by :func:`detect_swin_layout`):

* ``timm``: timm >= 0.9 ``SwinTransformer`` (patch merging at the *start*
  of stage ``i + 1``: ``layers.{i+1}.downsample``), fused ``attn.qkv``.
* ``official``: Microsoft's Swin release (``{'model': ...}``) and timm < 0.9:
  patch merging at the *end* of stage ``i`` (``layers.{i}.downsample``), plus
  persistent ``relative_position_index`` / ``attn_mask`` buffers.
* ``mmseg``: mmseg's / mmpretrain's ``SwinTransformer`` (``stages.i.blocks.j.
  attn.w_msa.qkv``, ``ffn.layers.0.0``, ``patch_embed.projection``), whose
  patch-merging weights are in ``nn.Unfold`` channel order.
* ``didb``: the plugin's own layout (any preset).

Conversion is the two steps of :mod:`.convert_core`: :func:`to_fp_layout`
renames any source to the plugin's FP layout (the fused ``qkv`` split into
the ``q``/``k``/``v`` units); :func:`adapt_to_model` fits it to a concrete
model: with HFSC the pretrained Q (K) initialises both the low- and the
high-frequency unit (:func:`~.convert_core.route_qk`), relative-position-bias
tables are resized to the model's window, the classification head is
dropped, FP ``norm`` becomes the last output norm.

Parameters that exist only in binary models and have no FP counterpart (unit
norms, RPReLU and Token RPReLU terms, quantizer shifts/scales, HFSC mixing
``b = 1``, DIBA scales ``l_s = 1``, ``l_l = 0.1``) keep their initial values
when the source is an FP checkpoint (it holds none of them); output norms
that a classification checkpoint lacks (``norm0``-``norm2``) keep their
identity init. A binary source must provide all of them.
"""
import re
from typing import Callable, Dict, List, Mapping, Optional, Tuple

import torch
from timm.layers import resize_rel_pos_bias_table

from .convert_core import (FP_ATTN_UNITS, fill_init_only, route_qk,
                           split_qkv, stem_key, upgrade_legacy_keys)

__all__ = [
    'SWIN_LAYOUTS', 'detect_swin_layout', 'to_fp_layout', 'adapt_to_model',
    'convert_swin_state_dict', 'FP_KEY_PATTERN', 'is_fp_key'
]

Tensor = torch.Tensor
SWIN_LAYOUTS = ('timm', 'official', 'mmseg', 'didb')

#: Model keys that an FP Swin checkpoint can provide. Everything else in a
#: DIDBSwin state dict is binary-only.
FP_KEY_PATTERN = re.compile(
    r'^(patch_embed\.(proj|norm)\.(weight|bias)'
    r'|norm\d*\.(weight|bias)'
    r'|layers\.\d+\.downsample\.norm\.(weight|bias)'
    r'|layers\.\d+\.downsample\.reduction\.linear\.weight'
    r'|layers\.\d+\.blocks\.\d+\.(norm1|norm2)\.(weight|bias)'
    r'|layers\.\d+\.blocks\.\d+\.attn\.relative_position_bias_table'
    r'|layers\.\d+\.blocks\.\d+\.' + FP_ATTN_UNITS +
    r'|layers\.\d+\.blocks\.\d+\.mlp\.fc[12]\.linear\.(weight|bias))$')
_OUT_NORM = re.compile(r'^norm\d+\.(weight|bias)$')
_BUFFERS = ('relative_position_index', 'attn_mask')
_CLASSIFIER = ('head.', )


def is_fp_key(key: str) -> bool:
    """True if an FP Swin checkpoint can provide DIDBSwin key ``key``."""
    return FP_KEY_PATTERN.match(key) is not None


def detect_swin_layout(sd: Mapping[str, Tensor]) -> str:
    """Name the layout of a Swin state dict (see :data:`SWIN_LAYOUTS`).

    Raises:
        ValueError: if the keys match no Swin layout.
    """
    keys = list(sd)
    if any(k.startswith('stages.') for k in keys):
        return 'mmseg'
    if any(re.match(r'layers\.\d+\.(blocks\.\d+\.(attn|mlp)\.\w+\.linear|'
                    r'downsample\.reduction\.linear)\.', k) for k in keys):
        return 'didb'
    if any(k.startswith('layers.0.downsample.') for k in keys):
        return 'official'
    if any(re.match(r'layers\.\d+\.blocks\.\d+\.attn\.qkv\.', k) for k in keys):
        return 'timm'
    raise ValueError(
        'unrecognised Swin checkpoint: expected timm/official keys '
        '("layers.0.blocks.0.attn.qkv.weight"), mmseg/mmpretrain keys '
        '("stages.0.blocks.0.attn.w_msa.qkv.weight") or DIDBSwin keys '
        f'("layers.0.blocks.0.attn.v.linear.weight"), got e.g. '
        f'{sorted(keys)[:6]}. A segmentor / mmpretrain classifier checkpoint '
        "needs prefix='backbone.'.")


def _unfold_to_official_reduction(w: Tensor) -> Tensor:
    """Inverse of mmseg ``swin2mmseg``'s ``correct_unfold_reduction_order``."""
    out_c, in_c = w.shape
    return w.reshape(out_c, in_c // 4, 4).transpose(1, 2)[:, [0, 2, 1, 3]] \
        .reshape(out_c, in_c)


def _unfold_to_official_norm(v: Tensor) -> Tensor:
    """Inverse of mmseg ``swin2mmseg``'s ``correct_unfold_norm_order``."""
    return v.reshape(v.shape[0] // 4, 4).t()[[0, 2, 1, 3]].reshape(-1)


def _mmseg_to_timm(sd: Mapping[str, Tensor]) -> Dict[str, Tensor]:
    out = {}
    for k, v in sd.items():
        m = re.match(r'stages\.(\d+)\.downsample\.(norm|reduction)\.(\w+)$', k)
        if m:
            i, mod, name = int(m.group(1)), m.group(2), m.group(3)
            v = (_unfold_to_official_reduction(v) if mod == 'reduction' else
                 _unfold_to_official_norm(v))
            out[f'layers.{i + 1}.downsample.{mod}.{name}'] = v
            continue
        k = re.sub(r'^stages\.', 'layers.', k)
        k = k.replace('.attn.w_msa.', '.attn.')
        k = k.replace('.ffn.layers.0.0.', '.mlp.fc1.')
        k = k.replace('.ffn.layers.1.', '.mlp.fc2.')
        out[stem_key(k)] = v
    return out


def _official_to_timm(sd: Mapping[str, Tensor]) -> Dict[str, Tensor]:
    return {
        re.sub(r'^layers\.(\d+)\.downsample',
               lambda m: f'layers.{int(m.group(1)) + 1}.downsample', k): v
        for k, v in sd.items()
    }


def _timm_to_fp(sd: Mapping[str, Tensor]) -> Dict[str, Tensor]:
    out: Dict[str, Tensor] = {}
    fused: Dict[str, Dict[str, Tensor]] = {}
    for k, v in sd.items():
        m = re.match(r'^(.*\.attn)\.qkv\.(weight|bias)$', k)
        if m:
            fused.setdefault(m.group(1), {})[m.group(2)] = v
            continue
        m = re.match(r'^(.*\.(attn\.proj|mlp\.fc[12]|downsample\.reduction))'
                     r'\.(weight|bias)$', k)
        if m:
            k = f'{m.group(1)}.linear.{m.group(3)}'
        out[k] = v
    for attn, wb in fused.items():
        split_qkv(attn, wb['weight'], wb.get('bias'), out)
    return out


def to_fp_layout(sd: Mapping[str, Tensor],
                 layout: Optional[str] = None
                 ) -> Tuple[Dict[str, Tensor], str, List[str]]:
    """Rename any Swin layout to the plugin's FP layout.

    Non-persistent buffers (``relative_position_index``, ``attn_mask``) and
    the classification head are dropped; own (``didb``) checkpoints of the
    first release get today's attention names.

    Returns:
        ``(state_dict, layout, dropped_keys)``.
    """
    layout = layout or detect_swin_layout(sd)
    if layout not in SWIN_LAYOUTS:
        raise ValueError(f'layout must be one of {SWIN_LAYOUTS}, got {layout!r}')
    dropped = [k for k in sd if k.rsplit('.', 1)[-1] in _BUFFERS
               or k.startswith(_CLASSIFIER)]
    sd = {k: v for k, v in sd.items() if k not in dropped}
    if layout == 'didb':
        return upgrade_legacy_keys(sd), layout, dropped
    if layout == 'mmseg':
        sd = _mmseg_to_timm(sd)
    elif layout == 'official':
        sd = _official_to_timm(sd)
    return _timm_to_fp(sd), layout, dropped


def adapt_to_model(sd: Mapping[str, Tensor],
                   target_shapes: Mapping[str, torch.Size],
                   num_heads: Callable[[str], int]) -> Dict[str, Tensor]:
    """Fit an FP-layout (or own-layout) Swin state dict to a DIDBSwin.

    Args:
        sd: Output of :func:`to_fp_layout`.
        target_shapes: The target model's ``{key: shape}``.
        num_heads: Number of heads of the attention at a key prefix
            (``'layers.0.blocks.0.attn'``), for ``hfsc='split'``.

    Returns:
        The converted state dict (keys the model lacks are kept, so a load
        reports them as unexpected).
    """
    out: Dict[str, Tensor] = {}
    # timm / official final ``norm`` is the output norm of the last stage
    last_stage = max((int(m.group(1)) for m in
                      (re.match(r'layers\.(\d+)\.', k) for k in target_shapes)
                      if m), default=-1)
    last_norm = (f'norm{last_stage}'
                 if f'norm{last_stage}.weight' in target_shapes else None)
    for k, v in sd.items():
        if route_qk(out, k, v, target_shapes, num_heads):
            continue
        if re.match(r'^norm\.(weight|bias)$', k):
            new = f'{last_norm}.{k.split(".")[1]}'
            if last_norm is None or new in sd:
                continue  # final norm of a stage the model does not output
            k = new
        if k.endswith('relative_position_bias_table') and k in target_shapes:
            target = target_shapes[k]
            if v.shape != target:
                if v.shape[1] != target[1]:
                    raise ValueError(f'{k}: checkpoint has {v.shape[1]} heads,'
                                     f' the model {target[1]}')
                new_win = int(round((target[0]**0.5 + 1) / 2))
                v = resize_rel_pos_bias_table(
                    v, new_window_size=(new_win, new_win),
                    new_bias_shape=tuple(target))
        out[k] = v
    return out


def convert_swin_state_dict(sd: Mapping[str, Tensor],
                            model_sd: Mapping[str, Tensor],
                            num_heads: Callable[[str], int]
                            ) -> Tuple[Dict[str, Tensor], Dict[str, list]]:
    """Convert any Swin layout to a DIDBSwin's keys and fill its init-only keys.

    Returns:
        ``(state_dict, report)``; ``report`` has ``layout``, ``dropped``
        (buffers, classifier), ``kept_init`` (binary-only parameters and
        output norms left at their initial values, see the module docstring).
    """
    fp_sd, layout, dropped = to_fp_layout(sd)
    shapes = {k: v.shape for k, v in model_sd.items()}
    out = adapt_to_model(fp_sd, shapes, num_heads)
    kept = fill_init_only(
        out, model_sd, is_fp_key,
        also=lambda k: layout != 'didb' and bool(_OUT_NORM.match(k)))
    return out, dict(layout=layout, dropped=dropped, kept_init=kept)
