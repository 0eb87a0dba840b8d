"""Steps shared by the Swin and the ViT checkpoint converters.

Both converters (:mod:`.swin_convert`, :mod:`.vit_convert`) have the same two
steps under the same names:

1. ``to_fp_layout(sd)``: rename a source layout (timm, official, mmseg, the
   plugin's own) to the plugin's *FP layout*: the keys of the backbone built
   with ``preset='fp'``, i.e. the fused ``qkv`` split into the units
   ``attn.similarity.q``, ``attn.similarity.k`` and ``attn.v``
   (:func:`split_qkv`), every linear inside a binary unit (``.linear.``).
2. ``adapt_to_model(sd, target_shapes, ...)``: fit that dict to a concrete
   model. Shared here: :func:`route_qk`, the HFSC initialisation from one
   pretrained Q (K); each converter adds its size-dependent tables.

:func:`fill_init_only` then keeps the binary-only parameters of the model at
their initial values when the source is FP.
"""
import re
from typing import Callable, Dict, List, Mapping, Optional, Union

import torch

from ..layers.didb_attention import legacy_attention_key

__all__ = [
    'FP_ATTN_UNITS', 'split_qkv', 'head_half', 'route_qk', 'fill_init_only',
    'stem_key', 'upgrade_legacy_keys'
]

Tensor = torch.Tensor
HeadsArg = Union[int, Callable[[str], int], None]

#: Regex fragment of the attention linears an FP checkpoint provides.
FP_ATTN_UNITS = (r'attn\.(similarity\.(q|k)(_low|_high)?|v|proj)'
                 r'\.linear\.(weight|bias)')

_QK_KEY = re.compile(r'^(?P<attn>.*\.attn)\.similarity\.(?P<unit>q|k)\.'
                     r'(?P<rest>.+)$')
_ATTN_KEY = re.compile(r'^(?P<attn>(.*\.)?attn)\.(?P<name>.+)$')


def split_qkv(attn: str, weight: Tensor, bias: Optional[Tensor],
              out: Dict[str, Tensor]) -> None:
    """Write a fused ``(3C, C)`` qkv projection of attention ``attn`` as the
    three units of the FP layout."""
    if weight.shape[0] % 3:
        raise ValueError(f'{attn}: fused qkv weight has {weight.shape[0]} '
                         'rows, not a multiple of 3.')
    units = (f'{attn}.similarity.q', f'{attn}.similarity.k', f'{attn}.v')
    for unit, w in zip(units, weight.chunk(3, dim=0)):
        out[f'{unit}.linear.weight'] = w.clone()
    if bias is not None:
        for unit, b in zip(units, bias.chunk(3, dim=0)):
            out[f'{unit}.linear.bias'] = b.clone()


def head_half(t: Tensor, num_heads: int, half: int) -> Tensor:
    """Rows of half ``half`` (0 or 1) of every head's dimensions of a q/k
    weight or bias (``hfsc='split'``)."""
    rows = t.shape[0]
    hd = rows // num_heads
    t = t.reshape(num_heads, hd, *t.shape[1:])
    t = t[:, :hd // 2] if half == 0 else t[:, hd // 2:]
    return t.reshape(rows // 2, *t.shape[2:]).clone()


def _heads_at(num_heads: HeadsArg, attn: str) -> int:
    if callable(num_heads):
        return num_heads(attn)
    if num_heads is None:
        raise ValueError(f"{attn}: an hfsc='split' target needs num_heads")
    return num_heads


def route_qk(out: Dict[str, Tensor], key: str, value: Tensor,
             target_shapes: Mapping[str, torch.Size],
             num_heads: HeadsArg = None) -> bool:
    """Route an FP-layout q/k tensor to the HFSC units of the target.

    The pretrained Q (K) initialises both branches: ``Q_L = Q_H = Q`` for
    ``hfsc='full'``; for ``hfsc='split'`` Q_L takes the first and Q_H the
    second half of each head's dimensions, so ``Q_L K_L^T + Q_H K_H^T =
    Q K^T`` at init (docs/method.md, section 3).

    Args:
        out: The converted dict, written to.
        key: An FP-layout key.
        value: Its tensor.
        target_shapes: The model's ``{key: shape}``.
        num_heads: Heads of the attention, or a function of the attention's
            key prefix (``'layers.0.blocks.0.attn'``); needed for 'split'.

    Returns:
        True if the tensor was routed; False if ``key`` is not a q/k key of
        an HFSC target (the caller keeps it as it is).
    """
    m = _QK_KEY.match(key)
    if m is None or key in target_shapes:
        return False
    attn, unit, rest = m.group('attn'), m.group('unit'), m.group('rest')
    low = f'{attn}.similarity.{unit}_low.{rest}'
    high = f'{attn}.similarity.{unit}_high.{rest}'
    if low not in target_shapes or high not in target_shapes:
        return False
    if target_shapes[low] == value.shape:  # hfsc='full'
        out[low], out[high] = value.clone(), value.clone()
    elif rest.startswith('linear.'):  # hfsc='split'
        heads = _heads_at(num_heads, attn)
        out[low] = head_half(value, heads, 0)
        out[high] = head_half(value, heads, 1)
    else:
        return False  # a binary-unit extra: reported by the load
    return True


def fill_init_only(out: Dict[str, Tensor], model_sd: Mapping[str, Tensor],
                   is_fp_key: Callable[[str], bool],
                   also: Callable[[str], bool] = lambda k: False
                   ) -> List[str]:
    """Give the keys an FP source cannot provide the model's initial values.

    When ``out`` (the converted dict) holds no binary-only key of the model,
    the source is FP: every binary-only key the model has (unit norms,
    RPReLU terms, binarizer shifts/scales, HFSC mixing, DIBA scales) keeps
    its initial value. A binary source must provide them all (the strict
    load names what is missing). ``also`` names further keys to keep at
    init (e.g. output norms a classification checkpoint lacks).

    Returns:
        The keys filled in.
    """
    source_is_fp = not any(k in model_sd and not is_fp_key(k) for k in out)
    kept = []
    for k, v in model_sd.items():
        if k not in out and ((source_is_fp and not is_fp_key(k)) or also(k)):
            out[k] = v
            kept.append(k)
    return kept


def stem_key(key: str) -> str:
    """The backbones' stem is timm's ``PatchEmbed``: mmseg's (and the first
    release's ViT) ``patch_embed.projection.*`` is ``patch_embed.proj.*``."""
    return re.sub(r'^patch_embed\.projection\.', 'patch_embed.proj.', key)


def upgrade_legacy_keys(sd: Mapping[str, Tensor]) -> Dict[str, Tensor]:
    """Rename the entries of a first-release checkpoint: the attention parts
    (see :func:`~mmseg_didb.models.layers.legacy_attention_key`) and the ViT
    stem (:func:`stem_key`)."""
    out = {}
    for k, v in sd.items():
        m = _ATTN_KEY.match(k)
        if m:
            k = f"{m.group('attn')}.{legacy_attention_key(m.group('name'))}"
        out[stem_key(k)] = v
    return out
