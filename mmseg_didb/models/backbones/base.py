"""What the plugin's backbones share: presets, ``arch``, ``out_indices``,
the deprecated ``pretrained=``, mmseg-option checks, the patch-embedding
stem, fresh init and the report of a checkpoint conversion."""
import warnings
from typing import Any, Dict, Mapping, Optional, Sequence, Tuple, Union

import torch.nn as nn
from mmengine.logging import print_log
from timm.layers import PatchEmbed
from torch import Tensor
from mmengine.model import BaseModule
from mmengine.model.weight_init import trunc_normal_

from mmseg_didb.binary.presets import BinaryPreset, resolve_preset
from ..utils.checkpoint import StrictPretrainedMixin

__all__ = ['DIDBBackbone']


class DIDBBackbone(StrictPretrainedMixin, BaseModule):
    """Base of :class:`DIDBSwin` and :class:`DIDBViT`.

    Subclasses set ``arch_zoo`` (mmpretrain style: name -> dict of
    architecture arguments), ``arch_keys`` (the keys a custom ``arch`` dict
    must hold), ``checkpoint_hint``, and implement
    :meth:`_convert_state_dict` (see
    :class:`~mmseg_didb.models.utils.checkpoint.StrictPretrainedMixin`);
    :meth:`_init_fresh` is timm's init of the FP parts (tokens through
    :meth:`_init_tokens`).

    Args:
        init_cfg: ``dict(type='Pretrained', checkpoint=PATH, prefix=None)``
            loads a checkpoint strictly, or an mmengine init config.
        pretrained: Deprecated alias of a Pretrained ``init_cfg``.
    """

    arch_zoo: Dict[str, dict] = {}
    arch_keys: Tuple[str, ...] = ()
    arch_defaults: Dict[str, Any] = {}

    def __init__(self, init_cfg: Optional[dict] = None,
                 pretrained: Optional[str] = None) -> None:
        if pretrained is not None:
            if init_cfg is not None:
                raise ValueError('give either init_cfg or pretrained, not both')
            if not isinstance(pretrained, str):
                raise TypeError('pretrained must be a path (str) or None')
            warnings.warn(f'{type(self).__name__}: `pretrained` is deprecated, '
                          'use init_cfg=dict(type="Pretrained", '
                          'checkpoint=...)')
            init_cfg = dict(type='Pretrained', checkpoint=pretrained)
        super().__init__(init_cfg=init_cfg)

    # ------------------------------------------------------------------ setup
    @staticmethod
    def _resolve_preset(preset: Union[str, BinaryPreset, dict],
                        *overrides: Optional[Mapping[str, Any]]
                        ) -> BinaryPreset:
        """The model's preset: the one place a backbone resolves it."""
        merged: Dict[str, Any] = {}
        for o in overrides:
            merged.update(o or {})
        return resolve_preset(preset, **merged)

    @classmethod
    def _resolve_arch(cls, arch: Union[str, dict],
                      **explicit: Any) -> Dict[str, Any]:
        """Architecture arguments: the ``arch`` preset (a name of
        ``arch_zoo`` or a dict) with explicit non-None arguments on top."""
        if isinstance(arch, dict):
            missing = sorted(set(cls.arch_keys) - set(arch))
            if missing:
                raise ValueError(f'custom arch dict lacks {missing}')
            spec = dict(arch)
        elif arch in cls.arch_zoo:
            spec = dict(cls.arch_zoo[arch])
        else:
            raise ValueError(f'unknown {cls.__name__} arch {arch!r}; choose '
                             f'one of {sorted(set(cls.arch_zoo))} or pass a '
                             'dict')
        spec = {**cls.arch_defaults, **spec}
        spec.update({k: v for k, v in explicit.items() if v is not None})
        return spec

    @staticmethod
    def _resolve_out_indices(out_indices: Union[int, Sequence[int]],
                             num: int) -> Tuple[int, ...]:
        """``out_indices`` as a tuple in ``[0, num)`` (negative from the end,
        as mmseg's ViT)."""
        if isinstance(out_indices, int):
            out_indices = [out_indices]
        if not isinstance(out_indices, (list, tuple)):
            raise TypeError('out_indices must be an int, list or tuple')
        resolved = []
        for i in out_indices:
            j = i + num if i < 0 else i
            if not 0 <= j < num:
                raise ValueError(f'out_indices entry {i} is out of range for '
                                 f'{num} outputs')
            resolved.append(j)
        return tuple(resolved)

    def _check_mmseg_compat(self, unsupported: Mapping[str, bool]) -> None:
        """Reject mmseg backbone options this backbone does not implement.

        Args:
            unsupported: ``{description: is_unsupported}``, e.g.
                ``{'patch_norm=False': not patch_norm}``.
        """
        errors = [what for what, bad in unsupported.items() if bad]
        if errors:
            raise ValueError(f'{type(self).__name__} does not support '
                             + ', '.join(errors)
                             + '; remove these keys from the backbone config')

    # ------------------------------------------------------------------- stem
    def _build_patch_embed(self, img_size: Tuple[int, int], patch_size: int,
                           in_channels: int, embed_dims: int, norm: bool,
                           bias: bool = True) -> None:
        """The FP stem, ``patch_embed``: timm's ``PatchEmbed`` (keys
        ``patch_embed.proj``, ``patch_embed.norm``; mmseg's
        ``patch_embed.projection`` is converted at load time), which
        zero-pads inputs that are not a patch multiple at the bottom/right
        (mmseg's ``padding='corner'``)."""
        self.patch_embed = PatchEmbed(
            img_size=img_size, patch_size=patch_size, in_chans=in_channels,
            embed_dim=embed_dims, norm_layer=nn.LayerNorm if norm else None,
            bias=bias, output_fmt='NHWC', strict_img_size=False,
            dynamic_img_pad=True)

    def _embed_patches(self, images: Tensor
                       ) -> Tuple[Tensor, Tuple[int, int]]:
        """``(B, C, H, W)`` images -> ``(B, h * w, D)`` tokens on the grid
        ``(h, w) = (ceil(H / p), ceil(W / p))``."""
        x = self.patch_embed(images)
        b, h, w, d = x.shape
        return x.reshape(b, h * w, d), (h, w)

    # ------------------------------------------------------------------- init
    def _init_fresh(self) -> None:
        """timm's init: :meth:`_init_tokens`, then in module order truncated
        normal (std 0.02) linears and relative-position tables, zero biases,
        unit LayerNorms; binary extras keep their own init."""
        self._init_tokens()
        for m in self.modules():
            if isinstance(m, nn.Linear):
                trunc_normal_(m.weight, std=.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.LayerNorm) and m.elementwise_affine:
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(getattr(m, 'relative_position_bias_table', None),
                            nn.Parameter):
                trunc_normal_(m.relative_position_bias_table, std=.02)

    def _init_tokens(self) -> None:
        """Fresh init of token parameters (position embedding, CLS)."""

    def _log_conversion(self, report: Mapping[str, list]) -> None:
        """Say what a conversion did, unless it loaded an own checkpoint
        one to one."""
        if report['layout'] == 'didb' and not report['kept_init'] \
                and not report['dropped']:
            return
        print_log(
            f"{type(self).__name__}: converted a {report['layout']} "
            f"checkpoint; dropped {len(report['dropped'])} keys the backbone "
            f"does not use ({report['dropped'][:4]}...); "
            f"{len(report['kept_init'])} binary-only / output-norm "
            'parameters keep their init', logger='current')
